"""Delivery of call status events to the organization's webhooks.

Every committed change of a call that changes its status is turned, under the store's
lock and so in commit order, into one delivery per active webhook of the call's
organization, queued for that webhook. One worker thread per webhook POSTs its queue in
order (so events of a call arrive in order), each only once the change is on disk,
signed like dialer jobs (integrations/signing.py, under the webhook's own secret),
sent only to addresses the egress policy allows (integrations/egress.py), retried with
exponential backoff on failure, over one client that keeps its connections. The request
that made the change never waits for any of it. Deliveries still queued when the server
stops are given a few seconds, then dropped; how many, and for which webhooks, is logged
(and so is a delivery under way then, which makes no further attempt).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from calls_server.domain.calls import Call
from calls_server.domain.webhooks import status_event
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.egress import EgressPolicy, UnsafeTarget
from calls_server.integrations.signing import signature_headers
from calls_server.storage import Store

log = logging.getLogger("calls_server.webhooks")


@dataclass(frozen=True)
class Delivery:
    url: str
    secret: str
    event: str
    body: bytes


class WebhookDeliverer:
    """Listens to the store's call changes and delivers status events."""

    def __init__(
        self,
        store: Store,
        egress: EgressPolicy,
        attempts: int = 5,
        backoff: float = 0.5,
        timeout: float = 5.0,
        clock: Clock = wall_clock,
    ) -> None:
        self.store = store
        self.egress = egress
        # One client for every delivery: connections are kept and reused. Redirects are
        # not followed (a receiver must not be able to send the server elsewhere).
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)
        self.clock = clock
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._queues: dict[str, queue.Queue[Delivery | None]] = {}
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> None:
        self.store.on_call_change(self.on_call_change)

    def stop(self, grace: float = 5.0) -> None:
        """Let the workers finish their queues for up to `grace` seconds; drop (and log)
        what is still queued then. A delivery under way then makes no further attempt."""
        with self._lock:
            for pending in self._queues.values():
                pending.put(None)
            workers = list(self._workers)
        deadline = time.monotonic() + grace
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._stopping.set()
        dropped: dict[str, int] = {}
        for hook, pending in self._queues.items():
            if count := _drain(pending):
                dropped[hook] = count
            pending.put(None)  # a worker still busy ends after its current delivery
        self._http.close()
        if dropped:
            log.warning(
                "stopping: dropped %d undelivered webhook events (%s)",
                sum(dropped.values()),
                ", ".join(f"{hook}: {count}" for hook, count in sorted(dropped.items())),
            )

    def on_call_change(self, old: Call | None, new: Call | None) -> None:
        event = status_event(old, new)
        if event is None or self._stopping.is_set():
            return
        call: Call = new or old  # type: ignore[assignment]
        for hook in self.store.webhooks(call["organization_id"]):
            if not hook["is_active"]:
                continue
            payload = {
                "event": event,
                "event_id": str(uuid.uuid4()),
                "timestamp": self.clock(),
                "organization_id": call["organization_id"],
                "webhook_id": hook["id"],
                "call": call,
            }
            body = json.dumps(payload, separators=(",", ":")).encode()
            self._queue_for(hook["id"]).put(Delivery(hook["url"], hook["secret"], event, body))

    def _queue_for(self, webhook_id: str) -> queue.Queue[Delivery | None]:
        with self._lock:
            pending = self._queues.get(webhook_id)
            if pending is None:
                pending = self._queues[webhook_id] = queue.Queue()
                worker = threading.Thread(
                    target=self._work, args=(pending,), name=f"webhook-{webhook_id}", daemon=True
                )
                self._workers.append(worker)
                worker.start()
            return pending

    def _work(self, pending: queue.Queue[Delivery | None]) -> None:
        while (delivery := pending.get()) is not None:
            try:
                self.store.wait_durable()
            except Exception:
                log.error("not delivering %s: the change is not on disk", delivery.event)
                continue
            self._deliver(delivery)

    def _deliver(self, delivery: Delivery) -> None:
        for attempt in range(1, self.attempts + 1):
            if self._stopping.is_set():  # the client is closed, or about to be
                log.warning(
                    "stopping: dropped the delivery of %s to %s after %d attempts",
                    delivery.event, delivery.url, attempt - 1,
                )  # fmt: skip
                return
            try:
                # Checked at each attempt, connecting to the very address checked: a name
                # that resolves elsewhere since registration (DNS rebinding) gets nowhere.
                target = self.egress.target(delivery.url)
                headers = {
                    "Content-Type": "application/json",
                    "Host": target.host,
                    "X-Calls-Event": delivery.event,
                    **signature_headers(delivery.secret, delivery.body, self.clock() // 1000),
                }
                response = self._http.post(
                    target.url,
                    content=delivery.body,
                    headers=headers,
                    extensions={"sni_hostname": target.host},
                )
                if response.is_success:
                    return
                problem: Any = f"HTTP {response.status_code}"
            except UnsafeTarget as e:
                problem = e.error
            except httpx.TransportError as e:
                problem = type(e).__name__
            except RuntimeError:
                if not self._stopping.is_set():
                    raise
                problem = "stopping"  # stop() closed the client under this attempt
            if attempt < self.attempts:
                self._stopping.wait(self.backoff * 2 ** (attempt - 1))  # cut short by stop()
        log.warning(
            "webhook delivery of %s to %s failed after %d attempts (%s)",
            delivery.event, delivery.url, self.attempts, problem,
        )  # fmt: skip


def _drain(pending: queue.Queue[Delivery | None]) -> int:
    """Empty `pending` and count the deliveries it held (not the stop markers)."""
    count = 0
    while True:
        try:
            item = pending.get_nowait()
        except queue.Empty:
            return count
        if item is not None:
            count += 1
