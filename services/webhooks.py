"""Delivery of call status events to the organization's webhooks, from the store's outbox.

The store records the events a change of a call owes (one per active webhook) in the same
atomic write as the change (`Store.record_webhook_events`, fed by `domain.webhooks
.owed_events`), so an event exists exactly when its change does, across crashes. This
module delivers them from there, at least once and with the same `event_id` on every
attempt:

- events wait in lanes, one per (webhook, call): a lane sends one event at a time, in the
  order recorded, so each call's events arrive at each webhook in order; a lane whose head
  event waits for its retry waits as a whole, and only that call's events wait with it;
- lanes of one webhook run side by side, at most `per_endpoint` at once (its own kept-alive
  connections), and at most `concurrency` attempts are under way at once, all webhooks
  together: a hanging endpoint holds at most `per_endpoint` of them, each for at most
  `timeout`, never another endpoint's;
- each attempt resolves the URL again and connects only to the address the egress policy
  allowed (no DNS rebinding), and no redirect is followed;
- each attempt is signed (integrations/signing.py) and its outcome (status code, latency,
  error) recorded on the event, which is then delivered, due again after the retry
  policy's backoff, or failed for good once the policy's window has passed; failures long
  enough switch the webhook off with the reason (`domain.webhooks.after_attempt`);
- an event is sent only once its change is on disk;
- on stop, the attempts under way finish (each within `timeout`) and are recorded; every
  other pending event stays in the store and is delivered after the next start;
- of several processes sharing a PostgreSQL store, the one the store tells delivers
  (storage/postgres_presence.py): each event by one process, each call's in order.

How, cheaply (docs/performance.md, "Webhook delivery under load", says what it cost before
and after; bench/delivery_cpu.py measures it): the attempts run on one thread, an asyncio
event loop, each a task that speaks HTTP/1.1 itself over kept-alive connections
(integrations/webhook_client.py: the request is bytes, the answer's status code is all it
reads), so that no thread waits
for an answer and none hands the interpreter over to another at every socket call (16
worker threads did, some 15 context switches per event). The attempts that start together
read their webhooks and events in one store call (`Store.get_webhooks_with_events`: one
hold of the store's lock, or one round trip). What blocks runs elsewhere: the attempts that
ended are recorded together, in one write (`Store.change_webhook_events`: one journal
record, one wait for the disk), by a recorder thread, handed over without a lock and
without waking it while it looks by itself, and a lane sends its next event only once its
attempt is recorded; reads that wait for a database, a host name to resolve, the wait for
the disk before sending (one for every attempt starting meanwhile) and, with tracing on,
httpx's instrumented requests run on a small pool of threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import functools
import heapq
import ipaddress
import itertools
import logging
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson

from calls_server.domain import webhooks
from calls_server.domain.calls import Call
from calls_server.domain.errors import WebhookEventNotFound, WebhookNotFound
from calls_server.domain.faults import FAULT_HEADER, Fault, FaultRules
from calls_server.domain.webhooks import Attempt, RetryPolicy, Webhook, WebhookEvent
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.egress import EgressPolicy, Target, UnsafeTarget
from calls_server.integrations.signing import signature_headers
from calls_server.integrations.webhook_client import (
    MAX_TARGETS_KEPT,
    ProtocolError,
    WebhookClient,
)
from calls_server.services import test_clocks
from calls_server.storage.interface import (
    Durability,
    EventChange,
    Outbox,
    WebhookRecords,
)


class DelivererStore(WebhookRecords, Outbox, Durability, Protocol):
    """What the webhook deliverer needs of the store."""


log = logging.getLogger("calls_server.webhooks")

# How often lanes of webhooks that are switched off are looked at again (they may be
# switched on), and how often settled events past their retention are pruned (seconds).
RECHECK_EVERY = 1.0
PRUNE_EVERY = 60.0

# While attempts are under way, and for POLL_FOR seconds after, the loop looks at the lanes
# every POLL_EVERY seconds instead of being woken by each event told (see `_dispatch`).
POLL_EVERY = 0.002
POLL_FOR = 0.05
# Seconds the recorder waits for more attempts to end, while some are under way, before it
# records those that ended (each write costs a wait for the disk, whatever it holds).
GATHER_FOR = 0.002

Lane = tuple[str, str]  # (webhook id, call id)
EventKey = tuple[str, str, str]  # (organization id, webhook id, event id)
Found = tuple[Webhook | None, WebhookEvent | None]  # as read for an attempt (None: gone)
T = TypeVar("T")


@dataclass
class _Sent:
    """An attempt made, to be recorded: its lane, the webhook as read for it, its event."""

    lane: Lane
    hook: Webhook
    event_id: str
    attempt: Attempt


class WebhookDeliverer:
    """Records the events call changes owe, and delivers them from the store.

    `on_delivered`, if given, is told each delivery's lag (seconds from the event's
    creation, or its redelivery request, to its delivery being recorded), for the metrics.
    `on_client`, if given, is called with each endpoint's HTTP client when it is made,
    before its first request (tracing instruments it: calls_server/tracing.py): deliveries
    then go through httpx, whose instrumentation makes each a client span, on the pool's
    threads; without it, through this module's own client on the event loop."""

    def __init__(
        self,
        store: DelivererStore,
        egress: EgressPolicy,
        policy: RetryPolicy | None = None,
        concurrency: int = 16,
        per_endpoint: int = 8,
        timeout: float = 5.0,
        retention: float = 7 * 86400.0,
        clock: Clock = wall_clock,
        on_delivered: Callable[[float], None] | None = None,
        on_client: Callable[[httpx.Client], None] | None = None,
        faults: FaultRules | None = None,
    ) -> None:
        self.store = store
        self.faults = faults  # the sandbox's, when it is on
        self._marks: dict[str, str] = {}  # event id -> the fault that put it off
        # Organization -> events held back until another call's is delivered (`reorder`).
        self._held_back: dict[str, list[tuple[str, str, str]]] = {}
        self.on_delivered = on_delivered
        self.on_client = on_client
        self.egress = egress
        self.policy = policy or RetryPolicy()
        self.concurrency = concurrency
        self.per_endpoint = per_endpoint
        self.timeout = timeout
        self.retention = retention
        self.clock = clock
        # Guards the state below, shared by the loop, the recorder, the store's threads.
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)  # an attempt ended (stop waits for it)
        self._recordable = threading.Condition(self._lock)  # attempts to record
        # Per lane: the event ids it still has to send, in order; the webhook's organization.
        self._lanes: dict[Lane, deque[str]] = {}
        self._organizations: dict[str, str] = {}
        self._queued: set[tuple[str, str]] = set()  # (webhook, event id) in those lanes
        # Queued again (redelivered) while its lane's attempt of it was under way or being
        # recorded: the lane reads it again instead of dropping it with that attempt.
        self._again: set[tuple[str, str]] = set()
        self._due: list[tuple[int, int, Lane]] = []  # heap of (when, tie, lane)
        self._scheduled: dict[Lane, int] = {}  # lane -> when it is due (its heap entry)
        self._busy: set[Lane] = set()  # lanes with an attempt under way (or being recorded)
        self._in_flight: Counter[str] = Counter()  # webhook -> its lanes under way
        self._held: dict[str, deque[Lane]] = {}  # webhook -> due lanes over its limit
        self._parked: dict[str, set[Lane]] = {}  # webhook switched off -> its waiting lanes
        # Organization on a frozen test clock -> its lanes, left to `run_due`.
        self._frozen: dict[str, set[Lane]] = {}
        # Lane -> the partition its call's events are in (as the store told; None: one process).
        self._partitions: dict[Lane, int | None] = {}
        self._tie = itertools.count()
        # Attempts made, for the recorder: appended by the loop without the lock (a deque's
        # append and popleft are atomic), taken by the recorder.
        self._unrecorded: deque[_Sent] = deque()
        self._recorder_idle = False  # it waits to be woken (no attempt was under way)
        # How many times events were told; how many had been when the last wait for the
        # disk that ended began (every event told by then is on disk).
        self._told = 0
        self._durable_told = 0
        self._stopping = False  # no attempt starts any more
        self._closing = False  # the recorder and the upkeep thread leave
        self._stopped = threading.Event()
        # The event loop and its thread; `_dispatch` is asked for (`_kick`) or timed.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = threading.Thread(
            target=self._run_loop, name="webhook-delivery", daemon=True
        )
        self._kicked = False
        self._polling = False  # see `_dispatch`
        self._active_until = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when it goes off (the loop's time)
        self._check: asyncio.Future[None] | None = None  # the next wait for the disk
        self._http = WebhookClient(per_endpoint)
        self._targets: dict[str, Target] = {}  # URL naming an address -> where it goes
        self._clients: dict[str, httpx.Client] = {}  # with tracing: httpx, per webhook
        # Blocking work the loop hands off (see the module's docstring).
        self._threads = ThreadPoolExecutor(
            concurrency, thread_name_prefix="webhook-io", initializer=_name_thread
        )
        self._recorder = threading.Thread(
            target=self._keep_records, name="webhook-record", daemon=True
        )
        self._upkeep = threading.Thread(target=self._keep_up, name="webhook-upkeep", daemon=True)

    # -- the store's side --------------------------------------------------------------------
    def start(self) -> None:
        """Record events from now on and start delivering those the store tells of (every
        pending one, while this process is the one of those sharing the store that
        delivers)."""
        running = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._loop.call_soon(running.set)
        self._loop_thread.start()
        running.wait()
        self._recorder.start()
        self._upkeep.start()
        self.store.record_webhook_events(self._owed, self._pending, self._forget_partitions)

    def _owed(
        self, old: Call | None, new: Call | None, hooks: list[Webhook], assigned: list[str]
    ) -> list[WebhookEvent]:
        return webhooks.owed_events(old, new, hooks, assigned, self.clock(), str(uuid.uuid4()))

    def _pending(self, events: list[WebhookEvent]) -> None:
        with self._lock:
            self._told += 1
            for event in events:
                webhook_id, event_id = event["webhook_id"], event["event_id"]
                lane = (webhook_id, event["call_id"])
                # Already queued: recorded while start() read the pending ones, or due sooner.
                if (webhook_id, event_id) not in self._queued:
                    self._queued.add((webhook_id, event_id))
                    self._lanes.setdefault(lane, deque()).append(event_id)
                    self._organizations[webhook_id] = event["organization_id"]
                    self._partitions[lane] = event.get("partition")
                elif lane in self._busy and self._lanes[lane][0] == event_id:
                    self._again.add((webhook_id, event_id))
                self._schedule(lane, self.clock())
            self._kick()

    def _forget_partitions(self, partitions: frozenset[int] | None) -> None:
        """Another process delivers the events of `partitions` (None: of all) from now on:
        drop their lanes (the events stay pending in the store for that process), and
        return once the attempts under way on them are recorded (at once for all: this
        process lost its connection, and its part with it)."""
        with self._lock:
            if partitions is None:
                self._lanes.clear()
                self._queued.clear()
                self._again.clear()
                self._due.clear()
                self._scheduled.clear()
                self._held.clear()
                self._parked.clear()
                self._partitions.clear()
                return
            mine = {lane for lane, p in self._partitions.items() if p in partitions}
            for lane in mine:
                for event_id in self._lanes.pop(lane, ()):
                    self._queued.discard((lane[0], event_id))
                    self._again.discard((lane[0], event_id))
                self._scheduled.pop(lane, None)  # its heap entry is skipped
                for lanes in (*self._parked.values(), *self._frozen.values()):
                    lanes.discard(lane)
            for webhook_id, held in self._held.items():
                self._held[webhook_id] = deque(lane for lane in held if lane not in mine)
            while mine & self._busy:
                self._wake.wait(0.05)
            for lane in mine:
                self._partitions.pop(lane, None)

    def backlog(self) -> tuple[int, int]:
        """Events waiting to be delivered (queued, retries included, and those being sent),
        and attempts under way."""
        with self._lock:
            return len(self._queued), len(self._busy)

    def stop(self) -> None:
        """Finish the attempts under way (each within the timeout), record them, and stop;
        every event still pending stays in the store for the next start."""
        with self._lock:
            self._stopping = True
            while self._busy:  # each ends within the timeout, then is recorded
                self._wake.wait(0.05)
            self._closing = True
            self._recordable.notify_all()
        self._stopped.set()
        for thread in (self._recorder, self._upkeep):
            if thread.is_alive():
                thread.join()
        loop = self._loop
        if loop is not None and self._loop_thread.is_alive():
            loop.call_soon_threadsafe(self._close_loop)
            self._loop_thread.join()
            loop.close()
        self._threads.shutdown(wait=True)
        for client in self._clients.values():
            client.close()
        kept: Counter[str] = Counter()
        for (webhook_id, _), lane in self._lanes.items():
            kept[webhook_id] += len(lane)
        if kept:
            log.info(
                "stopping: %d webhook events are pending (%s); they are kept and delivered "
                "after the next start",
                kept.total(),
                ", ".join(f"{hook}: {count}" for hook, count in sorted(kept.items())),
            )

    # -- the event loop ------------------------------------------------------------------------
    def _run_loop(self) -> None:
        _name_thread()
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _close_loop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._http.close()
        assert self._loop is not None
        self._loop.call_soon(self._loop.stop)  # after the connections' closing callbacks

    def _on_loop(self, function: Callable[..., Any], *args: Any) -> None:
        """Call `function(*args)` on the loop's thread (from any thread), in a context of
        its own: a test clock's organization set where it was asked for is not read."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        context = contextvars.Context()
        if threading.get_ident() == self._loop_thread.ident:
            loop.call_soon(function, *args, context=context)
        else:
            with contextlib.suppress(RuntimeError):  # closed by a stop meanwhile
                loop.call_soon_threadsafe(function, *args, context=context)

    def _kick(self) -> None:
        """Have the loop look at the due lanes soon (the caller holds `_lock`): at once, or,
        while it polls, at its next look (within POLL_EVERY)."""
        if self._kicked or self._stopping:
            return
        if self._polling and threading.get_ident() != self._loop_thread.ident:
            return
        self._kicked = True
        self._on_loop(self._dispatch)

    def _schedule(self, lane: Lane, when: int) -> None:
        """Have `lane` looked at by `when` (Unix ms); the caller holds `_lock`, and kicks the
        loop (`_kick`) if the lane may be due before the loop looks again."""
        if lane in self._busy:
            return  # looked at again when its attempt ends
        if lane in self._scheduled and self._scheduled[lane] <= when:
            return
        self._scheduled[lane] = when
        self._parked.get(lane[0], set()).discard(lane)
        heapq.heappush(self._due, (when, next(self._tie), lane))

    def _dispatch(self) -> None:
        """On the loop: start an attempt on each due lane whose webhook has a connection free,
        while fewer than `concurrency` are under way; then wait until the next is due (at
        most RECHECK_EVERY)."""
        assert self._loop is not None
        starting: list[tuple[Lane, EventKey]] = []  # lanes, each with its head event
        with self._lock:
            self._kicked = False
            if self._stopping:
                return
            now = self.clock()
            while self._due and self._due[0][0] <= now and len(self._busy) < self.concurrency:
                when, _, lane = heapq.heappop(self._due)
                if self._scheduled.get(lane) != when:
                    continue  # superseded by an earlier entry
                del self._scheduled[lane]
                webhook_id = lane[0]
                if self._in_flight[webhook_id] >= self.per_endpoint:
                    self._held.setdefault(webhook_id, deque()).append(lane)
                    continue
                queue = self._lanes.get(lane)
                if not queue:
                    continue  # nothing left to send (forgotten meanwhile)
                self._busy.add(lane)
                self._in_flight[webhook_id] += 1
                starting.append((lane, (self._organizations[webhook_id], webhook_id, queue[0])))
            wait = RECHECK_EVERY
            if self._due and len(self._busy) < self.concurrency:  # else: when one ends
                wait = max(0.001, min(wait, (self._due[0][0] - now) / 1000))
            # While events keep coming, the loop looks every POLL_EVERY instead of being
            # woken for each (a wake-up per create cost more than the look); it goes back
            # to being woken once nothing came for POLL_FOR.
            if self._busy:
                self._active_until = self._loop.time() + POLL_FOR
            self._polling = self._loop.time() < self._active_until
            if self._polling:
                wait = min(wait, POLL_EVERY)
        # The timer is moved only to look sooner (or once it went off): kicks, one per
        # create under load, then cost no timer of their own.
        at = self._loop.time() + wait
        if self._timer is None or at < self._timer_at or self._timer_at <= self._loop.time():
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self._loop.call_at(at, self._dispatch, context=contextvars.Context())
        if starting:
            self._start(starting)

    def _start(self, starting: list[tuple[Lane, EventKey]]) -> None:
        """On the loop: an attempt on each lane of `starting` (each with its head event),
        the webhooks and events to send read in one store call for all (one lock, or one
        round trip, instead of one each: the lock is the API's writers' too, and each wait
        for it handed the interpreter over); on a thread if reads wait for a database."""
        assert self._loop is not None
        if self.store.reads_wait:
            reading = self._blocking(functools.partial(self._read, starting))
            self._loop.create_task(self._run_all(starting, reading), context=contextvars.Context())
        else:
            found = self._read(starting)
            if found is not None:
                self._run_each(starting, found)

    def _read(self, starting: list[tuple[Lane, EventKey]]) -> list[Found] | None:
        """What the attempts on `starting` send; None if the read failed (their lanes are
        then looked at again after the first retry's delay)."""
        try:
            return self.store.get_webhooks_with_events([key for _, key in starting])
        except Exception:
            log.exception(
                "reading %d webhook events to deliver failed; they are attempted again soon",
                len(starting),
            )
            retry = self.clock() + int(self.policy.first_delay * 1000)
            for lane, _ in starting:
                self._finish(lane, retry)
            return None

    async def _run_all(
        self, starting: list[tuple[Lane, EventKey]], reading: Awaitable[list[Found] | None]
    ) -> None:
        found = await reading
        if found is not None:
            self._run_each(starting, found)

    def _run_each(self, starting: list[tuple[Lane, EventKey]], found: list[Found]) -> None:
        assert self._loop is not None
        for (lane, _), (hook, event) in zip(starting, found, strict=True):
            self._loop.create_task(self._run(lane, hook, event), context=contextvars.Context())

    async def _run(self, lane: Lane, hook: Webhook | None, event: WebhookEvent | None) -> None:
        """One attempt on the lane (of `event` to `hook`, as read for it): recorded by the
        recorder, which then finishes the lane; or none, and the lane is looked at again
        when `_attempt` says."""
        try:
            outcome = await self._attempt(lane, hook, event)
        except Exception:
            log.exception("webhook %s: delivery failed unexpectedly; retrying soon", lane[0])
            outcome = self.clock() + int(self.policy.first_delay * 1000)
        if isinstance(outcome, _Sent):
            # Without the lock: each wait for it while the API's threads hold it handed the
            # interpreter over. The recorder is woken only from its wait for work (while
            # attempts are under way it looks by itself): a wake-up per attempt cost the
            # loop a sixth of its time. It says it waits before it looks a last time.
            self._unrecorded.append(outcome)
            if self._recorder_idle:
                with self._lock:
                    self._recordable.notify()
        else:
            self._finish(lane, outcome)

    def _finish(self, lane: Lane, when: int | None, kick: bool = True) -> bool:
        """The lane's attempt is over (recorded): look at it again by `when` (None: not until
        something new is queued in it, or its webhook is switched on), and free its slot.
        Whether the loop has lanes to look at (it is kicked for them, if `kick`): one
        scheduled here, or lanes waiting for the slot freed."""
        with self._lock:
            webhook_id = lane[0]
            self._busy.discard(lane)
            self._in_flight[webhook_id] -= 1
            parked = lane in self._parked.get(webhook_id, ())
            if when is None and self._lanes.get(lane) and not parked:
                when = self.clock()  # queued in it while it was busy
            scheduled = False
            if not self._stopping:
                if when is not None:
                    self._schedule(lane, when)
                    scheduled = True
                held = self._held.get(webhook_id)
                if held:  # a slot of this webhook is free: the next lane waiting for one
                    self._schedule(held.popleft(), self.clock())
                    scheduled = True
            self._wake.notify_all()
            scheduled = scheduled or bool(self._due)
            if kick and scheduled:
                self._kick()
            return scheduled

    async def _attempt(
        self, lane: Lane, hook: Webhook | None, event: WebhookEvent | None
    ) -> _Sent | int | None:
        """Attempt the lane's head event (`event`, of `hook`: None if either no longer
        exists) if it is due: the attempt to record; or when to look at the lane again
        (None: not until something new is queued in it, or its webhook is switched on)."""
        webhook_id = lane[0]
        if hook is None:
            self._forget(webhook_id)
            return None
        if event is None:
            return self._done(lane)
        organization_id = hook["organization_id"]
        if event["status"] != "pending":
            return self._done(lane)
        if not hook["is_active"]:
            with self._lock:
                self._parked.setdefault(webhook_id, set()).add(lane)
            return None
        if test_clocks.frozen(self.clock, organization_id):
            with self._lock:
                self._frozen.setdefault(organization_id, set()).add(lane)
            return None
        with test_clocks.working_for(organization_id):
            if event["next_attempt_at"] > self.clock():
                return int(event["next_attempt_at"])
            sent = await self._send(lane, hook, event)
        if isinstance(sent, _Sent):
            return sent
        return int(sent["next_attempt_at"])  # put off (a sandbox fault): pending until then

    async def _send(self, lane: Lane, hook: Webhook, event: WebhookEvent) -> _Sent | WebhookEvent:
        """Attempt `event` (pending, due) once: the attempt, to record; or, when a sandbox
        fault puts it off, the event as it is stored now (not attempted)."""
        organization_id, event_id = hook["organization_id"], event["event_id"]
        await self._durable()  # never announce a change that is not on disk
        rule = (
            self.faults.draw(organization_id, outbound="webhook_delivery")
            if self.faults and event_id not in self._marks  # put off once, then delivered
            else None
        )
        if rule is not None and rule.action in ("delay", "reorder"):
            return await self._blocking(functools.partial(self._put_off, hook, event, rule))
        mark = rule.fault_id if rule is not None else self._marks.pop(event_id, None)
        attempt = await self._post(hook, event, mark)
        if rule is not None:  # `duplicate`: the receiver gets it twice
            await self._post(hook, event, mark)
        return _Sent(lane, hook, event_id, attempt)

    def _deliver(self, hook: Webhook, event: WebhookEvent) -> WebhookEvent:
        """Attempt `event` (pending, due) once, here and now (on the loop: this thread waits
        for it), and record the attempt; the event after it (for `run_due`)."""
        assert self._loop is not None, "the deliverer is not started"
        sending = self._send((hook["id"], event["call_id"]), hook, event)
        sent = asyncio.run_coroutine_threadsafe(sending, self._loop).result()
        if not isinstance(sent, _Sent):
            return sent
        recorded = self.store.change_webhook_event(*self._change(sent))
        self._recorded(sent, recorded)
        return recorded

    async def _durable(self) -> None:
        """Return once every event told so far is on disk: at once if a wait for the disk
        that began after the last was told has ended; else with every attempt that starts
        in the same turn of the loop, after one wait (on a thread)."""
        if self._told <= self._durable_told:  # two ints, read at once: no lock needed
            return
        if self._check is None:
            assert self._loop is not None
            self._check = self._loop.create_future()
            self._loop.call_soon(self._start_check, context=contextvars.Context())
        await self._check

    def _start_check(self) -> None:
        """On the loop: one wait for the disk on a thread, for the attempts that asked."""
        assert self._check is not None
        assert self._loop is not None
        check, self._check = self._check, None
        with self._lock:
            told = self._told

        def ended(done: asyncio.Future[None]) -> None:
            if done.exception() is not None:
                check.set_exception(done.exception())  # type: ignore[arg-type]
                return
            with self._lock:
                self._durable_told = max(self._durable_told, told)
            check.set_result(None)

        waiting = self._loop.run_in_executor(self._threads, self.store.wait_durable)
        waiting.add_done_callback(ended)

    async def _blocking(self, call: Callable[[], T]) -> T:
        """`call()` on a thread of the pool, in a copy of this task's context (the test
        clock's organization it works for)."""
        assert self._loop is not None
        context = contextvars.copy_context()
        return await self._loop.run_in_executor(self._threads, context.run, call)

    # -- recording attempts --------------------------------------------------------------------
    def _keep_records(self) -> None:
        """The recorder: records the attempts that ended, those that ended while it recorded
        the last ones together, and finishes their lanes; until stop."""
        _name_thread()
        while True:
            with self._lock:
                gathered = False
                while not (
                    self._unrecorded
                    and (gathered or self._closing or len(self._unrecorded) >= len(self._busy))
                ):
                    if self._closing and not self._unrecorded:
                        return
                    if self._busy:
                        # Attempts under way end in a moment: those that end meanwhile are
                        # recorded together (one journal record, one wait for the disk),
                        # looked for every GATHER_FOR without waking this thread for each.
                        self._recordable.wait(GATHER_FOR)
                        gathered = bool(self._unrecorded)
                    else:
                        self._recorder_idle = True  # woken by the next attempt to end
                        if not self._unrecorded:  # (one may have ended before it said so)
                            self._recordable.wait()
                        self._recorder_idle = False
                batch = [self._unrecorded.popleft() for _ in range(len(self._unrecorded))]
            self._record_batch(batch)

    def _record_batch(self, batch: list[_Sent]) -> None:
        try:
            recorded = self.store.change_webhook_events([self._change(sent) for sent in batch])
        except Exception:
            log.exception(
                "recording %d webhook delivery attempts failed; their events are attempted "
                "again soon",
                len(batch),
            )
            retry = self.clock() + int(self.policy.first_delay * 1000)
            for sent in batch:
                self._finish(sent.lane, retry)
            return
        # Per attempt: whether its event needs nothing more (the lane's next is due now), and
        # when to look at its lane again.
        outcomes: list[tuple[_Sent, bool, int]] = []
        for sent, event in zip(batch, recorded, strict=True):
            if event is None:  # deleted meanwhile (with its webhook, or pruned)
                outcomes.append((sent, True, self.clock()))
                continue
            try:
                with test_clocks.working_for(sent.hook["organization_id"]):
                    self._recorded(sent, event)
                    if event["status"] == "pending":
                        outcomes.append((sent, False, int(event["next_attempt_at"])))
                    else:
                        outcomes.append((sent, True, self.clock()))
            except Exception:
                log.exception("webhook %s: delivery failed unexpectedly; retrying soon", sent.lane)
                outcomes.append((sent, False, self.clock() + int(self.policy.first_delay * 1000)))
        # The lanes finished under one hold of the lock, not one each: each wait for it while
        # the API's threads hold it hands the interpreter over.
        scheduled = False
        with self._lock:
            for sent, done, when in outcomes:
                after = self._done(sent.lane, when) if done else when
                scheduled = self._finish(sent.lane, after, kick=False) or scheduled
            if scheduled:
                self._kick()  # once for the whole batch

    def _change(self, sent: _Sent) -> EventChange:
        """The change of the event that records `sent`'s attempt."""
        attempt, policy = sent.attempt, self.policy
        return (
            sent.hook["organization_id"],
            sent.hook["id"],
            sent.event_id,
            lambda stored: webhooks.attempted(stored, attempt, policy),
        )

    def _recorded(self, sent: _Sent, event: WebhookEvent) -> None:
        """What follows an attempt once recorded (`event`: the event after it): the webhook's
        failing streak, the metrics, the events held back for it, a warning if given up."""
        hook, attempt = sent.hook, sent.attempt
        organization_id, webhook_id = hook["organization_id"], hook["id"]
        if webhooks.after_attempt(hook, attempt, self.policy) is not hook:
            self.store.change_webhook(
                organization_id,
                webhook_id,
                lambda stored: webhooks.after_attempt(stored, attempt, self.policy),
            )
        if event["status"] == "delivered" and self.on_delivered is not None:
            self.on_delivered(max(0.0, (self.clock() - event["retry_from"]) / 1000))
        if event["status"] == "delivered" and self._held_back:
            self._let_go(organization_id, event["call_id"])
        if event["status"] == "failed":
            log.warning(
                "webhook %s: gave up on event %s (%s) after %d attempts (last: %s)",
                webhook_id, sent.event_id, event["event"], event["attempt_count"],
                attempt.problem,
            )  # fmt: skip

    # -- sandbox faults (domain/faults.py) ---------------------------------------------------
    def _put_off(self, hook: Webhook, event: WebhookEvent, rule: Fault) -> WebhookEvent:
        """Deliver `event` later, as `rule` says: `delay` by its latency, `reorder` once
        another call's event of the organization has been delivered (at the latest when the
        first retry would be due)."""
        now = self.clock()
        if rule.action == "delay":
            assert rule.latency_ms is not None
            until = now + rule.latency_ms
        else:
            until = now + int(self.policy.first_delay * 1000)
            with self._lock:
                held = self._held_back.setdefault(hook["organization_id"], [])
                held.append((hook["id"], event["event_id"], event["call_id"]))
        self._marks[event["event_id"]] = rule.fault_id
        return self.store.change_webhook_event(
            hook["organization_id"],
            hook["id"],
            event["event_id"],
            lambda stored: {**stored, "next_attempt_at": until},
        )

    def _let_go(self, organization_id: str, delivered_call_id: str) -> None:
        """Another call's event was delivered: the events held back for that are due now."""
        with self._lock:
            held = self._held_back.get(organization_id, [])
            going = [h for h in held if h[2] != delivered_call_id]
            self._held_back[organization_id] = [h for h in held if h[2] == delivered_call_id]
        now = self.clock()
        for webhook_id, event_id, call_id in going:
            try:
                self.store.change_webhook_event(
                    organization_id,
                    webhook_id,
                    event_id,
                    lambda stored: {**stored, "next_attempt_at": now},
                )
            except (WebhookNotFound, WebhookEventNotFound):
                continue
            with self._lock:
                self._schedule((webhook_id, call_id), now)
                self._kick()

    # -- on a test clock (services/test_clocks.py) ------------------------------------------
    def next_due(self, organization_id: str) -> int | None:
        """When the next attempt of the organization's pending events falls due (Unix ms)."""
        return min(
            (event["next_attempt_at"] for event in self._heads(organization_id)), default=None
        )

    def run_due(self, organization_id: str, now: int) -> int:
        """Attempt, here and now, the first pending event of each of the organization's
        lanes that is due by `now` (each call's events in order at each webhook); how many
        attempts were made. The organization's settled events past their retention by
        `now` are pruned first."""
        self.store.prune_webhook_events(now - int(self.retention * 1000), organization_id)
        attempted = 0
        for event in self._heads(organization_id):
            if event["next_attempt_at"] > now:
                continue
            try:
                hook = self.store.get_webhook(organization_id, event["webhook_id"])
            except WebhookNotFound:
                continue
            if hook["is_active"]:
                self._deliver(hook, event)
                attempted += 1
        return attempted

    def resumed(self, organization_id: str) -> None:
        """The organization is back on the real time: its lanes are looked at now."""
        with self._lock:
            for lane in self._frozen.pop(organization_id, set()):
                self._schedule(lane, self.clock())
            self._kick()

    def _heads(self, organization_id: str) -> list[WebhookEvent]:
        """The organization's first pending event of each lane, in the order recorded."""
        heads: dict[Lane, WebhookEvent] = {}
        for event in self.store.pending_webhook_events():
            if event["organization_id"] == organization_id:
                heads.setdefault((event["webhook_id"], event["call_id"]), event)
        return list(heads.values())

    def _done(self, lane: Lane, now: int | None = None) -> int | None:
        """The lane's head event needs nothing more: on to the next one, now (`now`, if
        the caller read the time already); None if there is none."""
        with self._lock:
            queue = self._lanes.get(lane)
            if queue and (lane[0], queue[0]) in self._again:
                self._again.discard((lane[0], queue[0]))  # read it again: pending once more
                return self.clock() if now is None else now
            if queue:
                self._queued.discard((lane[0], queue.popleft()))
            if not queue:
                self._lanes.pop(lane, None)
                self._partitions.pop(lane, None)
                return None
        return self.clock() if now is None else now

    def _unpark(self) -> None:
        """Look at the switched-off webhooks once each; the lanes of those switched on again
        are due now."""
        with self._lock:
            parked = [(self._organizations[hook], hook) for hook in self._parked]
        for organization_id, webhook_id in parked:
            try:
                if not self.store.get_webhook(organization_id, webhook_id)["is_active"]:
                    continue
            except WebhookNotFound:
                self._forget(webhook_id)
                continue
            with self._lock:
                for lane in self._parked.pop(webhook_id, set()):
                    self._schedule(lane, self.clock())
                self._kick()

    def _forget(self, webhook_id: str) -> None:
        """The webhook was deleted (and its events with it)."""
        with self._lock:
            self._parked.pop(webhook_id, None)
            for lane in [lane for lane in self._lanes if lane[0] == webhook_id]:
                for event_id in self._lanes.pop(lane):
                    self._queued.discard((webhook_id, event_id))
                    self._again.discard((webhook_id, event_id))
                self._partitions.pop(lane, None)
            client = self._clients.pop(webhook_id, None)
        self._on_loop(self._http.forget, webhook_id)
        if client is not None:
            client.close()

    def _prune(self) -> None:
        try:
            pruned = self.store.prune_webhook_events(self.clock() - int(self.retention * 1000))
        except Exception:
            log.exception("pruning old webhook events failed; trying again later")
            return
        if pruned:
            log.info("pruned %d delivered or failed webhook events past their retention", pruned)

    def _keep_up(self) -> None:
        """Until stop: every RECHECK_EVERY, the switched-off webhooks looked at again; every
        PRUNE_EVERY (and at the start), the settled events past their retention pruned."""
        _name_thread()
        prune = time.monotonic()
        while True:
            if time.monotonic() >= prune:
                prune = time.monotonic() + PRUNE_EVERY
                self._prune()
            if self._stopped.wait(RECHECK_EVERY):
                return
            if self._parked:
                self._unpark()

    # -- one attempt ---------------------------------------------------------------------------
    async def _post(self, hook: Webhook, event: WebhookEvent, fault: str | None = None) -> Attempt:
        """POST `event` to `hook` once (marked with the sandbox `fault` that touched it)."""
        body = orjson.dumps(event["payload"])
        sent = self.clock()
        started = time.monotonic()

        def outcome(status_code: int | None = None, error: str | None = None) -> Attempt:
            latency = int((time.monotonic() - started) * 1000)
            return Attempt(at=sent, latency_ms=latency, status_code=status_code, error=error)

        try:
            # Checked at each attempt, connecting to the very address checked: a name that
            # resolves elsewhere since registration (DNS rebinding) gets nowhere. A URL
            # naming an address is checked here (nothing to look up); one naming a host is
            # resolved on a thread (the lookup may ask a DNS server).
            url = hook["url"]
            target = self._targets.get(url)
            if target is None and _names_address(url):
                # An address is where it is: the check's answer for its URL is kept (the
                # same each time; a refusal is not kept, and raises here each time).
                target = self.egress.target(url)
                if len(self._targets) >= MAX_TARGETS_KEPT:
                    self._targets.clear()
                self._targets[url] = target
            elif target is None:
                target = await self._blocking(functools.partial(self.egress.target, url))
            # Every value is this server's own (event names, hex signatures, fault ids).
            headers = {
                "Content-Type": "application/json",
                "X-Calls-Event": event["event"],
                **signature_headers(hook["secret"], body, sent // 1000),
                **({FAULT_HEADER: fault} if fault else {}),
            }
            if self.on_client is None:
                lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                deadline = time.monotonic() + self.timeout
                status = await self._http.post(hook["id"], target, body, lines, deadline)
            else:  # traced: httpx, instrumented, makes the client span (on a thread)
                post = functools.partial(self._post_traced, hook["id"], target, body, headers)
                status = await self._blocking(post)
        except UnsafeTarget as e:
            return outcome(error=e.error)
        except (httpx.TimeoutException, TimeoutError):
            return outcome(error=f"no answer within {self.timeout:g} s")
        except (httpx.TransportError, OSError, ProtocolError) as e:
            return outcome(error=f"{type(e).__name__}: {e}"[:300])
        return outcome(status_code=status)

    def _post_traced(self, webhook_id: str, target: Target, body: bytes, headers: Any) -> int:
        response = self._client(webhook_id).post(
            target.url,
            content=body,
            headers={**headers, "Host": target.authority},
            extensions={"sni_hostname": target.host},
        )
        return response.status_code

    def _client(self, webhook_id: str) -> httpx.Client:
        with self._lock:
            client = self._clients.get(webhook_id)
            if client is None:
                # As many connections as the webhook may have attempts under way.
                limits = httpx.Limits(
                    max_connections=self.per_endpoint, max_keepalive_connections=self.per_endpoint
                )
                client = self._clients[webhook_id] = httpx.Client(
                    timeout=self.timeout, follow_redirects=False, limits=limits
                )
                if self.on_client is not None:
                    self.on_client(client)
            return client


def _name_thread() -> None:
    """Give the current thread its Python name in the operating system too (Linux: `top -H`,
    `ps -L` and bench/webhooks.py tell the deliverer's threads apart from the API's)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        name = threading.current_thread().name.encode()[:15]  # the kernel keeps 15 bytes
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # 15: PR_SET_NAME


def _names_address(url: str) -> bool:
    """Whether `url`'s host is an IP address (in its usual notation), not a name to look up."""
    try:
        ipaddress.ip_address(urlsplit(url).hostname or "")
    except ValueError:
        return False
    return True
