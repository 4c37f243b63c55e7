// Batch calls (listBatchCalls) with their progress, and one batch (getBatchCall) with its
// counts per task status, its tasks (listBatchCallTasks) and its controls (execute, pause,
// resume, cancel); live while a batch runs. A new batch is made by createBatchCall's form
// (NewBatch.tsx).
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, answered, answeredUnlessUnchanged, api, ifNoneMatch, type Schemas } from "../api";
import { Badge, ErrorNote, Fields, Loading } from "../components";
import { when, words } from "../format";
import { useLoad } from "../poll";
import { go, href } from "../router";

const PAGE_SIZE = 50;

type Batch = Schemas["BatchCall"];

/** Whether a batch may still change by itself: it dials (scheduled, sent), or calls it
 * placed are still under way (a paused or cancelled batch's calls go on). */
function running(batch: Batch): boolean {
  return ["scheduled", "sent"].includes(batch.status.toLowerCase()) || batch.in_progress > 0;
}

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
    (answer) => answer.data.batch_calls.some(running),
  );
  const data = loaded.value?.data;
  const to = (n: number) => go("/batches", new URLSearchParams(n ? { page: String(n) } : {}));
  return (
    <section aria-labelledby="batches-title">
      <h1 id="batches-title">Batch calls</h1>
      <p>
        <a class="button" href={href("batches", "new")}>
          New batch call
        </a>
      </p>
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
    (etag) =>
      answeredUnlessUnchanged(
        api.GET("/batch-call/{batch_call_id}", { params: { path: { batch_call_id: batchId }, header: ifNoneMatch(etag) } }),
      ),
    batchId,
    (answer) => running(answer.data),
  );
  const tasks = useLoad(
    (etag) =>
      answeredUnlessUnchanged(
        api.GET("/batch-call/{batch_call_id}/tasks", {
          params: { path: { batch_call_id: batchId }, query: { page, limit: PAGE_SIZE }, header: ifNoneMatch(etag) },
        }),
      ),
    `${batchId}:${page}`,
  );
  // The tasks are read again whenever the batch's counters or status move (every task's
  // change moves them), not on a clock of their own.
  const b = batch.value?.data;
  const version = b ? [b.status, b.updated_at, b.pending, b.in_progress, b.completed, b.failed, b.cancelled, b.sent].join(":") : "";
  const seen = useRef(version);
  useEffect(() => {
    if (seen.current && version && seen.current !== version) tasks.reload();
    seen.current = version || seen.current;
  }, [version]);
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
          <Controls batch={b} onChanged={batch.reload} />
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
              ["Quiet hours", b.quiet_hours?.enabled ? `${b.quiet_hours.start_time} to ${b.quiet_hours.end_time}` : "—"],
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

type Action = "execute" | "pause" | "resume" | "cancel";

/** The statuses each action is taken from (openapi.yaml: executeBatchCall, pauseBatchCall,
 * resumeBatchCall, cancelBatchCall); the API refuses the others with a 400. */
const FROM: Record<Action, string[]> = {
  execute: ["draft", "scheduled"],
  pause: ["sent"],
  resume: ["paused"],
  cancel: ["scheduled", "sent", "paused"],
};

const DONE: Record<Action, string> = {
  execute: "Started",
  pause: "Paused: no call starts until it is resumed; calls under way go on",
  resume: "Resumed",
  cancel: "Cancelled: its pending tasks will not be called; calls under way go on",
};

/** What the batch is asked to do (one operation of the API each). */
function take(action: Action, batchId: string): Promise<Schemas["BatchCallEnvelope"]> {
  const params = { params: { path: { batch_call_id: batchId } } };
  switch (action) {
    case "execute":
      return answered(api.POST("/batch-call/{batch_call_id}/execute", params));
    case "pause":
      return answered(api.POST("/batch-call/{batch_call_id}/pause", params));
    case "resume":
      return answered(api.POST("/batch-call/{batch_call_id}/resume", params));
    case "cancel":
      return answered(api.POST("/batch-call/{batch_call_id}/cancel", params));
  }
}

/** Start, pause, resume and cancel, each offered in the statuses the API takes it from;
 * cancelling (for good) asks first. The API's answer or error is shown here. */
function Controls({ batch, onChanged }: { batch: Batch; onChanged: () => void }) {
  const [busy, setBusy] = useState(false);
  const [confirming, setConfirming] = useState(false);
  const [notice, setNotice] = useState<string>();
  const [error, setError] = useState<ApiError>();
  const status = batch.status.toLowerCase();
  const can = (action: Action) => FROM[action].includes(status);

  const act = async (action: Action) => {
    setBusy(true);
    setConfirming(false);
    setNotice(undefined);
    setError(undefined);
    try {
      await take(action, batch.batch_call_id);
      setNotice(`${DONE[action]}.`);
    } catch (e) {
      setError(e as ApiError);
    } finally {
      setBusy(false);
      onChanged();
    }
  };

  const offered = (["execute", "pause", "resume", "cancel"] as Action[]).some(can);
  return (
    <div class="controls" role="group" aria-label="Batch controls">
      {offered ? (
        <div class="buttons">
          {can("execute") ? (
            <button type="button" disabled={busy} onClick={() => act("execute")}>
              Start now
            </button>
          ) : null}
          {can("pause") ? (
            <button type="button" class="secondary" disabled={busy} onClick={() => act("pause")}>
              Pause
            </button>
          ) : null}
          {can("resume") ? (
            <button type="button" disabled={busy} onClick={() => act("resume")}>
              Resume
            </button>
          ) : null}
          {can("cancel") && !confirming ? (
            <button type="button" class="secondary danger" disabled={busy} onClick={() => setConfirming(true)}>
              Cancel batch
            </button>
          ) : null}
        </div>
      ) : null}
      {confirming ? (
        <div class="confirm" role="alertdialog" aria-labelledby="cancel-question">
          <p id="cancel-question">
            Cancel this batch for good? Its {batch.pending} pending tasks will never be called; calls under way go on.
          </p>
          <button type="button" class="danger" disabled={busy} onClick={() => act("cancel")}>
            Yes, cancel it
          </button>{" "}
          <button type="button" class="secondary" onClick={() => setConfirming(false)}>
            Keep it
          </button>
        </div>
      ) : null}
      {notice ? (
        <p class="notice" role="status">
          {notice}
        </p>
      ) : null}
      <ErrorNote error={error} context="The batch was not changed" />
    </div>
  );
}
