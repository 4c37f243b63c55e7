"""Faults an organization orders: answers of its choosing, latency, webhooks delivered
twice, late or out of order, a dialer that times out or refuses; marked, counted, its own."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import app_client, assert_error, wait_for

SANDBOX = {
    "sandbox": True,
    "sandbox_time_scale": 0.001,
    "webhook_allow_http": True,
    "webhook_allow_networks": "127.0.0.0/8",
}
PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}
CREATE = {"agent_id": "ag"}


@pytest.fixture
def client(store, data_dir):
    with app_client(store, data_dir=data_dir, **SANDBOX) as test_client:
        yield test_client


def order(client, tenant, **rule) -> dict:
    response = client.post("/api/sandbox/faults", json=rule, headers=tenant.headers)
    assert response.status_code == 200, response.text
    data: dict = response.json()["data"]
    return data


def test_an_error_is_answered_once_in_the_envelope_with_its_headers_then_the_real_answer(
    client, tenant
):
    rule = order(
        client,
        tenant,
        operation_id="createCall",
        action="error",
        status=503,
        times=1,
        headers={"Retry-After": "1"},
    )

    faulted = client.post("/api/calls/create", json=CREATE, headers=tenant.headers)
    real = client.post("/api/calls/create", json=CREATE, headers=tenant.headers)

    assert faulted.status_code == 503
    assert faulted.json()["message"] == "Service unavailable"
    assert faulted.json()["status"] == "error"
    assert faulted.headers["Retry-After"] == "1"
    assert faulted.headers["Sandbox-Fault"] == rule["fault_id"]
    assert real.status_code == 200
    assert "Sandbox-Fault" not in real.headers


def test_a_faulted_create_stores_nothing(client, tenant):
    order(client, tenant, operation_id="createCall", action="error", status=500, times=1)

    client.post("/api/calls/create", json=CREATE, headers=tenant.headers)

    listed = client.get("/api/calls", headers=tenant.headers)
    assert listed.json()["data"]["calls"] == []


def test_a_retry_with_the_same_idempotency_key_after_an_injected_503_creates_one_call(
    client, tenant
):
    order(client, tenant, operation_id="createPhoneCall", action="error", status=503, times=1)
    headers = {**tenant.headers, "Idempotency-Key": "first-create"}

    first = client.post("/api/calls/create-phone-call", json=PHONE, headers=headers)
    retried = client.post("/api/calls/create-phone-call", json=PHONE, headers=headers)
    again = client.post("/api/calls/create-phone-call", json=PHONE, headers=headers)

    assert first.status_code == 503
    assert retried.status_code == 200
    assert again.json()["data"]["call"]["call_id"] == retried.json()["data"]["call"]["call_id"]


def test_a_rate_limit_fault_carries_the_headers_a_client_reads(client, tenant):
    order(
        client,
        tenant,
        operation_id="getCall",
        action="error",
        status=429,
        headers={"Retry-After": "2", "RateLimit-Remaining": "0"},
        message="Too many requests",
    )

    response = client.get("/api/calls/nope", headers=tenant.headers)

    assert_error(response, 429)
    assert response.headers["Retry-After"] == "2"
    assert response.headers["RateLimit-Remaining"] == "0"


def test_latency_delays_the_real_answer_and_marks_it(client, tenant):
    rule = order(client, tenant, operation_id="createCall", action="latency", latency_ms=300)

    began = time.monotonic()
    response = client.post("/api/calls/create", json=CREATE, headers=tenant.headers)

    assert time.monotonic() - began >= 0.3
    assert response.status_code == 200
    assert response.headers["Sandbox-Fault"] == rule["fault_id"]


def test_a_probability_fires_the_same_requests_under_the_same_seed(store, data_dir, tenant):
    def run() -> list[int]:
        with app_client(store, data_dir=data_dir, **SANDBOX) as client:
            client.delete("/api/sandbox/faults", headers=tenant.headers)
            order(client, tenant, operation_id="getCall", action="error", probability=0.5, seed=7)
            return [
                client.get("/api/calls/x", headers=tenant.headers).status_code for _ in range(20)
            ]

    first, second = run(), run()

    assert first == second
    assert 503 in first
    assert 404 in first


def test_the_rules_are_listed_with_how_often_they_fired_and_removed(client, tenant):
    rule = order(client, tenant, operation_id="getCall", action="error", times=2)
    client.get("/api/calls/x", headers=tenant.headers)

    listed = client.get("/api/sandbox/faults", headers=tenant.headers).json()["data"]
    removed = client.delete(f"/api/sandbox/faults/{rule['fault_id']}", headers=tenant.headers)

    assert [(r["fault_id"], r["fired"], r["times"]) for r in listed] == [(rule["fault_id"], 1, 1)]
    assert removed.status_code == 200
    assert client.get("/api/sandbox/faults", headers=tenant.headers).json()["data"] == []
    assert client.get("/api/calls/x", headers=tenant.headers).status_code == 404


def test_rules_never_leak_to_another_organization(client, tenant, other_tenant):
    order(client, tenant, operation_id="createCall", action="error")

    theirs = client.post("/api/calls/create", json=CREATE, headers=other_tenant.headers)

    assert theirs.status_code == 200
    assert client.get("/api/sandbox/faults", headers=other_tenant.headers).json()["data"] == []
    deleted = client.delete("/api/sandbox/faults/whatever", headers=other_tenant.headers)
    assert_error(deleted, 404, "whatever")


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ({"operation_id": "noSuchOperation", "action": "error"}, "Unknown operation_id"),
        ({"operation_id": "createSandboxFault", "action": "error"}, "Unknown operation_id"),
        ({"operation_id": "createCall", "action": "duplicate"}, "does not go with"),
        ({"outbound": "dial", "action": "error"}, "does not go with"),
        ({"action": "error"}, "exactly one of"),
        ({"operation_id": "getCall", "outbound": "dial", "action": "timeout"}, "exactly one of"),
        ({"operation_id": "getCall", "action": "latency", "status": 500}, "'status' goes with"),
        ({"operation_id": "getCall", "action": "error", "probability": 1.5}, "probability"),
    ],
)
def test_a_rule_that_cannot_apply_is_refused_and_nothing_is_added(client, tenant, rule, words):
    response = client.post("/api/sandbox/faults", json=rule, headers=tenant.headers)

    assert_error(response, 400, words)
    assert client.get("/api/sandbox/faults", headers=tenant.headers).json()["data"] == []


@pytest.mark.parametrize(("action", "said"), [("timeout", "no answer"), ("refuse", "refused")])
def test_a_dial_fault_fails_the_call_as_a_dialer_would(client, tenant, action, said):
    order(client, tenant, outbound="dial", action=action, times=1)

    response = client.post("/api/calls/create-phone-call", json=PHONE, headers=tenant.headers)

    call = response.json()["data"]["call"]
    assert (call["call_status"], call["disconnection_reason"]) == ("error", "dial_failed")
    assert said in call["events"][-1]["data"]["result"]


def hook(client, tenant, receiver) -> str:
    body = {"name": "hook", "url": receiver.url, "status_events": True}
    created = client.post("/api/post-call-webhooks/create", json=body, headers=tenant.headers)
    assert created.status_code == 200, created.text
    hook_id: str = created.json()["data"]["id"]
    return hook_id


def test_a_webhook_delivery_arrives_twice_with_the_same_event_id(client, tenant, receiver):
    hook(client, tenant, receiver)
    rule = order(client, tenant, outbound="webhook_delivery", action="duplicate", times=1)

    client.post("/api/calls/create", json=CREATE, headers=tenant.headers)

    wait_for(lambda: len(receiver.received) == 2)
    ids = [json.loads(r.body)["event_id"] for r in receiver.received]
    assert ids[0] == ids[1]
    assert [r.headers["Sandbox-Fault"] for r in receiver.received] == [rule["fault_id"]] * 2


def test_a_delayed_webhook_delivery_arrives_late_and_marked(client, tenant, receiver):
    hook(client, tenant, receiver)
    rule = order(client, tenant, outbound="webhook_delivery", action="delay", latency_ms=800)

    began = time.monotonic()
    client.post("/api/calls/create", json=CREATE, headers=tenant.headers)

    wait_for(lambda: len(receiver.received) == 1)
    assert time.monotonic() - began >= 0.8
    assert receiver.received[0].headers["Sandbox-Fault"] == rule["fault_id"]


def test_a_reordered_delivery_arrives_after_the_next_calls_event(client, tenant, receiver):
    hook(client, tenant, receiver)
    order(client, tenant, outbound="webhook_delivery", action="reorder", times=1)

    first = client.post("/api/calls/create", json=CREATE, headers=tenant.headers)
    wait_for(
        lambda: (
            client.get("/api/sandbox/faults", headers=tenant.headers).json()["data"][0]["fired"]
            == 1
        )
    )
    second = client.post("/api/calls/create", json=CREATE, headers=tenant.headers)

    wait_for(lambda: len(receiver.received) == 2)
    calls = [json.loads(r.body)["call"]["call_id"] for r in receiver.received]
    assert calls == [
        second.json()["data"]["call"]["call_id"],
        first.json()["data"]["call"]["call_id"],
    ]


def test_faults_are_not_there_with_the_sandbox_off(store, data_dir, tenant):
    with app_client(store, data_dir=data_dir) as client:
        response = client.get("/api/sandbox/faults", headers=tenant.headers)

    assert_error(response, 404, "sandbox is off")


def test_a_reset_removes_the_organizations_rules(client, tenant):
    order(client, tenant, operation_id="getCall", action="error")

    client.post("/api/sandbox/reset", headers=tenant.headers)

    assert client.get("/api/sandbox/faults", headers=tenant.headers).json()["data"] == []
    assert client.get("/api/calls/x", headers=tenant.headers).status_code == 404


def test_a_drop_where_the_server_cannot_drop_is_answered_and_marked(client, tenant):
    """In-process (no `calls-server serve` HTTP layer) there is no connection to drop."""
    rule = order(client, tenant, operation_id="createCall", action="drop", after=True)

    response = client.post("/api/calls/create", json=CREATE, headers=tenant.headers)

    assert response.status_code == 200
    assert response.headers["Sandbox-Fault"] == rule["fault_id"]
