// The organization's agents and phone numbers (listAgents, listPhoneNumbers), a page at a time.
import { answered, api } from "../api";
import { ErrorNote, Loading } from "../components";
import { when } from "../format";
import { go, href } from "../router";
import { useLoad } from "../poll";

const PAGE_SIZE = 50;

/** Previous/next buttons over numbered pages, the page number kept in the URL. */
function Pager({ path, page, hasNext }: { path: string; page: number; hasNext: boolean }) {
  const to = (n: number) => go(path, new URLSearchParams(n ? { page: String(n) } : {}));
  return (
    <nav class="pager" aria-label="Pages">
      <button type="button" class="secondary" disabled={page === 0} onClick={() => to(page - 1)}>
        Previous page
      </button>
      <span>Page {page + 1}</span>
      <button type="button" disabled={!hasNext} onClick={() => to(page + 1)}>
        Next page
      </button>
    </nav>
  );
}

export function Agents({ query }: { query: URLSearchParams }) {
  const page = Number(query.get("page") || 0);
  const loaded = useLoad(() => answered(api.GET("/agents", { params: { query: { page, limit: PAGE_SIZE } } })), `agents:${page}`);
  const data = loaded.value?.data;
  return (
    <section aria-labelledby="agents-title">
      <h1 id="agents-title">Agents</h1>
      <ErrorNote error={loaded.error} context="Could not list the agents" />
      {!data && !loaded.error ? <Loading /> : null}
      {data ? (
        <>
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Agent id</th>
                <th scope="col">Language</th>
                <th scope="col">Updated</th>
                <th scope="col">Calls</th>
              </tr>
            </thead>
            <tbody>
              {data.agents.map((agent) => (
                <tr key={agent.agent_id}>
                  <td>{agent.agent_name}</td>
                  <td>
                    <code>{agent.agent_id}</code>
                  </td>
                  <td>{agent.language ?? "—"}</td>
                  <td>{when(agent.updated_at)}</td>
                  <td>
                    <a href={`${href("calls")}?agent_id=${encodeURIComponent(agent.agent_id)}`}>Calls of {agent.agent_name}</a>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {data.agents.length === 0 ? <p>No agents yet.</p> : null}
          <Pager path="/agents" page={page} hasNext={data.pagination.has_next_page} />
        </>
      ) : null}
    </section>
  );
}

export function PhoneNumbers({ query }: { query: URLSearchParams }) {
  const page = Number(query.get("page") || 0);
  const loaded = useLoad(
    () => answered(api.GET("/phone-numbers", { params: { query: { page, limit: PAGE_SIZE } } })),
    `numbers:${page}`,
  );
  const data = loaded.value?.data;
  return (
    <section aria-labelledby="numbers-title">
      <h1 id="numbers-title">Phone numbers</h1>
      <ErrorNote error={loaded.error} context="Could not list the phone numbers" />
      {!data && !loaded.error ? <Loading /> : null}
      {data ? (
        <>
          <table>
            <thead>
              <tr>
                <th scope="col">Number</th>
                <th scope="col">Nickname</th>
                <th scope="col">Type</th>
                <th scope="col">Inbound agent</th>
                <th scope="col">Outbound agent</th>
                <th scope="col">Updated</th>
              </tr>
            </thead>
            <tbody>
              {data.phone_numbers.map((number) => (
                <tr key={number.phone_number}>
                  <td>{number.phone_number_pretty}</td>
                  <td>{number.nickname ?? "—"}</td>
                  <td>{number.phone_number_type}</td>
                  <td>{number.inbound_agent_id ?? "—"}</td>
                  <td>{number.outbound_agent_id ?? "—"}</td>
                  <td>{when(number.updated_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {data.phone_numbers.length === 0 ? <p>No phone numbers yet.</p> : null}
          <Pager path="/phone-numbers" page={page} hasNext={data.pagination.has_next_page} />
        </>
      ) : null}
    </section>
  );
}
