"""The app factory: openapi.yaml wired to the handlers, a store and the settings."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import anyio
from connexion import AsyncApp
from connexion.middleware.lifespan import LifespanMiddleware
from connexion.middleware.server_error import ServerErrorMiddleware
from connexion.operations import AbstractOperation
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver
from connexion.spec import Specification
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Scope

from calls_server import errors, tracing
from calls_server.console import PREFIX as CONSOLE_PREFIX
from calls_server.console import ConsoleFiles
from calls_server.contract import cors_headers, published, spec_for
from calls_server.domain.casing import Casing
from calls_server.domain.faults import FaultRules
from calls_server.domain.rate_limits import RateLimits
from calls_server.handlers.idempotency_keys import IdempotencyKeys
from calls_server.handlers.scope import Services
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.livekit import sandbox_rooms
from calls_server.metrics import Exporter, Metrics, MetricsEndpoint, RequestCounter
from calls_server.middleware import BodySizeLimit, EveryAnswer, PublishedSpec, SwaggerUI
from calls_server.request_path.api import CompiledApi
from calls_server.sandbox_hooks import SANDBOX_HOOKS
from calls_server.services.batch_dispatch import BatchDispatcher
from calls_server.services.sandbox import SandboxDialer
from calls_server.services.scheduler import Scheduler
from calls_server.services.test_clocks import Clocks
from calls_server.services.webhooks import WebhookDeliverer
from calls_server.settings import Settings
from calls_server.storage import Store


class HandlerResolver(Resolver):  # type: ignore[misc]
    """Resolves an `operationId` (`createCall`) to the function of that name in snake case
    (`create_call`) in the handler module of the operation's first tag (`handlers/calls.py`),
    so that the spec names operations as clients see them and no module path leaks."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.tags = {
            operation["operationId"]: operation["tags"][0]
            for item in spec["paths"].values()
            for operation in item.values()
            if isinstance(operation, dict) and "operationId" in operation
        }

    def resolve_operation_id(self, operation: AbstractOperation) -> str:
        return handler_name(operation.operation_id, self.tags[operation.operation_id])


def _store_reads_wait(scope: Scope) -> bool:
    """Whether the running app's store reads wait for a database (then a request's reads
    leave the event loop): what the request path asks of the app."""
    services = (scope.get("state") or {}).get("services")
    return services is not None and bool(services.store.reads_wait)


def _console_path(path: str) -> bool:
    """Whether `path` is the console's (`ConsoleFiles` answers it, with headers of its own)."""
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def fault_targets(spec: dict[str, Any]) -> list[str]:
    """The operations a sandbox fault rule may name: those an organization's key pair calls,
    but the sandbox's own."""
    return [
        operation["operationId"]
        for item in spec["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
        and "operationId" in operation
        and operation.get("security") != []
        and not operation["tags"][0].startswith(("sandbox", "admin", "health"))
    ]


def handler_name(operation_id: str, tag: str) -> str:
    """The dotted path of the handler of `operation_id`, tagged `tag`."""
    function = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", operation_id).lower()
    return f"calls_server.handlers.{tag}.{function}"


class CallsApp(AsyncApp):  # type: ignore[misc]
    """The API as an ASGI app, built once from the settings and started on `backing`'s store
    and clock each time its lifespan starts."""

    backing: Backing

    def serve_from(self, store: Store, clock: Clock = wall_clock) -> None:
        """Serve from `store` on `clock` from the next start of the lifespan on (the app must
        be stopped). Building the app costs hundreds of milliseconds, starting it a few: the
        tests build one per settings and start it on a fresh store for each test."""
        self.backing.store = store
        self.backing.clock = clock


@dataclass
class Backing:
    """What an app serves from, read when its lifespan starts: the store, the clock, and
    the metrics of that run (counted afresh at each start, over that store)."""

    store: Store
    clock: Clock
    metrics: Metrics | None = None

    def current_metrics(self) -> Metrics:
        """The metrics of the run under way (there is one while requests are answered)."""
        assert self.metrics is not None, "the app's lifespan has not started"
        return self.metrics


@contextmanager
def _packaged_spec_trusted() -> Iterator[None]:
    """Connexion checks a spec against OpenAPI's own schema each time it loads one: 0.2 s of
    every start, for the spec this package ships, which cannot change after it is built and
    is checked where it is written (openapi-spec-validator in tests/api/test_spec.py, and
    Connexion's loading in tests/unit/test_connexion_internals.py). The check is left out
    while this app loads it (`Specification._validate_spec` is pinned in those tests)."""
    with _SPEC_CHECK_SWAP:  # apps built on two threads at once: one swap at a time
        checked = Specification.__dict__["_validate_spec"]
        Specification._validate_spec = classmethod(lambda cls, spec: None)
        try:
            yield
        finally:
            Specification._validate_spec = checked


_SPEC_CHECK_SWAP = threading.Lock()


def create_app(settings: Settings, store: Store, clock: Clock = wall_clock) -> CallsApp:
    """An ASGI app serving the Calls API from `store`. The caller opens and closes the store.

    The dialer, LiveKit and the other services handlers use are built from `settings` when
    the app starts, and reach handlers through the lifespan state; `clock` is the time
    handlers, the scheduler, webhook deliveries and dialer signatures read (tests pass one
    they can move). LiveKit's SDK dates its tokens by the system clock.

    Swagger UI is served at /api/ui/ and the spec at /api/openapi.json (and .yaml). With a
    dialer configured, the scheduler runs for as long as the app does.

    Prometheus metrics are served at /metrics to the admin, or on a listener of their own
    while the app runs (`metrics_port`); see calls_server/metrics.py.

    OpenTelemetry traces requests, store calls and outbound HTTP when the OTEL_* variables
    ask for it, and is not even loaded otherwise; see calls_server/tracing.py.
    """
    spec = spec_for(settings)
    base_path = spec["servers"][0]["url"]
    backing = Backing(store, clock)
    traced = tracing.from_environment(os.environ)  # None: tracing is off
    on_client = traced.instrument if traced else None

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        store = backing.store
        # With the sandbox, organizations may each run on a test clock of their own.
        test_clocks = Clocks(backing.clock) if settings.sandbox else None
        clock = test_clocks or backing.clock
        metrics = backing.metrics = Metrics(store)
        faults = FaultRules(fault_targets(spec)) if settings.sandbox else None
        dialer = settings.dialer()
        sandbox = (
            SandboxDialer(
                store,
                f"http://{settings.public_host()}:{settings.port}{base_path}/sandbox/recordings",
                settings.sandbox_seed,
                settings.sandbox_time_scale,
                clock,
                faults,
            )
            if settings.sandbox
            else None
        )
        # The sandbox stands in for LiveKit when none is configured (a key pair of its own).
        rooms = settings.livekit_rooms() or (
            sandbox_rooms(settings.livekit_token_ttl, settings.livekit_identity)
            if sandbox
            else None
        )
        handlers_store = traced.store(store) if traced else store  # spans of their calls
        services = Services(
            store=handlers_store,
            clock=clock,
            # Signs on app time; its HTTP clients are traced when tracing is on.
            dialer=replace(dialer, clock=clock, on_client=on_client) if dialer else sandbox,
            rooms=rooms,
            egress=settings.egress(),
            webhook_limit=settings.webhooks_per_organization,
            dial_limiter=anyio.CapacityLimiter(settings.dialer_concurrency),
            admin_token=settings.admin_token,
            casing=Casing(settings.enum_case),
            rate_limits=RateLimits(
                settings.rate_limit_per_key,
                settings.rate_limit_per_organization,
                settings.rate_limit_auth_failures,
            ),
            idempotency=IdempotencyKeys(settings.idempotency_ttl, handlers_store, clock),
            sandbox=sandbox,
            test_clocks=test_clocks,
            faults=faults,
        )
        scheduler = (
            Scheduler(
                store,
                services.dialer,
                settings.scheduler_interval,
                clock,
                on_lag=metrics.scheduler_lag_seconds.observe,
                sandbox=sandbox,  # its calls end with this process: the next one ends them
            )
            if services.dialer
            else None
        )
        batch_dispatcher = (
            BatchDispatcher(
                store,
                services.dialer,
                settings.batch_concurrency,
                settings.scheduler_interval,
                clock,
                sandbox=sandbox,  # its calls end with this process: the next one ends them
            )
            if services.dialer
            else None
        )
        deliverer = (
            WebhookDeliverer(
                store,
                services.egress,
                settings.webhook_retries(),
                concurrency=settings.webhook_concurrency,
                per_endpoint=settings.webhook_connections_per_endpoint,
                timeout=settings.webhook_timeout,
                retention=settings.webhook_event_retention,
                clock=clock,
                on_delivered=metrics.webhook_lag_seconds.observe,
                on_client=on_client,
                faults=faults,
            )
            if settings.webhook_delivery
            else None
        )
        metrics.live.deliverer = deliverer
        if test_clocks is not None:
            test_clocks.works = [
                work for work in (scheduler, sandbox, batch_dispatcher, deliverer) if work
            ]
        exporter = (
            Exporter(metrics, settings.metrics_host, settings.metrics_port)
            if settings.metrics_port
            else None
        )
        try:
            for service in (deliverer, sandbox, scheduler, batch_dispatcher):
                if service:
                    service.start()
            try:
                # The ASGI server copies this state into every request's scope (request.state).
                yield {"services": services}
            finally:
                for service in (batch_dispatcher, scheduler, sandbox, deliverer):
                    if service:
                        service.stop()
        finally:
            metrics.live.deliverer = None
            if exporter:
                exporter.close()  # never left bound after the app stops

    as_json, as_yaml = published(spec)
    cors = []
    if settings.cors_origins:
        origins = [origin.strip() for origin in settings.cors_origins.split(",")]
        sent_by_browsers, read_by_browsers = cors_headers(spec)
        cors = [
            partial(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=sent_by_browsers,
                expose_headers=read_by_browsers,
                max_age=600,
            )
        ]
    middlewares = [
        # Outermost when tracing is on: each request's span covers all it costs, errors too.
        *([traced.middleware] if traced else []),
        ServerErrorMiddleware,
        # Outermost, so that every response, errors and preflights included, carries the id
        # and the headers every answer has, is logged, and counted and timed.
        partial(
            EveryAnswer,
            counter=RequestCounter(backing.current_metrics, base_path),
            ui_prefix=f"{base_path}/ui",
            own_headers=_console_path if settings.console else lambda path: False,
        ),
        # The console's static files at /console/, with headers of their own (they may be
        # cached, the API's answers may not); before auth: the page signs in itself.
        *([ConsoleFiles] if settings.console else []),
        *cors,
        errors.Envelopes,  # renders every error as the envelope (errors.py)
        partial(BodySizeLimit, max_bytes=settings.max_body_bytes),
        # /metrics on the API's port, for the admin; not with a metrics port of its own.
        *(
            []
            if settings.metrics_port
            else [partial(MetricsEndpoint, metrics=backing.current_metrics)]
        ),
        partial(PublishedSpec, base_path=base_path, as_json=as_json, as_yaml=as_yaml),
        SwaggerUI,
        # The operations of openapi.yaml: routing, security, validation and handlers,
        # compiled from the spec; any other path is 404.
        partial(
            CompiledApi,
            reads_wait=_store_reads_wait,
            hooks=SANDBOX_HOOKS if settings.sandbox else None,
        ),
        LifespanMiddleware,
    ]
    app = CallsApp(__name__, lifespan=lifespan, middlewares=middlewares)
    app.backing = backing
    with _packaged_spec_trusted():
        app.add_api(
            spec,
            resolver=HandlerResolver(spec),
            strict_validation=True,
            validate_responses=settings.validate_responses,
            swagger_ui_options=SwaggerUIOptions(swagger_ui=True, serve_spec=False),
        )
    errors.install(app)
    return app
