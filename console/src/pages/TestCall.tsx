// Place a test call (createPhoneCall or createWebCall) and go to its page to watch it play
// out. With the sandbox on (CALLS_SANDBOX=true) the outcome and length can be scripted in
// the call's metadata; with a real dialer, this places a real call.
import { useState } from "preact/hooks";
import { ApiError, answered, api } from "../api";
import { ErrorNote } from "../components";
import { useLoad } from "../poll";
import { go } from "../router";

const OUTCOMES = ["", "completed", "voicemail", "no_answer", "busy", "failed"];

/** The sandbox's script for a call, from the form (nothing: drawn by the sandbox). */
function script(form: FormData): Record<string, string | number> {
  const metadata: Record<string, string | number> = {};
  const outcome = String(form.get("outcome") ?? "");
  const seconds = Number(form.get("seconds") || 0);
  if (outcome) metadata.sandbox_outcome = outcome;
  if (seconds > 0) metadata.sandbox_duration_ms = Math.round(seconds * 1000);
  return metadata;
}

export function TestCall() {
  const numbers = useLoad(() => answered(api.GET("/phone-numbers", { params: { query: { limit: 100 } } })), "numbers");
  const agents = useLoad(() => answered(api.GET("/agents", { params: { query: { limit: 100 } } })), "agents");
  const [kind, setKind] = useState<"phone" | "web">("phone");
  const [error, setError] = useState<ApiError>();
  const [busy, setBusy] = useState(false);

  const place = async (event: Event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget as HTMLFormElement);
    setBusy(true);
    setError(undefined);
    try {
      const answer =
        kind === "phone"
          ? await answered(
              api.POST("/calls/create-phone-call", {
                body: {
                  from_number: String(form.get("from_number")),
                  to_number: String(form.get("to_number")).trim(),
                  metadata: script(form),
                },
              }),
            )
          : await answered(
              api.POST("/calls/create-web-call", {
                body: { agent_id: String(form.get("agent_id")), metadata: script(form) },
              }),
            );
      go(`/calls/${encodeURIComponent(answer.data.call.call_id)}`);
    } catch (e) {
      setError(e as ApiError);
    } finally {
      setBusy(false);
    }
  };

  return (
    <section aria-labelledby="test-call-title">
      <h1 id="test-call-title">Place a test call</h1>
      <p>
        With the sandbox on (<code>CALLS_SANDBOX=true</code>) the call plays out by itself; choose its outcome and length, or leave
        them to the sandbox. With a real dialer this places a real call.
      </p>
      <ErrorNote error={numbers.error} context="Could not list the phone numbers" />
      <ErrorNote error={agents.error} context="Could not list the agents" />
      <form class="stacked" onSubmit={place}>
        <fieldset>
          <legend>Kind</legend>
          <label class="check">
            <input type="radio" name="kind" value="phone" checked={kind === "phone"} onChange={() => setKind("phone")} />
            Phone call
          </label>
          <label class="check">
            <input type="radio" name="kind" value="web" checked={kind === "web"} onChange={() => setKind("web")} />
            Web call
          </label>
        </fieldset>
        {kind === "phone" ? (
          <>
            <label>
              From (your number)
              <select name="from_number" required>
                {(numbers.value?.data.phone_numbers ?? []).map((number) => (
                  <option key={number.phone_number} value={number.phone_number}>
                    {number.phone_number_pretty}
                    {number.nickname ? ` (${number.nickname})` : ""}
                  </option>
                ))}
              </select>
            </label>
            <label>
              To
              <input name="to_number" required placeholder="+14155550123" pattern="\+[1-9][0-9]{6,14}" />
            </label>
          </>
        ) : (
          <label>
            Agent
            <select name="agent_id" required>
              {(agents.value?.data.agents ?? []).map((agent) => (
                <option key={agent.agent_id} value={agent.agent_id}>
                  {agent.agent_name}
                </option>
              ))}
            </select>
          </label>
        )}
        <label>
          Sandbox outcome
          <select name="outcome">
            {OUTCOMES.map((outcome) => (
              <option key={outcome} value={outcome}>
                {outcome ? outcome.replace("_", " ") : "drawn by the sandbox"}
              </option>
            ))}
          </select>
        </label>
        <label>
          Length once answered (s)
          <input name="seconds" type="number" min="0" step="any" />
        </label>
        <ErrorNote error={error} context="The call was not placed" />
        <button type="submit" disabled={busy}>
          {busy ? "Placing…" : "Place the call"}
        </button>
      </form>
    </section>
  );
}
