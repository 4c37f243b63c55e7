// The call log: the API's filters, sorts and cursor pages (listCalls), live while calls are
// under way (each poll names the page's ETag: a 304 keeps the page as it is). The filters
// live in the URL's fragment, so a filtered view can be reloaded.
import { useMemo } from "preact/hooks";
import { answered, answeredUnlessUnchanged, api, ifNoneMatch, type paths, type Schemas } from "../api";
import { Badge, ErrorNote, Loading } from "../components";
import { duration, fromLocalInput, when, words } from "../format";
import { useLoad } from "../poll";
import { go, href } from "../router";

type ListQuery = NonNullable<paths["/calls"]["get"]["parameters"]["query"]>;
type Status = Schemas["CallStatusInput"];
type CallType = Schemas["CallTypeInput"];
type Direction = Schemas["DirectionInput"];

const STATUSES: Status[] = ["registered", "scheduled", "ongoing", "ended", "error"];
const TYPES: CallType[] = ["phone_call", "web_call"];
const DIRECTIONS: Direction[] = ["inbound", "outbound"];
const SORTS: Schemas["SortBy"][] = ["created_at", "updated_at", "start_timestamp", "end_timestamp", "call_duration"];
const UNDER_WAY = new Set(["registered", "scheduled", "ongoing"]);

/** The listCalls query the page's URL asks for. */
export function listQuery(query: URLSearchParams): ListQuery {
  const seconds = (name: string) => {
    const value = query.get(name);
    return value ? Math.round(Number(value) * 1000) : undefined;
  };
  const all = <T extends string>(name: string) => (query.getAll(name).length ? (query.getAll(name) as T[]) : undefined);
  return {
    limit: Number(query.get("limit") || 20),
    sort_by: (query.get("sort_by") as Schemas["SortBy"]) || undefined,
    sort_order: (query.get("sort_order") as Schemas["SortOrder"]) || undefined,
    cursor: query.get("cursor") || undefined,
    call_status: all<Status>("call_status"),
    call_type: all<CallType>("call_type"),
    direction: all<Direction>("direction"),
    agent_id: all<string>("agent_id"),
    duration_ms_lower_threshold: seconds("min_seconds"),
    duration_ms_upper_threshold: seconds("max_seconds"),
    created_at_lower_threshold: fromLocalInput(query.get("from") ?? ""),
    created_at_upper_threshold: fromLocalInput(query.get("to") ?? ""),
    transcript_search: query.get("q") || undefined,
  };
}

export function Calls({ query }: { query: URLSearchParams }) {
  const params = useMemo(() => listQuery(query), [query.toString()]);
  const page = useLoad(
    (etag) => answeredUnlessUnchanged(api.GET("/calls", { params: { query: params, header: ifNoneMatch(etag) } })),
    JSON.stringify(params),
    (answer) => !params.cursor || answer.data.calls.some((call) => UNDER_WAY.has(call.call_status.toLowerCase())),
  );
  const agents = useLoad(() => answered(api.GET("/agents", { params: { query: { limit: 100 } } })), "agents");
  const agentNames = new Map((agents.value?.data.agents ?? []).map((agent) => [agent.agent_id, agent.agent_name]));

  const filter = (event: Event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget as HTMLFormElement);
    const next = new URLSearchParams();
    for (const [name, value] of form.entries()) if (String(value)) next.append(name, String(value));
    go("/calls", next);
  };
  const pageAfter = (cursor: string) => {
    const next = new URLSearchParams(query);
    next.set("cursor", cursor);
    go("/calls", next);
  };
  const firstPage = () => {
    const next = new URLSearchParams(query);
    next.delete("cursor");
    go("/calls", next);
  };

  const data = page.value?.data;
  return (
    <section aria-labelledby="calls-title">
      <h1 id="calls-title">Calls</h1>
      <form class="filters" key={query.toString()} onSubmit={filter} aria-label="Filters">
        <fieldset>
          <legend>Status</legend>
          {STATUSES.map((status) => (
            <label key={status} class="check">
              <input type="checkbox" name="call_status" value={status} defaultChecked={query.getAll("call_status").includes(status)} />
              {words(status)}
            </label>
          ))}
        </fieldset>
        <fieldset>
          <legend>Type</legend>
          {TYPES.map((type) => (
            <label key={type} class="check">
              <input type="checkbox" name="call_type" value={type} defaultChecked={query.getAll("call_type").includes(type)} />
              {words(type)}
            </label>
          ))}
        </fieldset>
        <fieldset>
          <legend>Direction</legend>
          {DIRECTIONS.map((direction) => (
            <label key={direction} class="check">
              <input type="checkbox" name="direction" value={direction} defaultChecked={query.getAll("direction").includes(direction)} />
              {words(direction)}
            </label>
          ))}
        </fieldset>
        <label>
          Agent
          <select name="agent_id">
            <option value="">Any agent</option>
            {(agents.value?.data.agents ?? []).map((agent) => (
              <option key={agent.agent_id} value={agent.agent_id} selected={query.get("agent_id") === agent.agent_id}>
                {agent.agent_name} ({agent.agent_id})
              </option>
            ))}
          </select>
        </label>
        <label>
          Created from
          <input type="datetime-local" name="from" defaultValue={query.get("from") ?? ""} />
        </label>
        <label>
          Created to
          <input type="datetime-local" name="to" defaultValue={query.get("to") ?? ""} />
        </label>
        <label>
          Duration at least (s)
          <input type="number" min="0" step="any" name="min_seconds" defaultValue={query.get("min_seconds") ?? ""} />
        </label>
        <label>
          Duration at most (s)
          <input type="number" min="0" step="any" name="max_seconds" defaultValue={query.get("max_seconds") ?? ""} />
        </label>
        <label class="wide">
          Transcript contains
          <input type="search" name="q" maxLength={500} defaultValue={query.get("q") ?? ""} />
        </label>
        <label>
          Sort by
          <select name="sort_by">
            {SORTS.map((sort) => (
              <option key={sort} value={sort} selected={(query.get("sort_by") ?? "created_at") === sort}>
                {words(sort)}
              </option>
            ))}
          </select>
        </label>
        <label>
          Order
          <select name="sort_order">
            <option value="descending">newest / longest first</option>
            <option value="ascending" selected={query.get("sort_order") === "ascending"}>
              oldest / shortest first
            </option>
          </select>
        </label>
        <label>
          Per page
          <select name="limit">
            {["20", "50", "100"].map((size) => (
              <option key={size} value={size} selected={(query.get("limit") ?? "20") === size}>
                {size}
              </option>
            ))}
          </select>
        </label>
        <div class="actions">
          <button type="submit">Apply filters</button>
          <a class="button secondary" href={href("calls")}>
            Clear
          </a>
        </div>
      </form>

      <ErrorNote error={page.error} context="Could not list the calls" />
      {!data && !page.error ? <Loading /> : null}
      {data ? (
        <>
          <p class="summary" role="status">
            {data.pagination.total_count.toLocaleString()} calls match
            {params.cursor ? " (a later page)" : ""}
          </p>
          <div class="table-wrap">
            <table class="calls">
              <thead>
                <tr>
                  <th scope="col">Call</th>
                  <th scope="col">Status</th>
                  <th scope="col">Created</th>
                  <th scope="col">Agent</th>
                  <th scope="col">Type</th>
                  <th scope="col">Direction</th>
                  <th scope="col">From → to</th>
                  <th scope="col">Duration</th>
                  <th scope="col">Ended because</th>
                </tr>
              </thead>
              <tbody>
                {data.calls.map((call) => (
                  <tr key={call.call_id}>
                    <td>
                      <a href={href("calls", call.call_id)}>{call.call_id}</a>
                    </td>
                    <td>
                      <Badge status={call.call_status} />
                    </td>
                    <td>{when(call.created_at)}</td>
                    <td>{agentNames.get(call.agent_id) ?? call.agent_id}</td>
                    <td>{words(call.call_type)}</td>
                    <td>{words(call.direction)}</td>
                    <td>{call.from_number || call.to_number ? `${call.from_number ?? "—"} → ${call.to_number ?? "—"}` : "—"}</td>
                    <td>{duration(call.call_duration)}</td>
                    <td>{words(call.disconnection_reason)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {data.calls.length === 0 ? <p>No calls match these filters.</p> : null}
          <nav class="pager" aria-label="Pages">
            <button type="button" class="secondary" disabled={!params.cursor} onClick={firstPage}>
              First page
            </button>
            <button type="button" class="secondary" disabled={!params.cursor} onClick={() => history.back()}>
              Previous page
            </button>
            <button
              type="button"
              disabled={!data.pagination.next_cursor}
              onClick={() => data.pagination.next_cursor && pageAfter(data.pagination.next_cursor)}
            >
              Next page
            </button>
          </nav>
        </>
      ) : null}
    </section>
  );
}
