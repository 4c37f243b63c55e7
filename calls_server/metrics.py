"""Prometheus metrics: what the app counts, and where it is served.

Each app has a registry of its own (`Metrics`), filled by:

- `RequestCounter`, called near the outside of the stack (by calls_server/middleware.py's
  `EveryAnswer`, or alone as the `RequestMetrics` middleware): every HTTP request
  by operation (the spec's `operationId`, which the compiled request path leaves in the
  scope under `OPERATION`) and status code, and its latency; the refusals of the rate
  limits, by the limit that refused (the security check leaves it in the scope);
- the HTTP layer (`HttpLayer`, from calls_server/http_protocol.py's `STATS`): connections
  open, refused at once by reason, cut by reason, and the bytes of answers not yet taken
  by their clients (zero when the app is not served by `calls-server serve`);
- the store (the seconds from a write's start to its durability, the journal's fsync
  included; how many calls and organizations it holds, read at each scrape), the
  scheduler (how late due calls are claimed) and webhook delivery (events waiting, and
  the lag from an event to its delivery), through callbacks: those layers import nothing
  of Prometheus.

They are served at `/metrics` on the API's port behind the admin token (`MetricsEndpoint`),
or, with a `metrics_port`, without authentication on a listener of their own (`Exporter`).

Each server process counts for itself (the registry is in its memory). Were several
processes to serve one port, a scrape of `/metrics` there would see the one that answered
it, and only one could listen on a metrics port. prometheus_client's multiprocess mode
would sum their counters and histograms, but not the values read at each scrape nor the
request counts kept in plain lists here.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import Any, Protocol, runtime_checkable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import anyio.to_thread
from connexion.lifecycle import ConnexionRequest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calls_server import http_protocol
from calls_server.domain.errors import ADMIN_HEADER, Unauthorized
from calls_server.domain.rate_limits import RATE_LIMIT_REFUSED
from calls_server.handlers.security import check_admin_token
from calls_server.request_path.keys import OPERATION
from calls_server.services.webhooks import WebhookDeliverer
from calls_server.storage import Store

METRICS_PATH = "/metrics"
# The `operation` of requests no operation of the spec answered: unknown paths (404),
# methods a path does not have (405), CORS preflights, bodies refused before routing (413).
UNMATCHED = "unmatched"
# The limits of domain/rate_limits.py, as they name themselves (`Buckets.limit`).
RATE_LIMITS = ("key", "organization", "auth_failures")

# Request latency: a GET takes a fraction of a millisecond, a write waits for an fsync
# (milliseconds), a dialed call for the dialer (up to its timeout).
REQUEST_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# A write: the lock, the journal append and its group-committed fsync.
WRITE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
# A due call waits up to the scheduler's interval plus the second its time is rounded to;
# calls that fell due while the server was down are claimed at start, late.
SCHEDULER_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
# Milliseconds when receivers answer; retries wait from 30 s up to an hour, for days.
WEBHOOK_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    3600.0, 21600.0, 86400.0,
)  # fmt: skip


class Metrics:
    """The metrics of one app, in a registry of its own (apps built side by side, as the
    tests build them, count apart)."""

    def __init__(self, store: Store) -> None:
        # Counters' `_created` samples would double the series, for nothing Prometheus uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.rate_limited = Counter(
            "calls_rate_limit_refusals",
            "Requests refused (429) by a rate limit: key, organization or auth_failures",
            ["limit"],
            registry=self.registry,
        )
        for limit in RATE_LIMITS:
            self.rate_limited.labels(limit)  # each at 0 from the start
        self.store_write_seconds = Histogram(
            "calls_store_write_duration_seconds",
            "Seconds from a store write's start until the journal has it on disk (fsync)",
            buckets=WRITE_BUCKETS,
            registry=self.registry,
        )
        self.scheduler_lag_seconds = Histogram(
            "calls_scheduler_lag_seconds",
            "Seconds past its scheduled time at which each due call was claimed for dialing",
            buckets=SCHEDULER_BUCKETS,
            registry=self.registry,
        )
        self.webhook_lag_seconds = Histogram(
            "calls_webhook_delivery_lag_seconds",
            "Seconds from a webhook event's creation (or redelivery request) to its delivery",
            buckets=WEBHOOK_BUCKETS,
            registry=self.registry,
        )
        self.live = _LiveState(store)
        self.registry.register(self.live)
        self.registry.register(HttpLayer(http_protocol.STATS))
        if isinstance(store, TimesWrites):
            store.observe_writes(self.store_write_seconds.observe)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Everything, in the format `accept` asks for (Prometheus's text by default)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class RequestStats(Collector):
    """HTTP requests by operation and status: how many, and how long they took.

    Counted in plain lists, on the event loop (the only thread requests are answered on),
    and turned into a counter and a histogram at each scrape, from copies: prometheus_client's
    Counter and Histogram take a lock for each of their three increments, which in a server
    cost about 2.5 us a request, several percent of a GET.
    """

    def __init__(self) -> None:
        self.bounds = REQUEST_BUCKETS
        self.le = [*(floatToGoString(b) for b in self.bounds), "+Inf"]  # type: ignore[no-untyped-call]
        # (operation, status) -> [requests per bucket (not cumulative; +Inf last), seconds]
        self.stats: dict[tuple[str, int], list[float]] = {}

    def observe(self, operation: str, status: int, seconds: float) -> None:
        """Count a request of `operation` answered with `status` after `seconds` (called on
        the event loop only: these increments are not atomic across threads)."""
        stats = self.stats.get((operation, status))
        if stats is None:
            stats = self.stats[(operation, status)] = [0.0] * (len(self.bounds) + 2)
        stats[bisect_left(self.bounds, seconds)] += 1  # the first bucket with seconds <= le
        stats[-1] += seconds

    def collect(self) -> Iterable[Metric]:
        copies = [(key, list(stats)) for key, stats in list(self.stats.items())]
        requests = CounterMetricFamily(
            "calls_http_requests",
            "HTTP requests answered, by operation (the spec's operationId; unmatched: no "
            "operation answered) and status code",
            labels=["operation", "status"],
        )
        by_operation: dict[str, list[float]] = {}
        for (operation, status), stats in copies:
            requests.add_metric([operation, str(status)], sum(stats[:-1]))
            total = by_operation.setdefault(operation, [0.0] * len(stats))
            for i, count in enumerate(stats):
                total[i] += count
        yield requests
        latency = HistogramMetricFamily(
            "calls_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer, by operation",
            labels=["operation"],
        )
        for name, total in by_operation.items():
            cumulative = accumulate(total[:-1])
            latency.add_metric([name], list(zip(self.le, cumulative, strict=True)), total[-1])
        yield latency


@runtime_checkable
class CountsRecords(Protocol):
    """A store that tells its size (the embedded one does)."""

    def counts(self) -> dict[str, int]:
        """How many `calls` and `organizations` are stored; quick enough for every scrape."""


@runtime_checkable
class TimesWrites(Protocol):
    """A store that tells how long its writes take to become durable."""

    def observe_writes(self, observer: Callable[[float], None] | None) -> None:
        """Call `observer` with each write's seconds from its start to its durability."""


class _LiveState(Collector):
    """What is read at each scrape: the store's size, and the webhook deliverer's queue."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # EmbeddedStore -> embedded
        self.backend = type(store).__name__.removesuffix("Store").lower()
        self.deliverer: WebhookDeliverer | None = None  # set while the app runs one

    def collect(self) -> Iterable[Metric]:
        counts = self.store.counts() if isinstance(self.store, CountsRecords) else None
        if counts is not None:
            for name, what in (("calls", "Calls"), ("organizations", "Organizations")):
                family = GaugeMetricFamily(
                    f"calls_store_{name}", f"{what} stored, by backend", labels=["backend"]
                )
                family.add_metric([self.backend], counts[name])
                yield family
        queued, sending = self.deliverer.backlog() if self.deliverer else (0, 0)
        yield GaugeMetricFamily(
            "calls_webhook_events_queued",
            "Webhook events waiting to be delivered (retries and those being sent included)",
            value=queued,
        )
        yield GaugeMetricFamily(
            "calls_webhook_deliveries_in_flight", "Webhook delivery attempts under way", sending
        )


class HttpLayer(Collector):
    """What the HTTP layer's limits did, read at each scrape from its `HttpStats`."""

    def __init__(self, stats: http_protocol.HttpStats) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        refused = CounterMetricFamily(
            "calls_http_connections_refused",
            "Connections closed unread as they came, by the limit that refused them: "
            "max_connections or max_connections_per_address",
            labels=["reason"],
        )
        for reason, count in list(self.stats.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        cut = CounterMetricFamily(
            "calls_http_connections_cut",
            "Connections closed by the server for a slow client: header_timeout or "
            "body_timeout (sending), send_timeout or max_buffered_bytes (not reading)",
            labels=["reason"],
        )
        for reason, count in list(self.stats.cut.items()):
            cut.add_metric([reason], count)
        yield cut
        yield GaugeMetricFamily(
            "calls_http_connections_open", "HTTP connections open now", len(self.stats.open)
        )
        yield GaugeMetricFamily(
            "calls_http_response_bytes_buffered",
            "Bytes of answers written but not yet taken by their clients, now",
            self.stats.buffered_bytes(),
        )


class RequestCounter:
    """Counts every HTTP request by operation and status, its latency, and the rate limits'
    refusals. Requests no operation answered are `unmatched`, but for the spec (`openapi`),
    Swagger UI (`swaggerUI`) and `/metrics` (`metrics`): every label value is one of a
    fixed set, never a path. Called by the app's one middleware that sees every answer
    (`calls_server.middleware.EveryAnswer`), or by `RequestMetrics`."""

    def __init__(self, metrics: Callable[[], Metrics], base_path: str) -> None:
        self.metrics = metrics  # those of the app's current run
        self.spec_paths = (f"{base_path}/openapi.json", f"{base_path}/openapi.yaml")
        self.ui_prefix = f"{base_path}/ui"

    def count(self, scope: Scope, status: int, seconds: float) -> None:
        """Count the request of `scope`, answered `status` after `seconds` (on the event
        loop only: `RequestStats.observe`)."""
        operation = scope.get(OPERATION) or self._unmatched(scope["path"])
        metrics = self.metrics()
        metrics.requests.observe(operation, status, seconds)
        if status == 429:
            limit = scope.get(RATE_LIMIT_REFUSED)
            if limit in RATE_LIMITS:
                metrics.rate_limited.labels(limit).inc()

    def _unmatched(self, path: str) -> str:
        if path in self.spec_paths:
            return "openapi"
        if path.startswith(self.ui_prefix):
            return "swaggerUI"
        return UNMATCHED


class RequestMetrics:
    """ASGI middleware counting every HTTP request (`RequestCounter`), alone: the app
    counts in `EveryAnswer`, together with the rest every answer gets."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics], base_path: str) -> None:
        self.app = app
        self.counter = RequestCounter(metrics, base_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if nothing else is sent

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.counter.count(scope, status, time.perf_counter() - started)


class MetricsEndpoint:
    """ASGI middleware serving `GET /metrics` on the API's port to the admin: the same
    bearer token as the admin API, refused the same way (401 without it or with a wrong
    one, 403 when the server has none), as the envelope."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics]) -> None:
        self.app = app
        self.metrics = metrics  # those of the app's current run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != METRICS_PATH
            or scope["method"] not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        scope[OPERATION] = "metrics"
        headers = {k: v for k, v in scope["headers"] if k in (b"authorization", b"accept")}
        token = _bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        if token is None:
            raise Unauthorized(ADMIN_HEADER)
        check_admin_token(token, request=ConnexionRequest(scope, receive))  # 401 or 403
        body, content_type = await anyio.to_thread.run_sync(
            self.metrics().exposition, headers.get(b"accept", b"").decode("latin-1")
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


def _bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, as Connexion reads it."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# The metrics listener's limits. A scraper sends its request at once and takes the answer
# at once: seconds a connection may wait on the client, and connections served at once
# (each holds a thread; past it, new ones are closed unread until one ends).
EXPORTER_IDLE_TIMEOUT = 5.0
EXPORTER_MAX_CONNECTIONS = 8


class Exporter:
    """The metrics on a listener of their own (`metrics_host:metrics_port`), without
    authentication, from the app's start to its stop (the socket is closed then).

    prometheus_client's WSGI server, bounded: it starts a thread per connection and waits
    on a silent client forever, so idle connections would pile up threads without end.
    Here a connection gets `idle_timeout` seconds per read or write, and at most
    `max_connections` are served at once."""

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        idle_timeout: float = EXPORTER_IDLE_TIMEOUT,
        max_connections: int = EXPORTER_MAX_CONNECTIONS,
    ) -> None:
        handler = type("_Handler", (_ExporterHandler,), {"timeout": idle_timeout})
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type(
                "_Server",
                (_BoundedServer,),
                {"address_family": family, "max_connections": max_connections},
            )
            self.server: WSGIServer = make_server(
                host, port, make_wsgi_app(metrics.registry), server_class, handler
            )
        except OSError as e:
            raise RuntimeError(
                f"CALLS_METRICS_PORT: cannot listen on {host}:{port} ({e.strerror}): is "
                "another process on it? CALLS_METRICS_PORT=0 serves the metrics at /metrics "
                "on the API's port instead"
            ) from e
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics-exporter", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        """Stop listening (connections being served finish on their own threads)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _BoundedServer(ThreadingWSGIServer):
    """A thread per connection, at most `max_connections` at once: past it, a connection
    is closed unread (a scraper retries at its next interval)."""

    max_connections = EXPORTER_MAX_CONNECTIONS

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], TimeoutError | ConnectionError):
            return  # a client gone silent or away: nothing to report
        super().handle_error(request, client_address)


class _ExporterHandler(WSGIRequestHandler):
    """One request per connection (HTTP/1.0), given up when the client is silent past the
    socket timeout; nothing logged."""

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # a silent or vanished client: just close

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing (a scrape every few seconds would fill the log)."""
