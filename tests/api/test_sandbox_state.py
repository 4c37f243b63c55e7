"""The `sandbox_state` handlers: an organization's records exported, reset and loaded over
HTTP, so that a test starts from a known state (both backends)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import app_client, assert_error, create_call

# The sandbox on, and webhooks allowed to loopback (no name to resolve).
SANDBOX = {"sandbox": True, "webhook_allow_http": True, "webhook_allow_networks": "127.0.0.0/8"}
HOOK_URL = "http://127.0.0.1:9/post-call"
SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())
EXAMPLES = SPEC["components"]["examples"]


@pytest.fixture
def client(store):
    with app_client(store, **SANDBOX) as test_client:
        yield test_client


def post(client, tenant, path: str, body: Any) -> dict:
    """POST `body` to `path` as `tenant`; the answer's data (200 expected)."""
    response = client.post(path, json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    data: dict = response.json()["data"]
    return data


def exported(client, tenant) -> dict:
    response = client.get("/api/sandbox/state", headers=tenant.headers)
    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Sandbox state"
    state: dict = response.json()["data"]
    return state


def set_up(client, tenant) -> dict[str, str]:
    """An agent assigned a webhook, a number bound to it, a call scheduled an hour ahead and a
    call of the seed: their ids."""
    agent = post(client, tenant, "/api/agents/create", {"agent_name": "Support"})["agent_id"]
    hook = post(client, tenant, "/api/post-call-webhooks/create", {"name": "CRM", "url": HOOK_URL})
    assign = f"/api/agents/{agent}/tools/post-call-webhook/assign"
    post(client, tenant, assign, {"webhook_id": hook["id"]})
    number = {"phone_number": "+14157774444", "outbound_agent_id": agent}
    post(client, tenant, "/api/phone-numbers/create", number)
    body = {"from_number": "+14157774444", "to_number": "+12137774445"}
    body["scheduled_timestamp"] = int(time.time()) + 3600
    scheduled = post(client, tenant, "/api/calls/create-phone-call", body)["call"]["call_id"]
    plain = create_call(client, tenant)["call_id"]
    return {"agent": agent, "webhook": hook["id"], "scheduled": scheduled, "call": plain}


def load(client, tenant, fixture: dict) -> Any:
    return client.post("/api/sandbox/state", json=fixture, headers=tenant.headers)


EVERY_KIND = {"agents": 1, "phone_numbers": 1, "webhooks": 1, "calls": 2, "batch_calls": 0}
NOTHING = {"agents": 0, "phone_numbers": 0, "webhooks": 0, "calls": 0, "batch_calls": 0}


# -- export ----------------------------------------------------------------------------------------


def test_export_answers_the_organizations_records_as_a_fixture(client, tenant):
    made = set_up(client, tenant)

    state = exported(client, tenant)

    assert state["version"] == 1
    assert [a["agent_id"] for a in state["agents"]] == [made["agent"]]
    assert state["agents"][0]["post_call_webhook_ids"] == [made["webhook"]]
    assert [n["phone_number"] for n in state["phone_numbers"]] == ["+14157774444"]
    assert [h["id"] for h in state["webhooks"]] == [made["webhook"]]
    assert state["webhooks"][0]["secret"].startswith("whsec_")  # a loaded webhook signs alike
    assert [c["call_id"] for c in state["calls"]] == [made["scheduled"], made["call"]]
    assert state["batch_calls"] == []


def test_export_leaves_out_other_organizations_records(client, tenant, other_tenant):
    set_up(client, other_tenant)

    state = exported(client, tenant)

    assert state == {
        "version": 1,
        "agents": [],
        "phone_numbers": [],
        "webhooks": [],
        "calls": [],
        "batch_calls": [],
    }


# -- reset -----------------------------------------------------------------------------------------


def test_reset_empties_the_organization_and_answers_what_it_removed(client, tenant):
    made = set_up(client, tenant)

    response = client.post("/api/sandbox/reset", headers=tenant.headers)

    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Sandbox state reset"
    assert response.json()["data"] == EVERY_KIND
    assert client.get(f"/api/calls/{made['call']}", headers=tenant.headers).status_code == 404
    assert client.get("/api/agents", headers=tenant.headers).json()["data"]["agents"] == []
    assert exported(client, tenant)["calls"] == []


def test_reset_keeps_the_key_it_was_sent_with(client, tenant):
    set_up(client, tenant)

    client.post("/api/sandbox/reset", headers=tenant.headers)

    again = client.post("/api/sandbox/reset", headers=tenant.headers)
    assert again.status_code == 200
    assert again.json()["data"] == NOTHING


def test_reset_leaves_other_organizations_alone(client, tenant, other_tenant):
    set_up(client, tenant)
    made = set_up(client, other_tenant)
    theirs = exported(client, other_tenant)

    client.post("/api/sandbox/reset", headers=tenant.headers)

    assert exported(client, other_tenant) == theirs
    got = client.get(f"/api/calls/{made['call']}", headers=other_tenant.headers)
    assert got.status_code == 200


# -- load ------------------------------------------------------------------------------------------


def test_export_reset_load_round_trips_through_http(client, tenant):
    set_up(client, tenant)
    before = exported(client, tenant)
    client.post("/api/sandbox/reset", headers=tenant.headers)

    response = load(client, tenant, before)

    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Sandbox state loaded"
    assert response.json()["data"] == EVERY_KIND
    assert exported(client, tenant) == before


def test_a_loaded_scheduled_call_is_listed_and_fetched_with_its_events(client, tenant):
    made = set_up(client, tenant)
    call = client.get(f"/api/calls/{made['scheduled']}", headers=tenant.headers).json()["data"]
    fixture = exported(client, tenant)
    client.post("/api/sandbox/reset", headers=tenant.headers)

    load(client, tenant, fixture)

    got = client.get(f"/api/calls/{made['scheduled']}", headers=tenant.headers)
    assert got.status_code == 200
    assert got.json()["data"] == call
    assert [e["event"] for e in got.json()["data"]["events"]] == [
        "Phone call created via API",
        "Call scheduled",
    ]
    listed = client.get("/api/calls?call_status=scheduled", headers=tenant.headers).json()
    assert [c["call_id"] for c in listed["data"]["calls"]] == [made["scheduled"]]


def test_a_fixture_from_another_organization_becomes_the_callers(client, tenant, other_tenant):
    made = set_up(client, other_tenant)
    fixture = exported(client, other_tenant)
    fixture["webhooks"], fixture["agents"][0]["post_call_webhook_ids"] = [], []

    response = load(client, tenant, fixture)

    assert response.status_code == 200, response.text
    got = client.get(f"/api/calls/{made['call']}", headers=tenant.headers).json()["data"]
    assert got["organization_id"] == tenant.organization_id


def test_the_specs_example_fixture_loads_as_its_example_answer_says(client, tenant):
    fixture = EXAMPLES["SandboxStateOneAgent"]["value"]

    response = load(client, tenant, fixture)

    answered = EXAMPLES["LoadSandboxStateAnswered"]["value"]
    assert response.status_code == 200, response.text
    assert {k: response.json()[k] for k in answered} == answered
    agent = fixture["agents"][0]
    got = client.get(f"/api/agents/{agent['agent_id']}", headers=tenant.headers)
    assert got.status_code == 200, got.text
    assert got.json()["data"]["agent_name"] == agent["agent_name"]


# -- what a load refuses: 400, nothing loaded ------------------------------------------------------


def refused(client, tenant, fixture: dict, error: str) -> None:
    """Loading `fixture` is a 400 whose error says `error`, and loads nothing."""
    before = exported(client, tenant)

    assert_error(load(client, tenant, fixture), 400, error)

    assert exported(client, tenant) == before


def a_call(client, tenant) -> dict:
    """A call as stored, from an export (the organization keeps it)."""
    create_call(client, tenant)
    call: dict = exported(client, tenant)["calls"][-1]
    return call


def test_a_record_whose_id_the_organization_holds_is_refused(client, tenant):
    call = a_call(client, tenant)
    fresh = {**call, "call_id": "fresh"}

    refused(
        client,
        tenant,
        {"version": 1, "calls": [fresh, call]},
        f"calls[1] '{call['call_id']}': the organization has this call already",
    )


def test_a_record_whose_id_repeats_within_the_fixture_is_refused(client, tenant):
    call = {**a_call(client, tenant), "call_id": "twice"}

    refused(
        client,
        tenant,
        {"version": 1, "calls": [call, call]},
        "calls[1] 'twice': its id repeats calls[0] 'twice'",
    )


def test_a_number_naming_an_agent_neither_has_is_refused(client, tenant):
    made = set_up(client, tenant)
    number = {**exported(client, tenant)["phone_numbers"][0], "phone_number": "+14155550199"}
    number["inbound_agent_id"] = "agent_gone"

    refused(
        client,
        tenant,
        {"version": 1, "phone_numbers": [number], "agents": []},
        "inbound_agent_id 'agent_gone' is neither in the fixture nor the organization's",
    )
    assert made  # the organization's own agent would have done


def test_an_agent_naming_a_webhook_neither_has_is_refused(client, tenant):
    agent = {
        "agent_id": "agent_new",
        "agent_name": "New",
        "created_at": "2026-12-07T10:00:00Z",
        "updated_at": "2026-12-07T10:00:00Z",
        "post_call_webhook_ids": ["webhook_gone"],
    }

    refused(
        client,
        tenant,
        {"version": 1, "agents": [agent]},
        "agents[0] 'agent_new': webhook 'webhook_gone' is neither",
    )


def test_a_record_without_its_id_is_refused(client, tenant):
    call = a_call(client, tenant)
    del call["call_id"]

    refused(client, tenant, {"version": 1, "calls": [call]}, "calls[0] has no call_id")


def test_a_task_of_another_batch_is_refused(client, tenant):
    agent = post(client, tenant, "/api/agents/create", {"agent_name": "Support"})["agent_id"]
    body = {
        "from_number": "+14157774444",
        "agent_id": agent,
        "status": "draft",
        "tasks": [{"to_number": "+12137774445"}],
    }
    post(client, tenant, "/batch-call", body)
    batch_call = exported(client, tenant)["batch_calls"][0]
    moved = {**batch_call["batch_call"], "batch_call_id": "batch_call_other"}

    refused(
        client,
        tenant,
        {"version": 1, "batch_calls": [{"batch_call": moved, "tasks": batch_call["tasks"]}]},
        f"a task of batch call '{batch_call['batch_call']['batch_call_id']}', not of",
    )


def test_a_call_the_listing_could_not_sort_is_refused_and_the_listing_still_answers(client, tenant):
    call = {**a_call(client, tenant), "call_id": "odd", "updated_at": "yesterday"}

    refused(
        client,
        tenant,
        {"version": 1, "calls": [call]},
        "calls[0] 'odd': updated_at must be a 64-bit integer or null",
    )
    listed = client.get("/api/calls?sort_by=updated_at", headers=tenant.headers)
    assert listed.status_code == 200


def test_a_webhook_to_a_private_address_is_refused(store, tenant):
    hook = {"id": "webhook_x", "name": "x", "url": "http://10.0.0.1/x", "is_active": True}
    hook["secret"] = "whsec_x"
    with app_client(store, sandbox=True) as client:
        response = load(client, tenant, {"version": 1, "webhooks": [hook]})

        assert_error(response, 400, "webhooks[0] 'webhook_x': ")
        assert exported(client, tenant)["webhooks"] == []


def test_a_fixture_past_the_webhook_limit_is_refused(store, tenant):
    hooks = [
        {"id": f"webhook_{n}", "name": "x", "url": HOOK_URL, "is_active": True, "secret": "s"}
        for n in range(3)
    ]
    with app_client(store, **SANDBOX, webhooks_per_organization=2) as client:
        response = load(client, tenant, {"version": 1, "webhooks": hooks})

        assert_error(response, 400, "at most 2 webhooks")
        assert exported(client, tenant)["webhooks"] == []


def test_an_organization_over_a_lowered_webhook_limit_still_loads_other_records(store, tenant):
    with app_client(store, **SANDBOX, webhooks_per_organization=2) as client:
        for name in ("one", "two"):
            post(client, tenant, "/api/post-call-webhooks/create", {"name": name, "url": HOOK_URL})
        call = {**a_call(client, tenant), "call_id": "more"}

    with app_client(store, **SANDBOX, webhooks_per_organization=1) as client:
        response = load(client, tenant, {"version": 1, "calls": [call]})

    assert response.status_code == 200, response.text
    assert response.json()["data"]["calls"] == 1


def test_a_fixture_of_another_version_is_refused(client, tenant):
    assert_error(load(client, tenant, {"version": 2}), 400)


# -- the sandbox off -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/sandbox/state", None),
        ("POST", "/api/sandbox/state", {"version": 1}),
        ("POST", "/api/sandbox/reset", None),
    ],
)
def test_every_state_operation_is_404_with_the_sandbox_off(store, tenant, method, path, body):
    with app_client(store) as client:
        response = client.request(method, path, json=body, headers=tenant.headers)

    assert_error(response, 404, "The sandbox is off")
