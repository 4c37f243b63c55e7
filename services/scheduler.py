"""The scheduler: dispatches each scheduled phone call to the dialer once, when it is due.

A thread looks for due calls every `interval` seconds and hands each to a dispatch
worker, which records a claim (`metadata.execution_status: dispatching`, event
"Scheduled call due"), durable before anything is dialed, then dials and records the
outcome like an immediate dispatch. Claiming right before dialing, a process holds no
more claims than it has dials under way. Rescheduling or cancelling is refused from the
claim on (409), and takes effect at once before it: the next look sees the new time, or
no schedule.

Policy on restarts (at most once): calls that fell due while the server was down are
dispatched at start, late, with the delay in the event. A claim records the process that
took it (`Store.process_id`); a call found claimed by a process that no longer serves the
store (`Store.live_processes`: after a restart, or another process's end) was claimed by
one that stopped before it recorded the outcome: whether the dialer received it is
unknown, so it is not dialed again but marked `error` ("interrupted by a restart"), for a
person or the dialer's own records to settle. So is a claim of this very process whose
dispatch ended without recording its outcome (the database out of reach meanwhile, as in a
failover), at the next pass that can write it. A claimant this process has seen serving
is given `presence_grace` seconds to serve again first (services/claimants.py).

With the sandbox dialer, the scheduler also ends the calls under way (not a batch's) that
the sandbox of a stopped process was playing (`SandboxDialer.cut_off_abandoned`): at start,
before the app serves, and at every pass (another process sharing the database may stop
at any time).

Any number of processes sharing a store may run schedulers: a claim is a conditional
change of the call (`calls.claim_due` refuses a call claimed already) made under the
store's lock or row lock, so of the processes that find a call due exactly one claims it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Protocol

from calls_server.domain import calls
from calls_server.domain.errors import ApiError
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.dialer import Dialer
from calls_server.services import test_clocks
from calls_server.services.claimants import Claimants
from calls_server.services.dispatch import dispatch
from calls_server.services.sandbox import SandboxDialer
from calls_server.storage.interface import (
    CallRecords,
    Processes,
    ScheduledCalls,
)


class SchedulerStore(CallRecords, ScheduledCalls, Processes, Protocol):
    """What the scheduler needs of the store."""


log = logging.getLogger("calls_server.scheduler")

INTERRUPTED = "interrupted by a restart after it was claimed; not dialed again"
UNRECORDED = "claimed, but the outcome of its dial could not be recorded; not dialed again"


class Scheduler:
    """Runs while the app runs; `start` and `stop` come from the app's lifespan.

    `on_lag`, if given, is told how late each due call was claimed (seconds past its
    `scheduled_timestamp`, which is in whole seconds), for the metrics. `sandbox`: the
    sandbox dialer, when it is the dialer (its calls end with their process)."""

    def __init__(
        self,
        store: SchedulerStore,
        dialer: Dialer,
        interval: float = 0.5,
        clock: Clock = wall_clock,
        on_lag: Callable[[float], None] | None = None,
        sandbox: SandboxDialer | None = None,
        presence_grace: float = 10.0,
    ) -> None:
        self.store = store
        self.dialer = dialer
        self.sandbox = sandbox
        self.interval = interval
        self.clock = clock
        self.on_lag = on_lag
        self._claimants = Claimants(store, presence_grace)
        self._stop = threading.Event()
        self._in_flight: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dispatch")
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> None:
        self._settle_abandoned(
            [c for c in self.store.scheduled_calls(due_by=2**62) if calls.being_dispatched(c)],
            self._claimants.live(),
        )
        if self.sandbox is not None:
            self.sandbox.cut_off_abandoned()
        self._thread.start()

    def stop(self) -> None:
        """Stop looking; wait for the dispatches under way to be recorded."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._workers.shutdown(wait=True)

    def run_once(self) -> None:
        """Settle abandoned claims and sandbox calls; hand every due call that is not
        claimed to a dispatch worker, which claims it right before dialing it (so that a
        process claims no more than it is dialing: if it dies, only those are left
        claimed)."""
        live = self._claimants.live()
        due = [
            call
            for call in self.store.scheduled_calls(due_by=self.clock() // 1000)
            # An organization on a frozen test clock: its calls fall due as it advances.
            if not test_clocks.frozen(self.clock, call["organization_id"])
        ]
        self._settle_abandoned([call for call in due if calls.being_dispatched(call)], live)
        if self.sandbox is not None:
            self.sandbox.cut_off_abandoned()
        for call in due:
            key = (call["organization_id"], call["call_id"])
            with self._lock:
                if key in self._in_flight or calls.being_dispatched(call):
                    continue
                self._in_flight.add(key)
            self._workers.submit(self._dispatch, key)

    # -- on a test clock (services/test_clocks.py) ------------------------------------------
    def next_due(self, organization_id: str) -> int | None:
        """When the organization's next scheduled call falls due (Unix ms)."""
        return min(
            (call["scheduled_timestamp"] * 1000 for call in self._scheduled(organization_id)),
            default=None,
        )

    def run_due(self, organization_id: str, now: int) -> int:
        """Dial the organization's calls due by `now`, here and now; how many."""
        dialed = 0
        for call in self._scheduled(organization_id, due_by=now // 1000):
            key = (organization_id, call["call_id"])
            with self._lock:
                if key in self._in_flight:
                    continue
                self._in_flight.add(key)
            self._dispatch(key)
            dialed += 1
        return dialed

    def resumed(self, organization_id: str) -> None:
        """Nothing to hand back: the next pass finds the organization's due calls."""

    def _scheduled(self, organization_id: str, due_by: int = 2**62) -> list[calls.Call]:
        return [
            call
            for call in self.store.scheduled_calls(due_by=due_by)
            if call["organization_id"] == organization_id and not calls.being_dispatched(call)
        ]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                log.exception("scheduler pass failed; trying again")

    def _dispatch(self, key: tuple[str, str]) -> None:
        with test_clocks.working_for(key[0]):
            self._dispatch_now(key)

    def _dispatch_now(self, key: tuple[str, str]) -> None:
        try:
            now = self.clock()
            me = self.store.process_id
            claimed = self.store.change_call(*key, lambda c: calls.claim_due(c, now, me))
        except ApiError as e:  # rescheduled, cancelled, deleted or claimed meanwhile
            log.debug("not dispatching %s: %s", key[1], e.error)
            self._done(key)
            return
        except Exception:
            log.exception("claiming %s failed; trying again at the next pass", key[1])
            self._done(key)
            return
        if self.on_lag is not None:
            self.on_lag(max(0.0, now / 1000 - claimed["scheduled_timestamp"]))
        try:
            dispatch(self.store, self.dialer, self.clock, *key)
        except ApiError as e:  # deleted, or its status changed, while it was dialed
            log.warning("dispatch of %s not recorded: %s", key[1], e.error)
        except Exception:
            log.exception("dispatch of %s failed", key[1])
        finally:
            self._done(key)

    def _done(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._in_flight.discard(key)

    def _settle_abandoned(self, claimed: list[calls.Call], live: set[str]) -> None:
        """Mark `error` those of the `claimed` calls whose claimant no longer serves the
        store, or is this process with no dispatch of it under way (not dialed again: at
        most once)."""
        with self._lock:
            in_flight = set(self._in_flight)
        # A claim of this process read before its dispatch recorded the outcome is refused
        # by `calls.abandoned` (no longer that claim), so the snapshot may be stale.
        unsettled = [c for c in claimed if (c["organization_id"], c["call_id"]) not in in_flight]
        if not unsettled:
            return
        me = self.store.process_id
        for call in unsettled:
            claimant = calls.claimant(call)
            # None: claimed by a version that did not record its claimant, long stopped.
            if claimant not in (me, None) and not self._claimants.stopped(claimant, live):
                continue
            try:
                self.store.change_call(
                    call["organization_id"],
                    call["call_id"],
                    partial(
                        calls.abandoned,
                        claimed_by=claimant,
                        reason=UNRECORDED if claimant == self.store.process_id else INTERRUPTED,
                        now=self.clock(),
                    ),
                )
            except ApiError as e:  # settled meanwhile (by its claimant, or another process)
                log.debug("not settling %s: %s", call["call_id"], e.error)
