"""Prometheus metrics: requests by operation and status, the store, the scheduler, webhook
delivery and the rate limits; served at /metrics to the admin, or on a port of their own."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from calls_server.domain.quotas import Quota
from calls_server.storage import EmbeddedStore
from tests.conftest import (
    ADMIN_TOKEN,
    SEED_REQUEST,
    add_tenant,
    app_client,
    assert_error,
    create_call,
    free_port,
    wait_for,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRONG_PAIR = {"X-API-KEY": "sk_unknownkey000", "X-API-SECRET": "s3cr3t_wrongsecret00"}
DIALER_SECRET = "dialer-secret-0123456789"
PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}
LOOPBACK_WEBHOOKS = {"webhook_allow_http": True, "webhook_allow_networks": "127.0.0.0/8"}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by its name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name` with exactly `labels`, None when there is none."""
    return samples(text).get((name, frozenset(labels.items())))


def scrape(client) -> str:
    response = client.get("/metrics", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    text: str = response.text
    return text


# -- requests -------------------------------------------------------------------------------


def test_a_created_call_is_counted_under_create_call_and_200_and_timed(client, tenant):
    before = scrape(client)
    create_call(client, tenant)
    after = scrape(client)

    requests = "calls_http_requests_total"
    assert value(before, requests, operation="createCall", status="200") is None
    assert value(after, requests, operation="createCall", status="200") == 1
    timed = "calls_http_request_duration_seconds_count"
    assert value(after, timed, operation="createCall") == 1
    assert value(after, "calls_http_request_duration_seconds_sum", operation="createCall") > 0
    every = "calls_http_request_duration_seconds_bucket"
    assert value(after, every, operation="createCall", le="+Inf") == 1


def test_errors_of_an_operation_are_counted_under_its_operation_and_status(client, tenant):
    client.get("/api/calls/call_that_does_not_exist", headers=tenant.headers)
    client.get("/api/calls/call_x", headers=WRONG_PAIR)

    text = scrape(client)

    assert value(text, "calls_http_requests_total", operation="getCall", status="404") == 1
    assert value(text, "calls_http_requests_total", operation="getCall", status="401") == 1


def test_an_unknown_path_is_counted_as_unmatched_never_by_its_path(client):
    response = client.get("/api/no/such/path-1234")
    text = scrape(client)

    assert response.status_code == 404
    assert value(text, "calls_http_requests_total", operation="unmatched", status="404") == 1
    assert value(text, "calls_http_request_duration_seconds_count", operation="unmatched") == 1
    assert "path-1234" not in text


def test_a_method_a_path_does_not_have_is_counted_as_unmatched(client, tenant):
    response = client.patch("/api/calls/create", headers=tenant.headers)

    text = scrape(client)

    assert response.status_code == 405
    assert value(text, "calls_http_requests_total", operation="unmatched", status="405") == 1


def test_operation_labels_are_operation_ids_or_a_fixed_few(client, tenant):
    call = create_call(client, tenant)
    client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers)
    client.get("/api/openapi.json")
    client.get(f"/api/elsewhere/{call['call_id']}")

    operations = {
        dict(labels)["operation"]
        for name, labels in samples(scrape(client))
        if name == "calls_http_requests_total"
    }

    assert operations == {"createCall", "getCall", "openapi", "unmatched"}


# -- /metrics on the API's port ----------------------------------------------------------------


def test_metrics_on_the_api_port_need_the_admin_token(client):
    response = client.get("/metrics")

    body = assert_error(response, 401, "An 'Authorization: Bearer <admin token>' header")
    assert body["message"] == "Unauthorized"


def test_metrics_on_the_api_port_refuse_a_wrong_token(client):
    response = client.get("/metrics", headers={"Authorization": "Bearer not-the-admin-token"})

    assert_error(response, 401, "Invalid admin token")


def test_metrics_on_the_api_port_are_403_when_no_admin_token_is_configured(store, data_dir):
    with app_client(store, data_dir=data_dir) as client:
        response = client.get("/metrics", headers=ADMIN)

    assert_error(response, 403, "CALLS_ADMIN_TOKEN")


def test_metrics_are_not_an_api_operation(client):
    spec = client.get("/api/openapi.json").json()

    assert "/metrics" not in spec["paths"]


# -- a port of their own -----------------------------------------------------------------------


def test_the_metrics_port_is_closed_when_the_app_stops(store, data_dir):
    port = free_port()
    with app_client(store, data_dir=data_dir, metrics_port=port) as client:
        served = httpx.get(f"http://127.0.0.1:{port}/metrics")
        on_api = client.get("/metrics", headers=ADMIN)

    assert served.status_code == 200
    assert value(served.text, "calls_webhook_events_queued") == 0
    assert_error(on_api, 404)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics")


# -- the store -----------------------------------------------------------------------------------


# The embedded store tells its size and times its writes (`counts`, `observe_writes`); a
# backend without them exports neither.


@pytest.fixture
def embedded(tmp_path):
    opened = EmbeddedStore(tmp_path / "embedded")
    yield opened
    opened.close()


def test_the_store_size_counts_created_calls_and_organizations(embedded):
    tenant, other_tenant = add_tenant(embedded, "one"), add_tenant(embedded, "two")
    with app_client(embedded, admin_token=ADMIN_TOKEN) as client:
        for _ in range(3):
            create_call(client, tenant)
        create_call(client, other_tenant)
        text = scrape(client)

    assert value(text, "calls_store_calls", backend="embedded") == 4
    assert value(text, "calls_store_organizations", backend="embedded") == 2


def test_each_durable_write_is_timed(embedded):
    tenant = add_tenant(embedded, "one")
    with app_client(embedded, admin_token=ADMIN_TOKEN) as client:
        before = value(scrape(client), "calls_store_write_duration_seconds_count")
        create_call(client, tenant)
        after = scrape(client)

    assert before is not None
    assert value(after, "calls_store_write_duration_seconds_count") == before + 1
    assert value(after, "calls_store_write_duration_seconds_sum") > 0


# -- rate limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "limit"),
    [
        ("rate_limit_per_key", "key"),
        ("rate_limit_per_organization", "organization"),
        ("rate_limit_auth_failures", "auth_failures"),
    ],
)
def test_a_rate_limit_refusal_is_counted_by_the_limit_that_refused(
    store, tenant, clock, setting, limit
):
    # Auth failures are counted from wrong pairs; the others from the tenant's requests.
    headers = WRONG_PAIR if limit == "auth_failures" else tenant.headers
    with app_client(store, clock=clock, admin_token=ADMIN_TOKEN, **{setting: 1}) as client:
        first = client.get("/api/calls", headers=headers)
        refused = client.get("/api/calls", headers=headers)
        # The scrape comes from the same network, which the failed-authentication limit
        # refuses until its window has passed (the admin token included).
        clock.advance(60)
        text = scrape(client)

    assert first.status_code in (200, 401)
    assert refused.status_code == 429
    counts = {
        name: value(text, "calls_rate_limit_refusals_total", limit=name)
        for name in ("key", "organization", "auth_failures")
    }
    assert counts == {name: (1 if name == limit else 0) for name in counts}


def test_a_quota_refusal_is_not_counted_as_a_rate_limit(tmp_path):
    store = EmbeddedStore(tmp_path / "quota", quota=Quota(max_calls=1))
    tenant = add_tenant(store, "quota-org")
    try:
        with app_client(store, admin_token=ADMIN_TOKEN) as client:
            create_call(client, tenant)
            refused = client.post("/api/calls/create", json=SEED_REQUEST, headers=tenant.headers)
            text = scrape(client)
    finally:
        store.close()

    assert_error(refused, 429, "quota")
    assert value(text, "calls_http_requests_total", operation="createCall", status="429") == 1
    assert value(text, "calls_rate_limit_refusals_total", limit="key") == 0
    assert value(text, "calls_rate_limit_refusals_total", limit="organization") == 0


# -- the scheduler -------------------------------------------------------------------------------


def test_the_scheduler_lag_is_how_late_a_due_call_was_claimed(
    store, data_dir, tenant, receiver, clock
):
    clock.now -= clock.now % 1000  # on a whole second, as scheduled times are
    dialer = {"dialer_url": receiver.url, "dialer_secret": DIALER_SECRET}
    with app_client(
        store,
        clock=clock,
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        scheduler_interval=0.05,
        **dialer,
    ) as client:
        due = clock() // 1000 + 60
        body = {**PHONE, "scheduled_timestamp": due}
        created = client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)
        assert created.status_code == 200, created.text
        assert value(scrape(client), "calls_scheduler_lag_seconds_count") == 0
        clock.advance(61.5)  # the call is claimed 1.5 s after it was due
        wait_for(lambda: len(receiver.received) == 1)
        text = scrape(client)

    assert value(text, "calls_scheduler_lag_seconds_count") == 1
    assert value(text, "calls_scheduler_lag_seconds_sum") == pytest.approx(1.5)
    assert value(text, "calls_scheduler_lag_seconds_bucket", le="1.0") == 0
    assert value(text, "calls_scheduler_lag_seconds_bucket", le="2.0") == 1


# -- webhook delivery ----------------------------------------------------------------------------


def register_webhook(client, tenant, url: str) -> None:
    body = {"name": "hook", "url": url, "status_events": True}
    response = client.post("/api/post-call-webhooks/create", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text


def test_a_delivered_event_leaves_the_queue_and_its_lag_is_observed(
    store, data_dir, tenant, receiver
):
    with app_client(
        store, data_dir=data_dir, admin_token=ADMIN_TOKEN, **LOOPBACK_WEBHOOKS
    ) as client:
        register_webhook(client, tenant, receiver.url)
        create_call(client, tenant)
        delivered = "calls_webhook_delivery_lag_seconds_count"
        wait_for(lambda: value(scrape(client), delivered) == 1)
        text = scrape(client)

    assert len(receiver.received) == 1
    assert 0 <= value(text, "calls_webhook_delivery_lag_seconds_sum") < 10
    assert value(text, "calls_webhook_events_queued") == 0
    assert value(text, "calls_webhook_deliveries_in_flight") == 0


def test_an_event_waiting_for_its_retry_is_counted_in_the_queue(store, data_dir, tenant, receiver):
    receiver.replies = [(500, 0.0)]
    retry_later = {"webhook_retry_first_delay": 60.0, "webhook_retry_max_delay": 60.0}
    with app_client(
        store, data_dir=data_dir, admin_token=ADMIN_TOKEN, **LOOPBACK_WEBHOOKS, **retry_later
    ) as client:
        register_webhook(client, tenant, receiver.url)
        create_call(client, tenant)
        wait_for(lambda: len(receiver.received) == 1)
        wait_for(lambda: value(scrape(client), "calls_webhook_deliveries_in_flight") == 0)
        text = scrape(client)

    assert value(text, "calls_webhook_events_queued") == 1
    assert value(text, "calls_webhook_delivery_lag_seconds_count") == 0
