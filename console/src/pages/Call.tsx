// A call's page (getCall): its header, the recording with the transcript, the analysis
// and cost, the metadata, the event timeline and the webhook deliveries; live while the
// call is under way (each poll names the call's ETag: a 304 keeps the page as it is).
import { answeredUnlessUnchanged, api, ifNoneMatch } from "../api";
import { Badge, ErrorNote, Fields, Json, Loading } from "../components";
import { amount, duration, when, words } from "../format";
import { useLoad } from "../poll";
import { href } from "../router";
import { Deliveries } from "./Deliveries";
import { RecordingAndTranscript } from "./Transcript";

const UNDER_WAY = new Set(["registered", "scheduled", "ongoing"]);

export function CallPage({ callId }: { callId: string }) {
  const loaded = useLoad(
    (etag) => answeredUnlessUnchanged(api.GET("/calls/{call_id}", { params: { path: { call_id: callId }, header: ifNoneMatch(etag) } })),
    callId,
    (answer) => UNDER_WAY.has(answer.data.call_status.toLowerCase()),
  );
  const call = loaded.value?.data;
  if (!call) {
    return (
      <section>
        <p>
          <a href={href("calls")}>← Calls</a>
        </p>
        {loaded.error ? (
          <>
            <h1>{loaded.error.status === 404 ? "Call not found" : "Could not load the call"}</h1>
            <ErrorNote error={loaded.error} />
          </>
        ) : (
          <Loading />
        )}
      </section>
    );
  }
  const analysis = call.call_analysis ?? {};
  return (
    <article class="call" aria-labelledby="call-title">
      <p>
        <a href={href("calls")}>← Calls</a>
      </p>
      <header class="call-header">
        <h1 id="call-title">
          Call <code>{call.call_id}</code>
        </h1>
        <Badge status={call.call_status} />
        {UNDER_WAY.has(call.call_status.toLowerCase()) ? <span class="live-note">live</span> : null}
      </header>
      <ErrorNote error={loaded.error} context="Could not refresh the call" />
      <Fields
        rows={[
          ["Type", words(call.call_type)],
          ["Direction", words(call.direction)],
          ["Agent", call.agent_id],
          ["From", call.from_number],
          ["To", call.to_number],
          ["Duration", duration(call.call_duration)],
          ["Started", when(call.start_timestamp)],
          ["Ended", when(call.end_timestamp)],
          ["Created", when(call.created_at)],
          ["Scheduled for", call.scheduled_timestamp ? when(call.scheduled_timestamp * 1000) : "—"],
          ["Ended because", words(call.disconnection_reason)],
        ]}
      />
      <div class="two-columns">
        <RecordingAndTranscript call={call} />
        <section aria-labelledby="analysis-title">
          <h2 id="analysis-title">Analysis and cost</h2>
          <Fields
            rows={[
              ["Successful", analysis.call_successful === undefined ? "—" : analysis.call_successful ? "yes" : "no"],
              ["Sentiment", analysis.user_sentiment ?? "—"],
              ["Voicemail", analysis.in_voicemail === undefined ? "—" : analysis.in_voicemail ? "yes" : "no"],
              ["Summary", analysis.call_summary ?? "—"],
              ["Cost", amount(call.call_cost?.combined_cost)],
            ]}
          />
          <h2>Metadata</h2>
          <Json value={call.metadata} label="Metadata" />
        </section>
      </div>
      <section aria-labelledby="events-title">
        <h2 id="events-title">Events</h2>
        <ol class="timeline">
          {call.events.map((event, i) => (
            <li key={i}>
              <time>{when(event.timestamp)}</time> <strong>{event.event}</strong>
              {Object.keys(event.data ?? {}).length ? (
                <details>
                  <summary>data</summary>
                  <Json value={event.data} label={`Data of ${event.event}`} />
                </details>
              ) : null}
            </li>
          ))}
        </ol>
      </section>
      <Deliveries call={call} />
    </article>
  );
}
