// The webhook deliveries of one call, with their attempts and a redeliver button: each
// webhook's events of the call (listPostCallWebhookEvents by call_id).
import { useState } from "preact/hooks";
import { ApiError, answered, api, type Call, type Schemas, type WebhookEvent } from "../api";
import { Badge, ErrorNote, Loading } from "../components";
import { when } from "../format";
import { useLoad } from "../poll";
import { href } from "../router";

const PAGE_SIZE = 100; // a call owes each webhook a handful of events

interface Delivery {
  webhook: Schemas["Webhook"];
  event: WebhookEvent;
}

/** The events owed to the organization's webhooks for `call`, newest first. */
async function deliveriesOf(call: Call): Promise<Delivery[]> {
  const webhooks = (await answered(api.GET("/post-call-webhooks"))).data.webhooks;
  const found: Delivery[] = [];
  for (const webhook of webhooks) {
    const answer = await answered(
      api.GET("/post-call-webhooks/{webhook_id}/events", {
        params: { path: { webhook_id: webhook.id }, query: { call_id: call.call_id, limit: PAGE_SIZE } },
      }),
    );
    for (const event of answer.data.events) found.push({ webhook, event });
  }
  return found.sort((a, b) => b.event.created_at - a.event.created_at);
}

/** The last attempt of an event, in words. */
function lastAttempt(event: WebhookEvent): string {
  const attempt = event.attempts[event.attempts.length - 1];
  if (!attempt) return "not tried yet";
  const answer = attempt.status_code !== null ? `HTTP ${attempt.status_code}` : (attempt.error ?? "no answer");
  return `${answer} after ${attempt.latency_ms} ms, ${when(attempt.at)}`;
}

export function Deliveries({ call }: { call: Call }) {
  const deliveries = useLoad(
    () => deliveriesOf(call),
    `${call.call_id}:${call.call_status}`,
    (found) => found.some(({ event }) => event.status === "pending"),
  );
  const [notice, setNotice] = useState<string>();
  const [error, setError] = useState<ApiError>();

  const redeliver = async ({ webhook, event }: Delivery) => {
    setNotice(undefined);
    setError(undefined);
    try {
      await answered(
        api.POST("/post-call-webhooks/{webhook_id}/events/{event_id}/redeliver", {
          params: { path: { webhook_id: webhook.id, event_id: event.event_id } },
        }),
      );
      setNotice(`The ${event.event} event was queued for redelivery to ${webhook.name}.`);
      deliveries.reload();
    } catch (e) {
      setError(e as ApiError);
    }
  };

  return (
    <section aria-labelledby="deliveries-title">
      <h2 id="deliveries-title">Webhook deliveries</h2>
      <ErrorNote error={deliveries.error} context="Could not list the deliveries" />
      <ErrorNote error={error} context="Could not redeliver" />
      {notice ? (
        <p class="notice" role="status">
          {notice}
        </p>
      ) : null}
      {!deliveries.value && !deliveries.error ? <Loading /> : null}
      {deliveries.value && deliveries.value.length === 0 ? <p>No webhook was owed an event for this call.</p> : null}
      {deliveries.value && deliveries.value.length ? (
        <div class="table-wrap">
          <table class="deliveries">
            <thead>
              <tr>
                <th scope="col">Event</th>
                <th scope="col">Webhook</th>
                <th scope="col">Status</th>
                <th scope="col">Attempts</th>
                <th scope="col">Last attempt</th>
                <th scope="col">Delivered</th>
                <th scope="col">
                  <span class="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {deliveries.value.map((delivery) => (
                <tr key={`${delivery.webhook.id}:${delivery.event.event_id}`}>
                  <td>{delivery.event.event}</td>
                  <td>
                    <a href={href("webhooks", delivery.webhook.id)}>{delivery.webhook.name}</a>
                  </td>
                  <td>
                    <Badge status={delivery.event.status} />
                  </td>
                  <td>
                    <details>
                      <summary>{delivery.event.attempt_count}</summary>
                      <ol class="attempts">
                        {delivery.event.attempts.map((attempt, i) => (
                          <li key={i}>
                            {when(attempt.at)}: {attempt.status_code !== null ? `HTTP ${attempt.status_code}` : attempt.error} ({attempt.latency_ms} ms)
                          </li>
                        ))}
                      </ol>
                    </details>
                  </td>
                  <td>{lastAttempt(delivery.event)}</td>
                  <td>{when(delivery.event.delivered_at)}</td>
                  <td>
                    <button type="button" class="secondary" onClick={() => redeliver(delivery)}>
                      Redeliver
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </section>
  );
}
