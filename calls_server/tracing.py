"""OpenTelemetry tracing: off unless the standard `OTEL_*` variables ask for it.

The rule: tracing is on when OTEL_TRACES_EXPORTER names an exporter (anything but `none`),
or, without OTEL_TRACES_EXPORTER, when OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (spans then go there over OTLP); never when
OTEL_SDK_DISABLED is `true`. OTEL_SERVICE_NAME alone asks for nothing; it names the
service, `calls-server` when unset. The SDK reads the rest itself: OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER, OTEL_PROPAGATORS (W3C `traceparent` by default), the OTLP endpoint,
headers and timeout. The exporter `otlp` is OTLP over HTTP (the one the `otel` extra
installs), or over gRPC when OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL is `grpc` and that
exporter is installed; other names are looked up among the installed exporters
(`console` comes with the SDK).

When it is on, every request is one server span named by its operation's `operationId`
(`createCall`; a request no operation answers keeps the instrumentation's name, method and
path), continuing the trace of an incoming `traceparent`; each store call a handler makes
is a child span (`store.add_call`); each request to the dialer and each webhook delivery
is a client span, whose `traceparent` goes out with it. A dial made by a request is in
that request's trace; a webhook delivery (made later, on the deliverer's threads) and a
dial of the scheduler or the batch dispatcher start traces of their own.

When it is off, the app has no tracing middleware, its store and HTTP clients are not
wrapped, and OpenTelemetry is not even imported: a request costs what it did without it.
When OTEL_* asks for traces but OpenTelemetry is not installed, the server starts without
tracing and logs a warning saying what to install.

Spans go to the SDK tracer provider already installed if there is one (by a program that
embeds the app, by `opentelemetry-instrument`, by the tests); otherwise one is built from
the environment and installed, and flushed when the process exits.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calls_server.request_path.keys import OPERATION
from calls_server.storage import Store

if TYPE_CHECKING:
    import httpx
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("calls_server.tracing")

SERVICE_NAME = "calls-server"
INSTALL_HINT = "pip install 'calls-server[otel]' (from a checkout: pip install '.[otel]')"


def requested(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables of `environ` ask for traces (the rule above)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(environ.get(name, "").strip() for name in endpoints)


def from_environment(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Tracing as `environ` (default: os.environ) configures it; None when it is off, or
    asked for but OpenTelemetry is not installed (then with a warning)."""
    environ = os.environ if environ is None else environ
    if not requested(environ):
        return None
    try:
        return Tracing(_provider(environ))
    except ImportError as e:
        log.warning(
            "OTEL_* variables ask for traces, but OpenTelemetry is not installed (no module "
            "%s): serving without tracing. To trace, install the otel extra: %s",
            e.name,
            INSTALL_HINT,
        )
        return None


class Tracing:
    """What the app wraps when tracing is on: its requests, its store, its HTTP clients."""

    def __init__(self, provider: TracerProvider) -> None:
        # Imported here, not when first used: a partial install fails while the app is
        # built, where it is reported (from_environment), not at its first request.
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        self.provider = provider
        self.tracer = provider.get_tracer("calls_server")
        self._asgi_middleware = OpenTelemetryMiddleware
        self._instrument_client = HTTPXClientInstrumentor.instrument_client

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """The ASGI middleware making each request a server span named by its operation's
        `operationId`."""
        # Spans of each receive and send would double the spans for nothing an operator reads.
        traced: ASGIApp = self._asgi_middleware(
            OperationName(app),
            tracer_provider=self.provider,
            exclude_spans=["receive", "send"],
        )
        return traced

    def store(self, store: Store) -> Store:
        """`store`, each method call made under a request's span a child span of it."""
        return cast(Store, TracedStore(store, self.tracer))

    def instrument(self, client: httpx.Client) -> None:
        """Make each request of `client` a client span, sending its `traceparent`."""
        self._instrument_client(client, tracer_provider=self.provider)


class OperationName:
    """ASGI middleware, inside the server span's: names that span by the `operationId` of
    the operation the request path resolved (`CompiledApi` leaves it in the scope, for
    metrics too). The span is named when it starts, before any routing,
    and ends with the response's last message: it is renamed when the response starts."""

    def __init__(self, app: ASGIApp) -> None:
        from opentelemetry.trace import get_current_span

        self.app = app
        self.current_span: Callable[[], Span] = get_current_span

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        span = self.current_span()

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                operation = scope.get(OPERATION)
                if operation is not None:  # None: no operation has the path (404, 405...)
                    span.update_name(operation)
            await send(message)

        await self.app(scope, receive, send_named)


class TracedStore:
    """A store whose method calls made under a recording span (a request's) are spans
    `store.<method>`; other calls, and every attribute, go straight to the store."""

    def __init__(self, store: Store, tracer: Tracer) -> None:
        from opentelemetry.trace import get_current_span

        self._store = store
        self._tracer = tracer
        self._current_span = get_current_span

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if name.startswith("_") or not callable(found):
            return found
        traced = self._traced(f"store.{name}", found)
        setattr(self, name, traced)  # looked up once: later calls skip __getattr__
        return traced

    def _traced(self, span_name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        tracer, current_span = self._tracer, self._current_span

        @functools.wraps(method)
        def traced(*args: Any, **kwargs: Any) -> Any:
            if not current_span().is_recording():  # no request's span (or not sampled)
                return method(*args, **kwargs)
            with tracer.start_as_current_span(span_name):
                return method(*args, **kwargs)

        return traced


def _provider(environ: Mapping[str, str]) -> TracerProvider:
    """The SDK tracer provider already installed, else one built from `environ` and
    installed (so that other instrumentations find it too)."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    installed = trace.get_tracer_provider()
    if isinstance(installed, TracerProvider):
        return installed
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read here; without a service name
    # the SDK would say `unknown_service`.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    for exporter in exporters(environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (`otlp` when unset), those installed."""
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    otlp = "otlp_proto_grpc" if protocol.strip().lower() == "grpc" else "otlp_proto_http"
    found = []
    for name in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(","):
        name = otlp if name.strip() == "otlp" else name.strip()
        if name in ("", "none"):
            continue
        exporter = next(iter(entry_points(group="opentelemetry_traces_exporter", name=name)), None)
        if exporter is None:
            log.warning("OTEL_TRACES_EXPORTER: no exporter %s is installed; skipped", name)
            continue
        found.append(exporter.load()())
    return found
