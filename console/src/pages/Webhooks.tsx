// Post-call webhooks (listPostCallWebhooks) with a switch each (togglePostCallWebhook), and
// one webhook's recent deliveries (listPostCallWebhookEvents) with redelivery.
import { useState } from "preact/hooks";
import { ApiError, answered, api, type Schemas } from "../api";
import { Badge, ErrorNote, Fields, Loading } from "../components";
import { when } from "../format";
import { useLoad } from "../poll";
import { go, href } from "../router";

const PAGE_SIZE = 20;

/** The button switching a webhook on or off; `onToggled` gets the API's message. */
function Toggle({ webhook, onToggled }: { webhook: Schemas["Webhook"]; onToggled: (message: string, error?: ApiError) => void }) {
  const [busy, setBusy] = useState(false);
  const toggle = async () => {
    setBusy(true);
    try {
      const answer = await answered(
        api.POST("/post-call-webhooks/{webhook_id}/toggle", { params: { path: { webhook_id: webhook.id } } }),
      );
      onToggled(answer.message ?? "");
    } catch (e) {
      onToggled("", e as ApiError);
    } finally {
      setBusy(false);
    }
  };
  return (
    <button type="button" class="secondary" disabled={busy} onClick={toggle} aria-label={`${webhook.is_active ? "Switch off" : "Switch on"} ${webhook.name}`}>
      {webhook.is_active ? "Switch off" : "Switch on"}
    </button>
  );
}

export function Webhooks() {
  const loaded = useLoad(() => answered(api.GET("/post-call-webhooks")), "webhooks");
  const [notice, setNotice] = useState<string>();
  const [error, setError] = useState<ApiError>();
  const toggled = (message: string, failure?: ApiError) => {
    setNotice(message || undefined);
    setError(failure);
    loaded.reload();
  };
  const webhooks = loaded.value?.data.webhooks;
  return (
    <section aria-labelledby="webhooks-title">
      <h1 id="webhooks-title">Post-call webhooks</h1>
      <ErrorNote error={loaded.error} context="Could not list the webhooks" />
      <ErrorNote error={error} context="Could not switch the webhook" />
      {notice ? (
        <p class="notice" role="status">
          {notice}
        </p>
      ) : null}
      {!webhooks && !loaded.error ? <Loading /> : null}
      {webhooks ? (
        <table>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">URL</th>
              <th scope="col">State</th>
              <th scope="col">Agents</th>
              <th scope="col">Failing since</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {webhooks.map((webhook) => (
              <tr key={webhook.id}>
                <td>
                  <a href={href("webhooks", webhook.id)}>{webhook.name}</a>
                </td>
                <td>
                  <code>{webhook.url}</code>
                </td>
                <td>
                  <Badge status={webhook.is_active ? "active" : "off"} />
                  {webhook.disabled_reason ? <small> {webhook.disabled_reason}</small> : null}
                </td>
                <td>{webhook.agent_count}</td>
                <td>{when(webhook.failing_since)}</td>
                <td>
                  <Toggle webhook={webhook} onToggled={toggled} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      {webhooks && webhooks.length === 0 ? <p>No webhooks yet.</p> : null}
    </section>
  );
}

export function WebhookPage({ webhookId, query }: { webhookId: string; query: URLSearchParams }) {
  const page = Number(query.get("page") || 0);
  const status = (query.get("status") || undefined) as Schemas["WebhookEventStatus"] | undefined;
  const webhook = useLoad(
    () => answered(api.GET("/post-call-webhooks/{webhook_id}", { params: { path: { webhook_id: webhookId } } })),
    webhookId,
  );
  const events = useLoad(
    () =>
      answered(
        api.GET("/post-call-webhooks/{webhook_id}/events", {
          params: { path: { webhook_id: webhookId }, query: { page, limit: PAGE_SIZE, status } },
        }),
      ),
    `${webhookId}:${page}:${status}`,
    (answer) => answer.data.events.some((event) => event.status === "pending"),
  );
  const [notice, setNotice] = useState<string>();
  const [error, setError] = useState<ApiError>();
  const to = (next: { page?: number; status?: string }) => {
    const q = new URLSearchParams();
    if (next.status) q.set("status", next.status);
    if (next.page) q.set("page", String(next.page));
    go(`/webhooks/${encodeURIComponent(webhookId)}`, q);
  };
  const redeliver = async (eventId: string) => {
    setNotice(undefined);
    setError(undefined);
    try {
      await answered(
        api.POST("/post-call-webhooks/{webhook_id}/events/{event_id}/redeliver", {
          params: { path: { webhook_id: webhookId, event_id: eventId } },
        }),
      );
      setNotice("Queued for redelivery.");
      events.reload();
    } catch (e) {
      setError(e as ApiError);
    }
  };
  const hook = webhook.value?.data;
  return (
    <section aria-labelledby="webhook-title">
      <p>
        <a href={href("webhooks")}>← Webhooks</a>
      </p>
      <h1 id="webhook-title">{hook ? `Webhook ${hook.name}` : "Webhook"}</h1>
      <ErrorNote error={webhook.error} />
      {hook ? (
        <>
          <Fields
            rows={[
              ["URL", <code>{hook.url}</code>],
              ["State", <Badge status={hook.is_active ? "active" : "off"} />],
              ["Every status change", hook.status_events ? "yes" : "no (post-call events of its agents)"],
              ["Failing since", when(hook.failing_since)],
              ["Switched off because", hook.disabled_reason ?? "—"],
            ]}
          />
          <Toggle
            webhook={hook}
            onToggled={(message, failure) => {
              setNotice(message || undefined);
              setError(failure);
              webhook.reload();
            }}
          />
        </>
      ) : null}
      <h2>Recent deliveries</h2>
      <label>
        Status{" "}
        <select onChange={(e) => to({ status: (e.currentTarget as HTMLSelectElement).value })}>
          {["", "pending", "delivered", "failed"].map((value) => (
            <option key={value} value={value} selected={(status ?? "") === value}>
              {value || "any"}
            </option>
          ))}
        </select>
      </label>
      <ErrorNote error={events.error} context="Could not list the deliveries" />
      <ErrorNote error={error} />
      {notice ? (
        <p class="notice" role="status">
          {notice}
        </p>
      ) : null}
      {events.value ? (
        <>
          <table class="deliveries">
            <thead>
              <tr>
                <th scope="col">Recorded</th>
                <th scope="col">Event</th>
                <th scope="col">Call</th>
                <th scope="col">Status</th>
                <th scope="col">Attempts</th>
                <th scope="col">Last answer</th>
                <th scope="col">
                  <span class="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {events.value.data.events.map((event) => {
                const last = event.attempts[event.attempts.length - 1];
                return (
                  <tr key={event.event_id}>
                    <td>{when(event.created_at)}</td>
                    <td>{event.event}</td>
                    <td>
                      <a href={href("calls", event.call_id)}>{event.call_id}</a>
                    </td>
                    <td>
                      <Badge status={event.status} />
                    </td>
                    <td>{event.attempt_count}</td>
                    <td>{last ? (last.status_code !== null ? `HTTP ${last.status_code}` : last.error) : "—"}</td>
                    <td>
                      <button type="button" class="secondary" onClick={() => redeliver(event.event_id)}>
                        Redeliver
                      </button>
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          {events.value.data.events.length === 0 ? <p>No deliveries.</p> : null}
          <nav class="pager" aria-label="Pages">
            <button type="button" class="secondary" disabled={page === 0} onClick={() => to({ page: page - 1, status })}>
              Previous page
            </button>
            <span>Page {page + 1}</span>
            <button type="button" disabled={!events.value.data.pagination.has_next_page} onClick={() => to({ page: page + 1, status })}>
              Next page
            </button>
          </nav>
        </>
      ) : null}
    </section>
  );
}
