"""One organization's calls are invisible to, and untouchable by, every other."""

from __future__ import annotations

import time

import pytest

from tests.conftest import assert_error, create_call

LATER = int(time.time()) + 86_400

OPERATIONS = [
    ("GET", "/api/calls/{id}", None),
    ("PUT", "/api/calls/{id}", {"call_status": "ongoing"}),
    ("DELETE", "/api/calls/{id}", None),
    ("PUT", "/api/calls/{id}/schedule", {"scheduled_timestamp": LATER}),
    ("DELETE", "/api/calls/{id}/schedule", None),
]


@pytest.fixture
def scheduled(client, tenant):
    body = {
        "from_number": "+14157774444",
        "to_number": "+12137774445",
        "override_agent_id": "ag",
        "scheduled_timestamp": LATER,
    }
    response = client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)
    return response.json()["data"]["call"]


@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS)
def test_another_organizations_call_is_404_and_unchanged(
    client, store, tenant, other_tenant, scheduled, method, path, body
):
    url = path.format(id=scheduled["call_id"])

    response = client.request(method, url, json=body, headers=other_tenant.headers)

    body = assert_error(response, 404, f"Call with ID '{scheduled['call_id']}' does not exist")
    assert body["message"] == "Call not found"
    assert store.get_call(tenant.organization_id, scheduled["call_id"]) == scheduled


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_listing_shows_only_the_callers_calls(client, tenant, other_tenant, method):
    mine = create_call(client, other_tenant)
    create_call(client, tenant)
    create_call(client, tenant)

    response = client.request(method, "/api/calls", headers=other_tenant.headers)

    data = response.json()["data"]
    assert [c["call_id"] for c in data["calls"]] == [mine["call_id"]]
    assert data["pagination"]["total_count"] == 1


def test_the_same_custom_call_id_may_exist_in_two_organizations(client, tenant, other_tenant):
    ours = create_call(client, tenant, agent_id="a", call_id="shared-id")
    theirs = create_call(client, other_tenant, agent_id="b", call_id="shared-id")

    got = client.get("/api/calls/shared-id", headers=tenant.headers).json()["data"]
    assert got == ours
    assert client.get("/api/calls/shared-id", headers=other_tenant.headers).json()["data"] == theirs


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/calls/create", {"agent_id": "a"}),
        ("/api/calls/create-web-call", {"agent_id": "a"}),
        (
            "/api/calls/create-phone-call",
            {"from_number": "+14155550100", "to_number": "+14155550101", "override_agent_id": "a"},
        ),
    ],
)
def test_a_created_call_belongs_to_the_callers_organization(
    client, store, other_tenant, path, body
):
    response = client.post(path, json=body, headers=other_tenant.headers)

    call = response.json()["data"]["call"]
    assert call["organization_id"] == other_tenant.organization_id
    assert store.get_call(other_tenant.organization_id, call["call_id"]) == call
