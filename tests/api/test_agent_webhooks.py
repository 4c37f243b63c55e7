"""Post-call webhooks as upstream has them: assigned to agents, fired when a call ends."""

from __future__ import annotations

import json

import pytest

from tests.api.test_webhooks import LOOPBACK_SETTINGS
from tests.conftest import app_client, assert_error, wait_for


@pytest.fixture
def client(store, data_dir):
    with app_client(store, data_dir=data_dir, **LOOPBACK_SETTINGS) as test_client:
        yield test_client


def new_agent(client, tenant, name: str = "Support") -> str:
    response = client.post("/api/agents/create", json={"agent_name": name}, headers=tenant.headers)
    agent_id: str = response.json()["data"]["agent_id"]
    return agent_id


def new_hook(client, tenant, url: str = "https://crm.example.com/hooks", **fields) -> dict:
    body = {"name": "Call Analytics", "url": url, **fields}
    response = client.post("/api/post-call-webhooks/create", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    hook: dict = response.json()["data"]
    return hook


def assign(client, tenant, agent: str, webhook_id: str):
    return client.post(
        f"/api/agents/{agent}/tools/post-call-webhook/assign",
        json={"webhook_id": webhook_id},
        headers=tenant.headers,
    )


def run_a_call(client, tenant, agent: str) -> str:
    created = client.post("/api/calls/create", json={"agent_id": agent}, headers=tenant.headers)
    call_id: str = created.json()["data"]["call"]["call_id"]
    for status in ("ongoing", "ended"):
        client.put(f"/api/calls/{call_id}", json={"call_status": status}, headers=tenant.headers)
    return call_id


def test_a_webhook_assigned_to_an_agent_receives_each_of_its_calls_once_it_ends(
    client, tenant, receiver
):
    agent, other = new_agent(client, tenant), new_agent(client, tenant, "Other")
    hook = new_hook(client, tenant, receiver.url + "/post-call")
    assert assign(client, tenant, agent, hook["id"]).status_code == 200

    call_id = run_a_call(client, tenant, agent)
    run_a_call(client, tenant, other)  # not this webhook's agent

    wait_for(lambda: len(receiver.received) == 1)
    payload = json.loads(receiver.received[0].body)
    assert (payload["event"], payload["call"]["call_id"]) == ("call_ended", call_id)
    assert payload["call"]["call_status"] == "ended"
    events = client.get(f"/api/post-call-webhooks/{hook['id']}/events", headers=tenant.headers)
    assert events.json()["data"]["pagination"]["total_count"] == 1


def test_a_webhook_assigned_to_no_agent_receives_nothing(client, tenant, receiver):
    hook = new_hook(client, tenant, receiver.url)

    run_a_call(client, tenant, new_agent(client, tenant))

    events = client.get(f"/api/post-call-webhooks/{hook['id']}/events", headers=tenant.headers)
    assert events.json()["data"]["events"] == []


def test_assigning_shows_the_tool_and_counts_the_agents_on_the_webhook(client, tenant):
    agent = new_agent(client, tenant)
    hook = new_hook(client, tenant, description="Receives call data after completion")

    data = assign(client, tenant, agent, hook["id"]).json()["data"]
    tools = client.get(f"/api/agents/{agent}/tools/post-call-webhook", headers=tenant.headers)
    shown = client.get(f"/api/post-call-webhooks/{hook['id']}", headers=tenant.headers)

    assert data["webhook_tool"] == {
        "name": "Call Analytics",
        "url": "https://crm.example.com/hooks",
        "description": "Receives call data after completion",
        "trigger": "post_call",
        "webhook_id": hook["id"],
    }
    assert (data["webhook_name"], data["total_tools"]) == ("Call Analytics", 1)
    assert tools.json()["data"]["post_call_webhook_tools"] == [data["webhook_tool"]]
    assert shown.json()["data"]["agent_count"] == 1
    full = client.get(f"/api/agents/{agent}/full", headers=tenant.headers).json()["data"]
    assert full["post_call_webhook_id"] == hook["id"]


def test_assigning_twice_keeps_one_assignment(client, tenant):
    agent, hook = new_agent(client, tenant), new_hook(client, tenant)

    assign(client, tenant, agent, hook["id"])
    again = assign(client, tenant, agent, hook["id"])

    assert again.json()["data"]["total_tools"] == 1


def test_an_inactive_webhook_cannot_be_assigned(client, tenant):
    agent, hook = new_agent(client, tenant), new_hook(client, tenant, is_active=False)

    body = assert_error(assign(client, tenant, agent, hook["id"]), 400, "is not active")

    assert body["message"] == "Validation error"


def test_an_unknown_webhook_in_upstreams_example_form_is_404_not_400(client, tenant):
    agent = new_agent(client, tenant)

    assigned = assign(client, tenant, agent, "webhook_123")
    shown = client.get("/api/post-call-webhooks/webhook_123", headers=tenant.headers)

    for response in (assigned, shown):
        body = assert_error(response, 404, "Webhook with ID 'webhook_123' does not exist")
        assert body["message"] == "Post-call webhook not found"


def test_removing_one_webhook_and_unassigning_all(client, tenant):
    agent = new_agent(client, tenant)
    first, second = new_hook(client, tenant), new_hook(client, tenant, name="Second")
    assign(client, tenant, agent, first["id"])
    assign(client, tenant, agent, second["id"])
    url = f"/api/agents/{agent}/tools/post-call-webhook/{first['id']}"

    removed = client.delete(url, headers=tenant.headers).json()["data"]
    again = client.delete(url, headers=tenant.headers)
    unassigned = client.patch(f"/api/agents/{agent}/unassign", headers=tenant.headers).json()

    assert (removed["removed_webhook_id"], removed["success"]) == (first["id"], True)
    assert_error(again, 404, "is not assigned to agent")
    assert unassigned["message"] == "Post-call webhook unassigned successfully"
    assert unassigned["data"]["unassigned_webhook_id"] == second["id"]
    assert unassigned["data"]["removed_tools_count"] == 1
    assert unassigned["data"]["post_call_webhook_id"] is None


def test_deleting_a_webhook_answers_null_and_clears_its_assignments(client, tenant, store):
    agent, hook = new_agent(client, tenant), new_hook(client, tenant)
    assign(client, tenant, agent, hook["id"])

    response = client.delete(f"/api/post-call-webhooks/{hook['id']}", headers=tenant.headers)

    assert response.json()["message"] == "Post-call webhook deleted successfully"
    assert response.json()["data"] is None
    stored = store.get_agent(tenant.organization_id, agent)
    assert (stored["post_call_webhook_ids"], stored["post_call_webhook_id"]) == ([], None)


def test_the_toggle_says_which_way_it_went(client, tenant):
    hook = new_hook(client, tenant)
    url = f"/api/post-call-webhooks/{hook['id']}/toggle"

    off = client.post(url, headers=tenant.headers).json()
    on = client.post(url, headers=tenant.headers).json()

    assert off["message"] == "Post-call webhook deactivated successfully"
    assert on["message"] == "Post-call webhook activated successfully"
