"""Delivery of call status events to the organization's webhooks, from the store's outbox.

The store records the events a change of a call owes (one per active webhook) in the same
atomic write as the change (`Store.record_webhook_events`, fed by `domain.webhooks
.owed_events`), so an event exists exactly when its change does, across crashes. This
module delivers them from there, at least once and with the same `event_id` on every
attempt:

- events wait in lanes, one per (webhook, call): a lane sends one event at a time, in the
  order recorded, so each call's events arrive at each webhook in order; a lane whose head
  event waits for its retry waits as a whole, and only that call's events wait with it;
- lanes of one webhook run side by side, at most `per_endpoint` at once (its own pool of
  kept-alive connections), and a fixed pool of `concurrency` worker threads serves every
  webhook: a hanging endpoint holds at most `per_endpoint` workers, each for at most
  `timeout`, and never a thread of its own;
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
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import httpx

from calls_server.domain import webhooks
from calls_server.domain.calls import Call
from calls_server.domain.errors import WebhookEventNotFound, WebhookNotFound
from calls_server.domain.faults import FAULT_HEADER, Fault, FaultRules
from calls_server.domain.webhooks import Attempt, RetryPolicy, Webhook, WebhookEvent
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.egress import EgressPolicy, UnsafeTarget
from calls_server.integrations.signing import signature_headers
from calls_server.services import test_clocks
from calls_server.storage.interface import (
    Durability,
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

Lane = tuple[str, str]  # (webhook id, call id)


class WebhookDeliverer:
    """Records the events call changes owe, and delivers them from the store.

    `on_delivered`, if given, is told each delivery's lag (seconds from the event's
    creation, or its redelivery request, to its delivery being recorded), for the metrics.
    `on_client`, if given, is called with each endpoint's HTTP client when it is made,
    before its first request (tracing instruments it: calls_server/tracing.py)."""

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
        self.per_endpoint = per_endpoint
        self.timeout = timeout
        self.retention = retention
        self.clock = clock
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="webhook-delivery")
        self._wake = threading.Condition()
        # Per lane: the event ids it still has to send, in order; the webhook's organization.
        self._lanes: dict[Lane, deque[str]] = {}
        self._organizations: dict[str, str] = {}
        self._queued: set[tuple[str, str]] = set()  # (webhook, event id) in those lanes
        self._due: list[tuple[int, int, Lane]] = []  # heap of (when, tie, lane)
        self._scheduled: dict[Lane, int] = {}  # lane -> when it is due (its heap entry)
        self._busy: set[Lane] = set()  # lanes with an attempt under way
        self._in_flight: Counter[str] = Counter()  # webhook -> its lanes under way
        self._held: dict[str, deque[Lane]] = {}  # webhook -> due lanes over its limit
        self._parked: dict[str, set[Lane]] = {}  # webhook switched off -> its waiting lanes
        # Organization on a frozen test clock -> its lanes, left to `run_due`.
        self._frozen: dict[str, set[Lane]] = {}
        # Lane -> the partition its call's events are in (as the store told; None: one process).
        self._partitions: dict[Lane, int | None] = {}
        self._tie = itertools.count()
        self._clients: dict[str, httpx.Client] = {}
        self._stopping = False
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="webhook-dispatch", daemon=True
        )

    # -- the store's side --------------------------------------------------------------------
    def start(self) -> None:
        """Record events from now on and start delivering those the store tells of (every
        pending one, while this process is the one of those sharing the store that
        delivers)."""
        self._dispatcher.start()
        self.store.record_webhook_events(self._owed, self._pending, self._forget_partitions)

    def _owed(
        self, old: Call | None, new: Call | None, hooks: list[Webhook], assigned: list[str]
    ) -> list[WebhookEvent]:
        return webhooks.owed_events(old, new, hooks, assigned, self.clock(), str(uuid.uuid4()))

    def _pending(self, events: list[WebhookEvent]) -> None:
        with self._wake:
            for event in events:
                webhook_id, event_id = event["webhook_id"], event["event_id"]
                lane = (webhook_id, event["call_id"])
                # Already queued: recorded while start() read the pending ones, or due sooner.
                if (webhook_id, event_id) not in self._queued:
                    self._queued.add((webhook_id, event_id))
                    self._lanes.setdefault(lane, deque()).append(event_id)
                    self._organizations[webhook_id] = event["organization_id"]
                    self._partitions[lane] = event.get("partition")
                self._schedule(lane, self.clock())
            self._wake.notify()

    def _forget_partitions(self, partitions: frozenset[int] | None) -> None:
        """Another process delivers the events of `partitions` (None: of all) from now on:
        drop their lanes (the events stay pending in the store for that process), and
        return once the attempts under way on them are recorded (at once for all: this
        process lost its connection, and its part with it)."""
        with self._wake:
            if partitions is None:
                self._lanes.clear()
                self._queued.clear()
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
        with self._wake:
            return len(self._queued), len(self._busy)

    def stop(self) -> None:
        """Finish the attempts under way (each within the timeout) and stop; every event
        still pending stays in the store for the next start."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._dispatcher.is_alive():
            self._dispatcher.join()
        self._pool.shutdown(wait=True)
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

    # -- dispatching ---------------------------------------------------------------------------
    def _schedule(self, lane: Lane, when: int) -> None:
        """Have `lane` looked at by `when` (Unix ms); the caller holds `_wake`."""
        if lane in self._busy:
            return  # looked at again when its attempt ends
        if lane in self._scheduled and self._scheduled[lane] <= when:
            return
        self._scheduled[lane] = when
        self._parked.get(lane[0], set()).discard(lane)
        heapq.heappush(self._due, (when, next(self._tie), lane))

    def _dispatch(self) -> None:
        recheck = prune = time.monotonic()
        with self._wake:
            while not self._stopping:
                now = self.clock()
                while self._due and self._due[0][0] <= now:
                    when, _, lane = heapq.heappop(self._due)
                    if self._scheduled.get(lane) != when:
                        continue  # superseded by an earlier entry
                    del self._scheduled[lane]
                    webhook_id = lane[0]
                    if self._in_flight[webhook_id] >= self.per_endpoint:
                        self._held.setdefault(webhook_id, deque()).append(lane)
                        continue
                    self._busy.add(lane)
                    self._in_flight[webhook_id] += 1
                    self._pool.submit(self._work, lane)
                if time.monotonic() >= recheck:
                    recheck = time.monotonic() + RECHECK_EVERY
                    if self._parked:
                        self._pool.submit(self._unpark)
                if time.monotonic() >= prune:
                    prune = time.monotonic() + PRUNE_EVERY
                    self._pool.submit(self._prune)
                wait = RECHECK_EVERY if not self._due else (self._due[0][0] - now) / 1000
                self._wake.wait(max(0.001, min(wait, RECHECK_EVERY)))

    def _work(self, lane: Lane) -> None:
        when: int | None = None
        try:
            when = self._next(lane)
        except Exception:
            log.exception("webhook %s: delivery failed unexpectedly; retrying soon", lane[0])
            when = self.clock() + int(self.policy.first_delay * 1000)
        finally:
            with self._wake:
                webhook_id = lane[0]
                self._busy.discard(lane)
                self._in_flight[webhook_id] -= 1
                parked = lane in self._parked.get(webhook_id, ())
                if when is None and self._lanes.get(lane) and not parked:
                    when = self.clock()  # queued in it while it was busy
                if not self._stopping:
                    if when is not None:
                        self._schedule(lane, when)
                    held = self._held.get(webhook_id)
                    if held:  # a slot of this webhook is free: the next lane waiting for one
                        self._schedule(held.popleft(), self.clock())
                    self._wake.notify()

    def _next(self, lane: Lane) -> int | None:
        """Attempt the lane's head event if it is due; when to look at the lane again (None:
        not until something new is queued in it, or its webhook is switched on)."""
        webhook_id = lane[0]
        with self._wake:
            queue = self._lanes.get(lane)
            if not queue:
                return None
            organization_id, event_id = self._organizations[webhook_id], queue[0]
        try:
            hook = self.store.get_webhook(organization_id, webhook_id)
            event = self.store.get_webhook_event(organization_id, webhook_id, event_id)
        except WebhookNotFound:
            self._forget(webhook_id)
            return None
        except WebhookEventNotFound:
            return self._done(lane)
        if event["status"] != "pending":
            return self._done(lane)
        if not hook["is_active"]:
            with self._wake:
                self._parked.setdefault(webhook_id, set()).add(lane)
            return None
        if test_clocks.frozen(self.clock, organization_id):
            with self._wake:
                self._frozen.setdefault(organization_id, set()).add(lane)
            return None
        with test_clocks.working_for(organization_id):
            if event["next_attempt_at"] > self.clock():
                return int(event["next_attempt_at"])
            event = self._deliver(hook, event)
        if event["status"] != "pending":
            return self._done(lane)
        return int(event["next_attempt_at"])

    def _deliver(self, hook: Webhook, event: WebhookEvent) -> WebhookEvent:
        """Attempt `event` (pending, due) once and record the attempt; the event after it."""
        organization_id, webhook_id, event_id = (
            hook["organization_id"],
            hook["id"],
            event["event_id"],
        )
        self.store.wait_durable()  # never announce a change that is not on disk
        rule = (
            self.faults.draw(organization_id, outbound="webhook_delivery")
            if self.faults and event_id not in self._marks  # put off once, then delivered
            else None
        )
        if rule is not None and rule.action in ("delay", "reorder"):
            return self._put_off(hook, event, rule)
        mark = rule.fault_id if rule is not None else self._marks.pop(event_id, None)
        attempt = self._post(hook, event, mark)
        if rule is not None:  # `duplicate`: the receiver gets it twice
            self._post(hook, event, mark)
        event = self.store.change_webhook_event(
            organization_id,
            webhook_id,
            event_id,
            lambda stored: webhooks.attempted(stored, attempt, self.policy),
        )
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
                webhook_id, event_id, event["event"], event["attempt_count"], attempt.problem,
            )  # fmt: skip
        return event

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
            with self._wake:
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
        with self._wake:
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
            with self._wake:
                self._schedule((webhook_id, call_id), now)
                self._wake.notify()

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
        with self._wake:
            for lane in self._frozen.pop(organization_id, set()):
                self._schedule(lane, self.clock())
            self._wake.notify()

    def _heads(self, organization_id: str) -> list[WebhookEvent]:
        """The organization's first pending event of each lane, in the order recorded."""
        heads: dict[Lane, WebhookEvent] = {}
        for event in self.store.pending_webhook_events():
            if event["organization_id"] == organization_id:
                heads.setdefault((event["webhook_id"], event["call_id"]), event)
        return list(heads.values())

    def _done(self, lane: Lane) -> int | None:
        """The lane's head event needs nothing more: on to the next one, now."""
        with self._wake:
            queue = self._lanes.get(lane)
            if queue:
                self._queued.discard((lane[0], queue.popleft()))
            if not queue:
                self._lanes.pop(lane, None)
                self._partitions.pop(lane, None)
                return None
        return self.clock()

    def _unpark(self) -> None:
        """Look at the switched-off webhooks once each; the lanes of those switched on again
        are due now."""
        with self._wake:
            parked = [(self._organizations[hook], hook) for hook in self._parked]
        for organization_id, webhook_id in parked:
            try:
                if not self.store.get_webhook(organization_id, webhook_id)["is_active"]:
                    continue
            except WebhookNotFound:
                self._forget(webhook_id)
                continue
            with self._wake:
                for lane in self._parked.pop(webhook_id, set()):
                    self._schedule(lane, self.clock())
                self._wake.notify()

    def _forget(self, webhook_id: str) -> None:
        """The webhook was deleted (and its events with it)."""
        with self._wake:
            self._parked.pop(webhook_id, None)
            for lane in [lane for lane in self._lanes if lane[0] == webhook_id]:
                for event_id in self._lanes.pop(lane):
                    self._queued.discard((webhook_id, event_id))
                self._partitions.pop(lane, None)
            client = self._clients.pop(webhook_id, None)
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

    # -- one attempt ---------------------------------------------------------------------------
    def _post(self, hook: Webhook, event: WebhookEvent, fault: str | None = None) -> Attempt:
        """POST `event` to `hook` once (marked with the sandbox `fault` that touched it)."""
        body = json.dumps(event["payload"], separators=(",", ":")).encode()
        sent = self.clock()
        started = time.monotonic()

        def outcome(status_code: int | None = None, error: str | None = None) -> Attempt:
            latency = int((time.monotonic() - started) * 1000)
            return Attempt(at=sent, latency_ms=latency, status_code=status_code, error=error)

        try:
            # Checked at each attempt, connecting to the very address checked: a name that
            # resolves elsewhere since registration (DNS rebinding) gets nowhere.
            target = self.egress.target(hook["url"])
            headers = {
                "Content-Type": "application/json",
                "Host": target.authority,
                "X-Calls-Event": event["event"],
                **signature_headers(hook["secret"], body, sent // 1000),
                **({FAULT_HEADER: fault} if fault else {}),
            }
            response = self._client(hook["id"]).post(
                target.url,
                content=body,
                headers=headers,
                extensions={"sni_hostname": target.host},
            )
        except UnsafeTarget as e:
            return outcome(error=e.error)
        except httpx.TimeoutException:
            return outcome(error=f"no answer within {self.timeout:g} s")
        except httpx.TransportError as e:
            return outcome(error=f"{type(e).__name__}: {e}"[:300])
        return outcome(status_code=response.status_code)

    def _client(self, webhook_id: str) -> httpx.Client:
        with self._wake:
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
