"""The `webhooks` handlers, and delivery of status events to a real receiver on loopback."""

from __future__ import annotations

import json
import logging
import time

import pytest
from starlette.testclient import TestClient

from calls_server.app import create_app
from calls_server.domain import calls, webhooks
from calls_server.integrations.egress import EgressPolicy
from calls_server.integrations.signing import (
    LEGACY_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    legacy_signature,
    verify,
)
from calls_server.integrations.webhooks import WebhookDeliverer
from calls_server.settings import Settings
from tests.conftest import app_client, assert_error, create_call, wait_for

# The receivers of these tests listen on loopback: an operator's allowance.
LOOPBACK_SETTINGS = {"webhook_allow_http": True, "webhook_allow_networks": "127.0.0.0/8"}


@pytest.fixture
def client(store, data_dir):
    with app_client(store, data_dir=data_dir, **LOOPBACK_SETTINGS) as test_client:
        yield test_client


LOOPBACK = EgressPolicy(
    allow_http=True, allowed_networks=EgressPolicy.parse_networks("127.0.0.0/8")
)


def register(client, tenant, url: str, **fields) -> dict:
    body = {"name": "hook", "url": url, **fields}
    response = client.post("/api/post-call-webhooks/create", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    hook: dict = response.json()["data"]
    return hook


def events(receiver) -> list[str]:
    return [json.loads(r.body)["event"] for r in receiver.received]


# -- the resource -----------------------------------------------------------------------------


def test_create_webhook_returns_it_with_its_secret_once(client, tenant):
    hook = register(client, tenant, "https://crm.example.com/hooks", description="CRM")

    assert hook["id"].startswith("webhook_")
    assert hook["secret"].startswith("whsec_")
    assert (hook["organization_id"], hook["is_active"], hook["description"]) == (
        tenant.organization_id,
        True,
        "CRM",
    )
    shown = client.get(f"/api/post-call-webhooks/{hook['id']}", headers=tenant.headers).json()
    assert "secret" not in shown["data"]
    assert shown["data"] == {k: v for k, v in hook.items() if k != "secret"}


def test_create_webhook_requires_https(store, data_dir, tenant):
    with TestClient(create_app(Settings(data_dir=data_dir), store)) as strict:
        response = strict.post(
            "/api/post-call-webhooks/create",
            json={"name": "h", "url": "http://crm.example.com"},
            headers=tenant.headers,
        )

    assert_error(response, 400, "Webhook URL must be HTTPS")
    assert store.webhooks(tenant.organization_id) == []


def test_list_webhooks_can_show_only_the_active_ones(client, tenant):
    on = register(client, tenant, "https://a.example.com")
    off = register(client, tenant, "https://b.example.com", is_active=False)

    everything = client.get("/api/post-call-webhooks", headers=tenant.headers).json()["data"]
    active = client.get("/api/post-call-webhooks?activeOnly=true", headers=tenant.headers)

    assert [h["id"] for h in everything["webhooks"]] == [on["id"], off["id"]]
    assert everything["count"] == 2
    assert [h["id"] for h in active.json()["data"]["webhooks"]] == [on["id"]]


def test_update_and_toggle_webhook(client, tenant):
    hook = register(client, tenant, "https://a.example.com")
    url = f"/api/post-call-webhooks/{hook['id']}"

    updated = client.patch(url, json={"name": "renamed"}, headers=tenant.headers).json()["data"]
    toggled = client.post(f"{url}/toggle", headers=tenant.headers).json()["data"]

    assert updated["name"] == "renamed"
    assert toggled["is_active"] is False
    assert client.get(url, headers=tenant.headers).json()["data"]["is_active"] is False


def test_delete_webhook_removes_it(client, tenant):
    hook = register(client, tenant, "https://a.example.com")
    url = f"/api/post-call-webhooks/{hook['id']}"

    assert client.delete(url, headers=tenant.headers).status_code == 200

    assert_error(client.get(url, headers=tenant.headers), 404, hook["id"])


def test_another_organizations_webhook_is_404_and_unchanged(client, tenant, other_tenant, store):
    hook = register(client, tenant, "https://a.example.com")
    url = f"/api/post-call-webhooks/{hook['id']}"

    for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
        response = client.request(method, url, json=body, headers=other_tenant.headers)
        assert_error(response, 404, hook["id"])
    assert_error(client.post(f"{url}/toggle", headers=other_tenant.headers), 404)
    assert store.get_webhook(tenant.organization_id, hook["id"])["name"] == "hook"
    listed = client.get("/api/post-call-webhooks", headers=other_tenant.headers).json()
    assert listed["data"]["count"] == 0


# -- delivery -------------------------------------------------------------------------------


def test_status_changes_are_delivered_in_order_and_signed(client, tenant, receiver):
    hook = register(client, tenant, receiver.url + "/events")
    call = create_call(client, tenant)
    call_url = f"/api/calls/{call['call_id']}"
    client.put(call_url, json={"call_status": "ongoing"}, headers=tenant.headers)
    client.put(call_url, json={"transcript": "no status change"}, headers=tenant.headers)
    client.put(call_url, json={"call_status": "ended"}, headers=tenant.headers)
    client.delete(call_url, headers=tenant.headers)

    wait_for(lambda: len(receiver.received) == 4)

    assert events(receiver) == ["call_registered", "call_started", "call_ended", "call_deleted"]
    for request in receiver.received:
        assert request.path == "/events"
        assert verify(hook["secret"], request.body, request.headers[SIGNATURE_HEADER])
        legacy = request.headers[LEGACY_SIGNATURE_HEADER]
        assert legacy == legacy_signature(hook["secret"], request.body)
        payload = json.loads(request.body)
        assert payload["webhook_id"] == hook["id"]
        assert payload["organization_id"] == tenant.organization_id
        assert payload["call"]["call_id"] == call["call_id"]
        assert request.headers["X-Calls-Event"] == payload["event"]
    assert json.loads(receiver.received[2].body)["call"]["call_status"] == "ended"


def test_a_scheduled_call_is_announced(client, tenant, receiver):
    register(client, tenant, receiver.url)
    body = {
        "from_number": "+14157774444",
        "to_number": "+12137774445",
        "override_agent_id": "ag",
        "scheduled_timestamp": 4102444800,
    }
    client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)

    wait_for(lambda: len(receiver.received) == 1)
    assert events(receiver) == ["call_scheduled"]


def test_inactive_webhooks_and_other_organizations_hear_nothing(
    store, data_dir, tenant, other_tenant, receiver
):
    with app_client(store, data_dir=data_dir, **LOOPBACK_SETTINGS) as client:
        register(client, tenant, receiver.url + "/inactive", is_active=False)
        register(client, other_tenant, receiver.url + "/other")
        register(client, tenant, receiver.url + "/active")

        create_call(client, tenant)
    # Stopping the app has delivered everything that was queued.

    assert [request.path for request in receiver.received] == ["/active"]


def test_a_failed_delivery_is_retried(client, tenant, receiver):
    receiver.replies = [(500, 0.0), (503, 0.0)]
    register(client, tenant, receiver.url)

    create_call(client, tenant)

    wait_for(lambda: len(receiver.received) == 3)
    assert events(receiver) == ["call_registered"] * 3


def test_a_slow_receiver_never_holds_up_the_api(client, tenant, receiver):
    receiver.replies = [(200, 2.0)]
    register(client, tenant, receiver.url)

    started = time.monotonic()
    create_call(client, tenant)
    second = create_call(client, tenant)
    elapsed = time.monotonic() - started

    assert elapsed < 1.5
    wait_for(lambda: len(receiver.received) == 2)
    assert json.loads(receiver.received[1].body)["call"]["call_id"] == second["call_id"]


def test_deliveries_still_queued_at_stop_are_dropped_and_logged(store, tenant, receiver, caplog):
    receiver.replies = [(200, 2.0)]  # the first delivery hangs; the rest wait behind it
    hook = webhooks.new_webhook(
        tenant.organization_id,
        {"name": "slow", "url": receiver.url, "is_active": True},
        now=1,
        existing=0,
        limit=16,
    )
    store.add_webhook(hook)
    deliverer = WebhookDeliverer(store, LOOPBACK)
    deliverer.start()
    for n in range(4):
        store.add_call(calls.new_call(organization_id=tenant.organization_id, agent_id="a",
                                      now=n, call_type="web_call"))  # fmt: skip
    wait_for(lambda: len(receiver.received) == 1)

    with caplog.at_level(logging.WARNING, logger="calls_server.webhooks"):
        deliverer.stop(grace=0.2)

    assert f"dropped 3 undelivered webhook events ({hook['id']}: 3)" in caplog.text


def test_a_delivery_under_way_at_stop_is_dropped_and_logged_not_retried(
    store, tenant, receiver, caplog
):
    receiver.replies = [(500, 0.5)]  # a slow failure: the delivery would be retried
    store.add_webhook(
        webhooks.new_webhook(
            tenant.organization_id,
            {"name": "failing", "url": receiver.url, "is_active": True},
            now=1,
            existing=0,
            limit=16,
        )
    )
    deliverer = WebhookDeliverer(store, LOOPBACK, backoff=0.01)
    deliverer.start()
    store.add_call(calls.new_call(organization_id=tenant.organization_id, agent_id="a",
                                  now=1, call_type="web_call"))  # fmt: skip
    wait_for(lambda: len(receiver.received) == 1)

    with caplog.at_level(logging.WARNING, logger="calls_server.webhooks"):
        deliverer.stop(grace=0.1)
        wait_for(lambda: "dropped the delivery of call_registered" in caplog.text)

    assert len(receiver.received) == 1
