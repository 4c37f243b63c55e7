// Batch calls (listBatchCalls) with their progress, and one batch (getBatchCall) with its
// counts per task status and its tasks (listBatchCallTasks); live while a batch runs.
import { answered, api, type Schemas } from "../api";
import { Badge, ErrorNote, Fields, Loading } from "../components";
import { when, words } from "../format";
import { useLoad } from "../poll";
import { go, href } from "../router";

const PAGE_SIZE = 50;
const RUNNING = new Set(["scheduled", "sent"]);

type Batch = Schemas["BatchCall"];

/** Tasks settled (completed, failed or cancelled) out of all, as a bar and in words. */
function Progress({ batch }: { batch: Batch }) {
  const settled = batch.completed + batch.failed + batch.cancelled;
  return (
    <span class="progress">
      <progress max={Math.max(batch.total, 1)} value={settled} aria-label={`Progress of ${batch.name ?? batch.batch_call_id}`} />
      <span>
        {settled} of {batch.total} settled
      </span>
    </span>
  );
}

export function Batches({ query }: { query: URLSearchParams }) {
  const page = Number(query.get("page") || 0);
  const loaded = useLoad(
    () => answered(api.GET("/batch-call/list", { params: { query: { page, limit: PAGE_SIZE } } })),
    `batches:${page}`,
    (answer) => answer.data.batch_calls.some((batch) => RUNNING.has(batch.status.toLowerCase())),
  );
  const data = loaded.value?.data;
  const to = (n: number) => go("/batches", new URLSearchParams(n ? { page: String(n) } : {}));
  return (
    <section aria-labelledby="batches-title">
      <h1 id="batches-title">Batch calls</h1>
      <ErrorNote error={loaded.error} context="Could not list the batch calls" />
      {!data && !loaded.error ? <Loading /> : null}
      {data ? (
        <>
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Status</th>
                <th scope="col">Progress</th>
                <th scope="col">From</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {data.batch_calls.map((batch) => (
                <tr key={batch.batch_call_id}>
                  <td>
                    <a href={href("batches", batch.batch_call_id)}>{batch.name ?? batch.batch_call_id}</a>
                  </td>
                  <td>
                    <Badge status={batch.status} />
                  </td>
                  <td>
                    <Progress batch={batch} />
                  </td>
                  <td>{batch.from_number}</td>
                  <td>{when(batch.created_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {data.batch_calls.length === 0 ? <p>No batch calls yet.</p> : null}
          <nav class="pager" aria-label="Pages">
            <button type="button" class="secondary" disabled={page === 0} onClick={() => to(page - 1)}>
              Previous page
            </button>
            <span>Page {page + 1}</span>
            <button type="button" disabled={!data.pagination.has_next_page} onClick={() => to(page + 1)}>
              Next page
            </button>
          </nav>
        </>
      ) : null}
    </section>
  );
}

export function BatchPage({ batchId, query }: { batchId: string; query: URLSearchParams }) {
  const page = Number(query.get("page") || 0);
  const batch = useLoad(
    () => answered(api.GET("/batch-call/{batch_call_id}", { params: { path: { batch_call_id: batchId } } })),
    batchId,
    (answer) => RUNNING.has(answer.data.status.toLowerCase()),
  );
  const running = batch.value ? RUNNING.has(batch.value.data.status.toLowerCase()) : false;
  const tasks = useLoad(
    () =>
      answered(
        api.GET("/batch-call/{batch_call_id}/tasks", {
          params: { path: { batch_call_id: batchId }, query: { page, limit: PAGE_SIZE } },
        }),
      ),
    `${batchId}:${page}:${running ? "running" : "settled"}`,
    () => running,
  );
  const b = batch.value?.data;
  const to = (n: number) => go(`/batches/${encodeURIComponent(batchId)}`, new URLSearchParams(n ? { page: String(n) } : {}));
  return (
    <section aria-labelledby="batch-title">
      <p>
        <a href={href("batches")}>← Batch calls</a>
      </p>
      <h1 id="batch-title">{b ? `Batch ${b.name ?? b.batch_call_id}` : "Batch call"}</h1>
      <ErrorNote error={batch.error} context={batch.error?.status === 404 ? "Batch call not found" : undefined} />
      {!b && !batch.error ? <Loading /> : null}
      {b ? (
        <>
          <p>
            <Badge status={b.status} /> <Progress batch={b} />
          </p>
          <dl class="counts" aria-label="Tasks per status">
            {(
              [
                ["Total", b.total],
                ["Pending", b.pending],
                ["In progress", b.in_progress],
                ["Completed", b.completed],
                ["Failed", b.failed],
                ["Cancelled", b.cancelled],
                ["Sent", b.sent],
                ["Picked up", b.picked_up],
              ] as [string, number][]
            ).map(([label, count]) => (
              <div key={label} data-count={label.toLowerCase().replace(" ", "-")}>
                <dt>{label}</dt>
                <dd>{count}</dd>
              </div>
            ))}
          </dl>
          <Fields
            rows={[
              ["From", b.from_number],
              ["Agent", b.agent_id],
              ["Time zone", b.timezone],
              ["Created", when(b.created_at)],
              ["Started", when(b.execution_started_at)],
              ["Last sent", when(b.last_sent_timestamp)],
            ]}
          />
        </>
      ) : null}
      <h2>Tasks</h2>
      <ErrorNote error={tasks.error} context="Could not list the tasks" />
      {tasks.value ? (
        <>
          <table class="tasks">
            <thead>
              <tr>
                <th scope="col">#</th>
                <th scope="col">To</th>
                <th scope="col">Status</th>
                <th scope="col">Attempts</th>
                <th scope="col">Outcome</th>
                <th scope="col">Latest call</th>
                <th scope="col">Error</th>
              </tr>
            </thead>
            <tbody>
              {tasks.value.data.tasks.map((task) => (
                <tr key={task.task_id}>
                  <td>{task.index + 1}</td>
                  <td>{task.to_number}</td>
                  <td>
                    <Badge status={task.status} />
                  </td>
                  <td>{task.attempts}</td>
                  <td>{words(task.outcome)}</td>
                  <td>{task.call_id ? <a href={href("calls", task.call_id)}>{task.call_id}</a> : "—"}</td>
                  <td>{task.error_message ?? "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <nav class="pager" aria-label="Task pages">
            <button type="button" class="secondary" disabled={page === 0} onClick={() => to(page - 1)}>
              Previous page
            </button>
            <span>Page {page + 1}</span>
            <button type="button" disabled={!tasks.value.data.pagination.has_next_page} onClick={() => to(page + 1)}>
              Next page
            </button>
          </nav>
        </>
      ) : null}
    </section>
  );
}
