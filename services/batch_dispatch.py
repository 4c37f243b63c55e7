"""The batch dispatcher: dials the tasks of running batches, within their rules.

A thread looks at every active batch (`Store.active_batches`) every `interval` seconds:

- a scheduled batch whose trigger time has come is sent;
- each task whose call is under way is followed: once the call has ended (by the dialer's
  updates, or the sandbox's), the attempt's outcome is recorded, and the task completes,
  fails, or waits for its retry (`batches.settled`);
- unless it is the batch's quiet time, due tasks are claimed, one conditional change each
  (`batches.claimed`, under the store's per-organization lock, which checks the batch's
  and the organization's concurrency caps), and handed to dispatch workers. A worker
  creates the attempt's call (an ordinary outbound phone call, its id derived from the task
  and the attempt), hands it to the dialer (`dispatch.dispatch`), and records the dial.

Exactly once. A claim records the process that made it (kept on the task until the
attempt's outcome is recorded); of several processes only one claims a task's attempt. A
claim left by a process that stopped (`Store.live_processes`) is settled by whichever
process finds it: if the attempt's call does not exist, it was never dialed and the
attempt is made again (`batches.released`); if the call exists but the dial was not
recorded on it, whether the dialer got it is unknown: a dialer that places one call per
Idempotency-Key (`Dialer.idempotent`: the sandbox, or an HTTP dialer the operator vouches
for) is handed the same call again under the same key (`batches.reclaimed`), any other
is not (`batches.interrupted`, at most once, as the scheduler does); if the call records
the dial, the task just goes on following it. The attempt's call id, derived from the task
and the attempt, is the guard: a dial made again is never a second call. A claim of this
process whose dial failed here is settled alike, but never dialed again (a dial failing
so would be made at every pass). A task dialed before claimants were kept on dialed tasks
has none: its process counts as stopped only when no other process serves the store. A
claimant this process has seen serving gets a few seconds to serve again before it counts
as stopped (services/claimants.py: a database failover's presence gap).

A sandbox call ends with the process that plays it: one still under way whose dialing
process stopped is ended (`SandboxDialer.cut_off`, in `error`), and its task follows its
retry rules as for any call that ended so.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Protocol

from calls_server.domain import batches, calls
from calls_server.domain.batches import Batch, Task
from calls_server.domain.errors import (
    ApiError,
    BadRequest,
    CallNotFound,
    Conflict,
    DuplicateId,
    QuotaExceeded,
)
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.dialer import Dialer
from calls_server.services import test_clocks
from calls_server.services.claimants import Claimants
from calls_server.services.dispatch import dispatch
from calls_server.services.sandbox import SandboxDialer
from calls_server.storage.interface import (
    BatchRecords,
    CallRecords,
    Processes,
)


class DispatcherStore(CallRecords, BatchRecords, Processes, Protocol):
    """What the batch dispatcher needs of the store."""


log = logging.getLogger("calls_server.batches")


class BatchDispatcher:
    """Runs while the app runs (with a dialer); `start` and `stop` come from its lifespan.

    `organization_cap`: how many batch calls of one organization may be under way at once
    (CALLS_BATCH_CONCURRENCY); a batch's `concurrency_limit` may lower it for the batch.
    `sandbox`: the sandbox dialer, when it is the dialer (its calls end with their process).
    """

    def __init__(
        self,
        store: DispatcherStore,
        dialer: Dialer,
        organization_cap: int,
        interval: float = 0.5,
        clock: Clock = wall_clock,
        workers: int = 8,
        sandbox: SandboxDialer | None = None,
    ) -> None:
        self.store = store
        self.dialer = dialer
        self.sandbox = sandbox
        self.organization_cap = organization_cap
        self.interval = interval
        self.clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._dialing: set[str] = set()  # task ids this process is dialing now
        self._claimants = Claimants(store)
        self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch-dial")
        self._thread = threading.Thread(target=self._run, name="batch-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop looking; wait for the dials under way to be recorded."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._workers.shutdown(wait=True)

    def run_once(self) -> list[Future[None]]:
        """One look at every active batch (but those of organizations on a frozen test
        clock: `run_due`): first the calls under way (their outcomes free room under the
        caps), then new attempts. Answers the dials it started (each done once recorded)."""
        return self._pass(self.clock(), None)[0]

    # -- on a test clock (services/test_clocks.py) ------------------------------------------
    def next_due(self, organization_id: str) -> int | None:
        """When something of the organization's batches next falls due (Unix ms): a
        scheduled batch's start, or the first pending task's attempt (after the batch's quiet
        hours) of a batch with room under its cap; its calls' ends are the sandbox's."""
        times = []
        for batch in self.store.active_batches():
            org, batch_id = _key(batch)
            if org != organization_id:
                continue
            if batch["status"] == "scheduled":
                times.append(batch["scheduled_timestamp"] or 0)
            if batch["status"] != "sent":
                continue
            if batches.cap(batch, self.organization_cap) <= batch["in_progress"]:
                continue  # due again once a call ends
            pending, _ = self.store.batch_tasks(org, batch_id, status="pending")
            attempts = [t["next_attempt_at"] for t in pending if t["next_attempt_at"] is not None]
            if attempts:
                # Due already (0: as soon as the batch runs), and waiting on quiet hours?
                first = max(min(attempts), test_clocks.now_of(self.clock, organization_id))
                quiet = batches.quiet_hours(batch)
                times.append(quiet.next_allowed(first) if quiet and quiet.holds(first) else first)
        return min(times, default=None)

    def run_due(self, organization_id: str, now: int) -> int:
        """One look at the organization's batches at `now`, its dials made and recorded
        before it answers; how many tasks and batches it moved."""
        started, moved = self._pass(now, organization_id)
        for dial in started:
            dial.result()
        return moved + len(started)

    def resumed(self, organization_id: str) -> None:
        """Nothing to hand back: the next pass looks at the organization's batches."""

    def _pass(self, now: int, organization_id: str | None) -> tuple[list[Future[None]], int]:
        """A look at the active batches of `organization_id` (None: of every organization
        not on a frozen test clock) at `now`: the dials started, and how many batches and
        tasks it moved besides."""
        started: list[Future[None]] = []
        moved = 0
        active = [
            batch
            for batch in self.store.active_batches()
            if (
                batch["organization_id"] == organization_id
                if organization_id is not None
                else not test_clocks.frozen(self.clock, batch["organization_id"])
            )
        ]
        # Looked at every pass with work, so that the claimants serving now are known
        # before one of them goes missing.
        live = self._claimants.live() if active else set()
        for n, batch in enumerate(active):
            with self._problems(batch):
                if batch["status"] == "scheduled" and (batch["scheduled_timestamp"] or 0) <= now:
                    batch = active[n] = self._start(batch, now)
                    moved += 1
                if batch["in_progress"]:
                    followed = self._follow(batch, live, started)
                    if followed:
                        active[n] = self.store.get_batch(*_key(batch))
                        moved += followed
            _let_requests_run()
        calling: dict[str, int] = {}
        for batch in active:
            org = batch["organization_id"]
            calling[org] = calling.get(org, 0) + batch["in_progress"]
        for batch in active:
            org = batch["organization_id"]
            if self.organization_cap <= calling[org]:
                continue
            with self._problems(batch):
                dials = self._claim(batch, now, self.organization_cap - calling[org])
                calling[org] += len(dials)
                started += dials
            _let_requests_run()
        return started, moved

    @contextlib.contextmanager
    def _problems(self, batch: Batch) -> Iterator[None]:
        """Log what goes wrong with one batch, and go on with the others."""
        try:
            yield
        except ApiError as e:  # deleted, or moved on by a request, meanwhile
            log.debug("batch %s: %s", batch["batch_call_id"], e.error)
        except Exception:
            log.exception("batch %s: pass failed; trying again", batch["batch_call_id"])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                log.exception("batch dispatcher pass failed; trying again")

    def _start(self, batch: Batch, now: int) -> Batch:
        return self.store.change_batch(*_key(batch), lambda b: batches.started(b, now))

    # -- dialing ---------------------------------------------------------------------------------
    def _claim(self, batch: Batch, now: int, organization_free: int) -> list[Future[None]]:
        """Claim the batch's due tasks that its caps and quiet hours allow, and hand them to
        dispatch workers."""
        if batch["status"] != "sent":
            return []
        quiet = batches.quiet_hours(batch)
        if quiet is not None and quiet.holds(now):
            return []
        free = min(
            batches.cap(batch, self.organization_cap) - batch["in_progress"], organization_free
        )
        if free <= 0:
            return []
        org, batch_id = _key(batch)
        due, _ = self.store.batch_tasks(org, batch_id, due_by=now, limit=free)
        me, dials = self.store.process_id, []
        claim = partial(batches.claimed, organization_cap=self.organization_cap, now=now, me=me)
        for task in due:
            try:
                _, task = self.store.change_batch_task(org, batch_id, task["task_id"], claim)
            except Conflict as e:  # claimed elsewhere, a cap reached, paused meanwhile
                log.debug("%s", e.error)
                break
            with self._lock:
                self._dialing.add(task["task_id"])
            dials.append(self._workers.submit(self._dial, batch, task))
        return dials

    def _dial(self, batch: Batch, task: Task, create: bool = True) -> None:
        """Create the claimed attempt's call (unless `create` is False: it exists, its dial
        made again), hand it to the dialer, record the dial: on the organization's time."""
        with test_clocks.working_for(batch["organization_id"]):
            self._dial_now(batch, task, create)

    def _dial_now(self, batch: Batch, task: Task, create: bool) -> None:
        (org, batch_id), call_id = _key(batch), task["call_id"]
        try:
            try:
                if create:
                    self.store.add_call(
                        calls.new_call(**batches.attempt_call(batch, task, self.clock()))
                    )
                _, outcome = dispatch(self.store, self.dialer, self.clock, org, call_id)
                accepted, reason = outcome.accepted, outcome.reason
            except DuplicateId:  # never another claim's: this one's, made before
                return
            except (BadRequest, QuotaExceeded) as e:  # not placed, and would not be again
                accepted, reason = False, f"call not created: {e.error}"
            self._change(
                org,
                batch_id,
                task,
                lambda b, t, now: batches.dialed(b, t, call_id, accepted, reason, now),
            )
        except ApiError as e:
            log.warning(
                "batch %s task %s: dial not recorded: %s", batch_id, task["task_id"], e.error
            )
        except Exception:
            log.exception("batch %s task %s: dial failed", batch_id, task["task_id"])
        finally:
            with self._lock:
                self._dialing.discard(task["task_id"])

    # -- following calls under way ---------------------------------------------------------------
    def _follow(self, batch: Batch, live: set[str], started: list[Future[None]]) -> int:
        """Record the outcome of every attempt of the batch whose call has ended, and settle
        the claims of processes that stopped (adding the dials made again to `started`);
        how many tasks were changed."""
        org, batch_id = _key(batch)
        under_way, _ = self.store.batch_tasks(org, batch_id, status="calling")
        with self._lock:
            under_way = [t for t in under_way if t["task_id"] not in self._dialing]
        # Only the calls' statuses, in one read: most calls are still under way.
        statuses = self.store.call_statuses(org, [t["call_id"] for t in under_way if t["dialed"]])
        changed, me = 0, self.store.process_id
        for task in under_way:
            claimant = task["claimed_by"]
            # None: dialed before claimants were kept on dialed tasks, by a process unknown;
            # gone only when no other process serves the store (it may be an older one still
            # playing the call, during a rolling upgrade).
            gone = self._claimants.stopped(claimant, live) if claimant else live == {me}
            try:
                if task["dialed"]:
                    status = statuses.get(task["call_id"])
                    if status == "ongoing" and gone and self.sandbox is not None:
                        # Its sandbox stopped with its process: nothing will end it.
                        status = self.sandbox.cut_off(org, task["call_id"])["call_status"]
                    changed += self._settle(org, batch_id, task, status)
                elif gone or claimant == me:
                    started += self._recover(org, batch_id, task, gone)
                    changed += 1
            except ApiError as e:  # settled meanwhile by another process
                log.debug("batch %s task %s: %s", batch_id, task["task_id"], e.error)
        return changed

    def _settle(self, org: str, batch_id: str, task: Task, status: str | None) -> bool:
        """Record the attempt's outcome if its call (now in `status`, None: gone) ended."""
        if status is None:
            self._change(org, batch_id, task, batches.call_gone)
            return True
        if status not in ("ended", "error"):
            return False
        call = self.store.get_call(org, task["call_id"])
        self._change(org, batch_id, task, lambda b, t, now: batches.settled(b, t, call, now))
        return True

    def _recover(self, org: str, batch_id: str, task: Task, gone: bool) -> list[Future[None]]:
        """A claim whose process stopped (`gone`), or whose dial here failed, before the
        dial was recorded on the task; answers the dial it made again, if it did."""
        claimant = task["claimed_by"]
        try:
            call = self.store.get_call(org, task["call_id"])
        except CallNotFound:
            self._change(
                org, batch_id, task, lambda b, t, now: batches.released(b, t, claimant, now)
            )
            return []
        if call["call_status"] == "registered" and self.dialer.idempotent and gone:
            # Created, the dial not recorded: the same call again, under the same key. Not
            # after a dial of this process's failed: it could fail so at every pass, for ever.
            me = self.store.process_id
            reclaim = partial(batches.reclaimed, claimant=claimant, me=me)
            batch, task = self.store.change_batch_task(
                org, batch_id, task["task_id"], lambda b, t, _: reclaim(b, t, now=self.clock())
            )
            with self._lock:
                self._dialing.add(task["task_id"])
            return [self._workers.submit(self._dial, batch, task, create=False)]
        if call["call_status"] == "registered":  # created, the dial not recorded
            self.store.change_call(
                org,
                call["call_id"],
                lambda c: calls.dispatched(c, False, batches.INTERRUPTED, 0, self.clock()),
            )
            self._change(
                org, batch_id, task, lambda b, t, now: batches.interrupted(b, t, claimant, now)
            )
            return []
        call_id = call["call_id"]
        self._change(
            org,
            batch_id,
            task,
            lambda b, t, now: batches.dialed(b, t, call_id, True, "recorded on the call", now),
        )
        return []

    def _change(
        self,
        org: str,
        batch_id: str,
        task: Task,
        change: Callable[[Batch, Task, int], tuple[Batch, Task]],
    ) -> None:
        now = self.clock()
        self.store.change_batch_task(
            org, batch_id, task["task_id"], lambda b, t, _: change(b, t, now)
        )


def _key(batch: Batch) -> tuple[str, str]:
    return batch["organization_id"], batch["batch_call_id"]


def _let_requests_run() -> None:
    """Give the GIL away for a moment: a pass is pure Python that waits for nothing, and
    would otherwise hold the interpreter from the requests for up to its switch interval
    (5 ms), batch after batch (docs/performance.md, batch calls)."""
    time.sleep(0)
