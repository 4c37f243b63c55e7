"""The scheduler: dispatches each scheduled phone call to the dialer once, when it is due.

A thread looks for due calls every `interval` seconds. For each, it first records a
claim (`metadata.execution_status: dispatching`, event "Scheduled call due"), durable
before anything is dialed, then dials on a worker thread and records the outcome like an
immediate dispatch. Rescheduling or cancelling is refused from the claim on (409), and
takes effect at once before it: the next look sees the new time, or no schedule.

Policy on restarts (at most once): calls that fell due while the server was down are
dispatched at start, late, with the delay in the event. A call found claimed at start
was claimed by a process that stopped before it recorded the outcome: whether the
dialer received it is unknown, so it is not dialed again but marked `error`
("interrupted by a restart"), for a person or the dialer's own records to settle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from calls_server.domain import calls
from calls_server.domain.errors import ApiError
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.dialer import Dialer
from calls_server.integrations.dispatch import dispatch
from calls_server.storage import Store

log = logging.getLogger("calls_server.scheduler")

INTERRUPTED = "interrupted by a restart after it was claimed; not dialed again"


class Scheduler:
    """Runs while the app runs; `start` and `stop` come from the app's lifespan.

    `on_lag`, if given, is told how late each due call was claimed (seconds past its
    `scheduled_timestamp`, which is in whole seconds), for the metrics."""

    def __init__(
        self,
        store: Store,
        dialer: Dialer,
        interval: float = 0.5,
        clock: Clock = wall_clock,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.dialer = dialer
        self.interval = interval
        self.clock = clock
        self.on_lag = on_lag
        self._stop = threading.Event()
        self._in_flight: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dispatch")
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> None:
        self._settle_interrupted()
        self._thread.start()

    def stop(self) -> None:
        """Stop looking; wait for the dispatches under way to be recorded."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._workers.shutdown(wait=True)

    def run_once(self) -> None:
        """Claim every due call and start dispatching it."""
        now = self.clock()
        for call in self.store.scheduled_calls(due_by=now // 1000):
            key = (call["organization_id"], call["call_id"])
            with self._lock:
                if key in self._in_flight or calls.being_dispatched(call):
                    continue
                self._in_flight.add(key)
            try:
                self.store.change_call(*key, lambda c: calls.claim_due(c, self.clock()))
            except ApiError as e:  # rescheduled, cancelled or deleted meanwhile
                log.info("not dispatching %s: %s", key[1], e.error)
                self._done(key)
                continue
            if self.on_lag is not None:
                self.on_lag(max(0.0, now / 1000 - call["scheduled_timestamp"]))
            self._workers.submit(self._dispatch, key)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                log.exception("scheduler pass failed; trying again")

    def _dispatch(self, key: tuple[str, str]) -> None:
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

    def _settle_interrupted(self) -> None:
        for call in self.store.scheduled_calls(due_by=2**62):
            if calls.being_dispatched(call):
                self.store.change_call(
                    call["organization_id"],
                    call["call_id"],
                    lambda c: calls.dispatched(c, False, INTERRUPTED, 0, self.clock()),
                )
