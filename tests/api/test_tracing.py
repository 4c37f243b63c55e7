"""OpenTelemetry tracing (calls_server/tracing.py): off without OTEL_* variables, and then
not even imported; on, a server span per request named by its operationId, store calls
and outbound HTTP as spans under it, the trace carried to the dialer in `traceparent`.

The spans go to an SDK tracer provider with an in-memory exporter, installed once in the
test process: an app traces into the provider already installed."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.testclient import TestClient

from calls_server import tracing
from calls_server.app import create_app
from calls_server.settings import Settings
from tests.conftest import STORED_CASE, create_call, wait_for

EXPORTED = InMemorySpanExporter()
DIALER_SECRET = "dialer-secret-0123456789"
PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}
LOOPBACK_WEBHOOKS = {
    "webhook_allow_http": True,
    "webhook_allow_networks": "127.0.0.0/8",
}
OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def in_memory_provider() -> TracerProvider:
    """The process's tracer provider, exporting to EXPORTED (installed at the first call)."""
    installed = trace.get_tracer_provider()
    if not isinstance(installed, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTED))
        trace.set_tracer_provider(provider)
        installed = trace.get_tracer_provider()
    assert isinstance(installed, TracerProvider)
    return installed


@pytest.fixture
def no_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def spans(no_otel: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing asked for by OTEL_*, its spans kept in memory (nothing leaves the process:
    the provider installed is used, no exporter is built)."""
    in_memory_provider()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    EXPORTED.clear()
    yield EXPORTED
    EXPORTED.clear()


def traced_client(store, **settings) -> TestClient:
    """A client of an app of its own (the shared apps of conftest are built without OTEL_*)."""
    configured = Settings(validate_responses=True, enum_case=STORED_CASE, **settings)
    return TestClient(create_app(configured, store), raise_server_exceptions=False)


def server_span(exported: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [
        s for s in exported.get_finished_spans() if s.kind is SpanKind.SERVER and s.name == name
    ]
    return span


def ancestors(span: ReadableSpan, exported: InMemorySpanExporter) -> list[int]:
    """The span ids above `span`, its parent first."""
    by_id = {s.context.span_id: s for s in exported.get_finished_spans()}
    found = []
    parent = span.parent
    while parent is not None:
        found.append(parent.span_id)
        parent = by_id[parent.span_id].parent if parent.span_id in by_id else None
    return found


def traceparent_ids(traceparent: str) -> tuple[int, int]:
    """The trace id and the (parent) span id a `traceparent` header carries."""
    _version, trace_id, span_id, _flags = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


# -- when to trace --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "calls"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_tracing_is_on_when_otel_variables_ask_for_an_exporter(environ, on):
    assert tracing.requested(environ) is on


def test_the_exporters_named_are_built_and_those_not_installed_skipped_with_a_warning(caplog):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    built = tracing.exporters({"OTEL_TRACES_EXPORTER": "otlp, console,none,nosuch"})
    by_endpoint = tracing.exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})

    assert [type(e) for e in built] == [OTLPSpanExporter, ConsoleSpanExporter]
    assert [type(e) for e in by_endpoint] == [OTLPSpanExporter]
    assert "no exporter nosuch is installed" in caplog.text
    for exporter in built + by_endpoint:
        exporter.shutdown()


def test_without_otel_variables_the_app_has_no_tracing_middleware(no_otel, store, tenant):
    with traced_client(store) as client:
        create_call(client, tenant)
        stack = client.app.middleware.middleware_stack

    kinds = {type(app) for app in stack}
    assert OpenTelemetryMiddleware not in kinds
    assert tracing.OperationName not in kinds
    assert tracing.from_environment({}) is None


def test_without_otel_variables_opentelemetry_is_not_even_imported(tmp_path):
    # A process of its own: this one has imported OpenTelemetry for the other tests.
    script = textwrap.dedent(
        f"""
        import os, sys
        for name in list(os.environ):
            if name.startswith("OTEL_"):
                del os.environ[name]
        from starlette.testclient import TestClient
        from calls_server.app import create_app
        from calls_server.settings import Settings
        from calls_server.storage import EmbeddedStore

        store = EmbeddedStore({str(tmp_path / "data")!r})
        with TestClient(create_app(Settings(), store)) as client:
            assert client.get("/api/calls").status_code == 401
        store.close()
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        """
    )

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

    assert done.returncode == 0, done.stderr


def test_asked_for_without_opentelemetry_installed_the_app_starts_and_says_what_to_install(
    no_otel, monkeypatch, caplog, store, tenant
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed

    with (
        caplog.at_level(logging.WARNING, logger="calls_server.tracing"),
        traced_client(store) as client,
    ):
        create_call(client, tenant)
        stack = client.app.middleware.middleware_stack

    assert tracing.OperationName not in {type(app) for app in stack}
    [warning] = [r for r in caplog.records if r.name == "calls_server.tracing"]
    assert "OpenTelemetry is not installed" in warning.getMessage()
    assert ".[otel]" in warning.getMessage()


# -- spans ----------------------------------------------------------------------------------


def test_a_request_is_a_server_span_named_by_its_operation_id(spans, store, tenant):
    with traced_client(store) as client:
        create_call(client, tenant)

    [span] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.name == "createCall"
    assert span.parent is None  # the client sent no traceparent


def test_a_request_no_operation_answers_keeps_the_instrumentations_name(spans, store):
    with traced_client(store) as client:
        assert client.get("/api/nowhere").status_code == 404

    assert server_span(spans, "GET /api/nowhere").status.is_unset


def test_the_store_calls_of_a_request_are_spans_under_its_server_span(spans, store, tenant):
    with traced_client(store) as client:
        create_call(client, tenant)

    request = server_span(spans, "createCall")
    [added] = [s for s in spans.get_finished_spans() if s.name == "store.add_call"]
    assert added.context.trace_id == request.context.trace_id
    assert request.context.span_id in ancestors(added, spans)


def test_a_request_continues_the_trace_its_traceparent_names(spans, store, tenant):
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    sent = {**tenant.headers, "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}

    with traced_client(store) as client:
        assert client.get("/api/calls", headers=sent).status_code == 200

    assert server_span(spans, "listCalls").context.trace_id == int(trace_id, 16)


def test_store_calls_outside_a_request_are_not_spans(spans, store):
    traced_store = tracing.Tracing(in_memory_provider()).store(store)

    assert traced_store.list_agents("no-such-org") == []
    assert traced_store.reads_wait == store.reads_wait
    assert spans.get_finished_spans() == ()


def test_the_dialer_request_carries_the_trace_of_the_request_that_placed_the_call(
    spans, store, tenant, receiver
):
    dialer = {"dialer_url": receiver.url + "/jobs", "dialer_secret": DIALER_SECRET}
    with traced_client(store, **dialer) as client:
        response = client.post("/api/calls/create-phone-call", json=PHONE, headers=tenant.headers)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["status"] == "call_initiated"

    request = server_span(spans, "createPhoneCall")
    [dial] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert dial.context.trace_id == request.context.trace_id
    assert request.context.span_id in ancestors(dial, spans)
    [job] = receiver.received
    sent = traceparent_ids(job.headers["traceparent"])
    assert sent == (request.context.trace_id, dial.context.span_id)


def test_a_webhook_delivery_is_a_client_span_whose_traceparent_it_sends(
    spans, store, tenant, receiver
):
    with traced_client(store, **LOOPBACK_WEBHOOKS) as client:
        body = {"name": "hook", "url": receiver.url + "/hook", "status_events": True}
        response = client.post("/api/post-call-webhooks/create", json=body, headers=tenant.headers)
        assert response.status_code == 200, response.text
        create_call(client, tenant)
        wait_for(lambda: receiver.received)
        wait_for(lambda: any(s.kind is SpanKind.CLIENT for s in spans.get_finished_spans()))

    delivery = next(s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert delivery.parent is None  # after the request, on the deliverer's thread
    sent = traceparent_ids(receiver.received[0].headers["traceparent"])
    assert sent == (delivery.context.trace_id, delivery.context.span_id)
