// A new batch call (createBatchCall): a name, one of the organization's numbers, an agent,
// the recipients as lines of `+number key=value …`, optional quiet hours, and when to
// start (now, at a time, or kept as a draft to start from its page). The API checks the
// batch whole and names every offending task (`tasks[3].to_number …`); its answer is
// shown on the form, and a batch made opens its page.
import { useState } from "preact/hooks";
import { ApiError, answered, api, type Schemas } from "../api";
import { ErrorNote } from "../components";
import { fromLocalInput } from "../format";
import { useLoad } from "../poll";
import { go, href } from "../router";

type Task = Schemas["BatchTaskInput"];
type Start = "now" | "at" | "draft";

/** A variable's value: a whole number (`sandbox_duration_ms=30000`) as a number, any
 * other text (`0123`, `+1415…`, `yes`) as it was written. */
function value(text: string): string | number {
  return /^(0|-?[1-9][0-9]{0,14})$/.test(text) ? Number(text) : text;
}

/** The tasks the lines name, one a non-empty line: the number, then `key=value` words.
 * A line the API could not take as written is refused here, saying which. */
export function parseTasks(text: string): Task[] {
  const tasks: Task[] = [];
  text.split("\n").forEach((line, i) => {
    const [number, ...pairs] = line.trim().split(/\s+/).filter(Boolean);
    if (!number) return;
    const variables: Record<string, string | number> = {};
    for (const pair of pairs) {
      const at = pair.indexOf("=");
      if (at < 1) throw new ApiError(0, `Line ${i + 1}: “${pair}” is not key=value`, null, null);
      variables[pair.slice(0, at)] = value(pair.slice(at + 1));
    }
    tasks.push(pairs.length ? { to_number: number, dynamic_variables: variables } : { to_number: number });
  });
  if (!tasks.length) throw new ApiError(0, "No recipients: write one number a line", null, null);
  return tasks;
}

export function NewBatch() {
  const numbers = useLoad(() => answered(api.GET("/phone-numbers", { params: { query: { limit: 100 } } })), "numbers");
  const agents = useLoad(() => answered(api.GET("/agents", { params: { query: { limit: 100 } } })), "agents");
  const [start, setStart] = useState<Start>("now");
  const [quiet, setQuiet] = useState(false);
  const [error, setError] = useState<ApiError>();
  const [busy, setBusy] = useState(false);
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;

  const create = async (event: Event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget as HTMLFormElement);
    const text = (name: string) => String(form.get(name) ?? "").trim();
    setError(undefined);
    setBusy(true);
    try {
      const body: Schemas["CreateBatchCallRequest"] = {
        from_number: text("from_number"),
        tasks: parseTasks(String(form.get("tasks") ?? "")),
        send_now: start === "now",
      };
      if (text("name")) body.name = text("name");
      if (text("agent_id")) body.agent_id = text("agent_id");
      if (text("timezone")) body.timezone = text("timezone");
      if (start === "draft") body.status = "draft";
      if (start === "at") body.trigger_timestamp = fromLocalInput(text("trigger_at"));
      if (quiet) body.quiet_hours = { enabled: true, start_time: text("quiet_from"), end_time: text("quiet_to") };
      const made = await answered(api.POST("/batch-call", { body }));
      go(`/batches/${encodeURIComponent(made.data.batch_call_id)}`);
    } catch (e) {
      setError(e instanceof ApiError ? e : new ApiError(0, String(e), null, null));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section aria-labelledby="new-batch-title">
      <p>
        <a href={href("batches")}>← Batch calls</a>
      </p>
      <h1 id="new-batch-title">New batch call</h1>
      <ErrorNote error={numbers.error} context="Could not list the phone numbers" />
      <ErrorNote error={agents.error} context="Could not list the agents" />
      <form class="stacked wide-form" onSubmit={create}>
        <label>
          Name
          <input name="name" maxLength={255} placeholder="Renewals" />
        </label>
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
          Agent
          <select name="agent_id">
            <option value="">The number's outbound agent</option>
            {(agents.value?.data.agents ?? []).map((agent) => (
              <option key={agent.agent_id} value={agent.agent_id}>
                {agent.agent_name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Recipients
          <textarea
            name="tasks"
            required
            rows={7}
            spellcheck={false}
            aria-describedby="tasks-help"
            placeholder={"+14155550123 name=Ada plan=pro\n+14155550124"}
          />
        </label>
        <p id="tasks-help" class="help">
          One call a line: the number (E.164), then any variables of the call as <code>key=value</code> (whole numbers are sent
          as numbers). With the sandbox on, <code>sandbox_outcome=busy</code> and <code>sandbox_duration_ms=30000</code> script
          a call. The API names a bad line by its place: <code>tasks[0]</code> is the first number.
        </p>
        <label>
          Time zone (of quiet hours and retries)
          <input name="timezone" defaultValue={zone} maxLength={64} />
        </label>
        <fieldset>
          <legend>Quiet hours</legend>
          <label class="check">
            <input type="checkbox" name="quiet" checked={quiet} onChange={(e) => setQuiet((e.currentTarget as HTMLInputElement).checked)} />
            Keep quiet hours
          </label>
          <label>
            From (local time)
            <input type="time" name="quiet_from" defaultValue="21:00" required={quiet} disabled={!quiet} />
          </label>
          <label>
            To (local time)
            <input type="time" name="quiet_to" defaultValue="09:00" required={quiet} disabled={!quiet} />
          </label>
        </fieldset>
        <fieldset>
          <legend>Start</legend>
          <label class="check">
            <input type="radio" name="start" value="now" checked={start === "now"} onChange={() => setStart("now")} />
            Send now
          </label>
          <label class="check">
            <input type="radio" name="start" value="at" checked={start === "at"} onChange={() => setStart("at")} />
            At a time
          </label>
          <label class="check">
            <input type="radio" name="start" value="draft" checked={start === "draft"} onChange={() => setStart("draft")} />
            Keep as a draft
          </label>
          {start === "at" ? (
            <label>
              Start at
              <input type="datetime-local" name="trigger_at" required />
            </label>
          ) : null}
        </fieldset>
        <ErrorNote error={error} context="The batch was not created" />
        <button type="submit" disabled={busy}>
          {busy ? "Creating…" : "Create the batch"}
        </button>
      </form>
    </section>
  );
}
