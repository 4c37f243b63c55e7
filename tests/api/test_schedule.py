"""The `schedule` handlers: reschedule and cancel a scheduled call."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import Tenant, assert_error, create_call

PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}


def scheduled_call(client, tenant: Tenant, at: int | None = None) -> dict[str, Any]:
    at = at or int(time.time()) + 3600
    response = client.post(
        "/api/calls/create-phone-call",
        json={**PHONE, "scheduled_timestamp": at, "metadata": {"k": "v"}},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    call: dict[str, Any] = response.json()["data"]["call"]
    return call


def test_update_schedule_moves_the_call_and_records_both_times(client, tenant, store):
    first = int(time.time()) + 3600
    call = scheduled_call(client, tenant, first)
    new = 4102444800  # 2100-01-01T00:00:00Z

    response = client.put(
        f"/api/calls/{call['call_id']}/schedule",
        json={"scheduled_timestamp": new},
        headers=tenant.headers,
    )

    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Scheduled call time updated successfully"
    data = body["data"]
    assert {k: v for k, v in data.items() if k != "call"} == {
        "operation": "schedule_update",
        "organization_id": tenant.organization_id,
        "call_id": call["call_id"],
        "previous_scheduled_timestamp": first,
        "new_scheduled_timestamp": new,
        "scheduled_for_human": "2100-01-01T00:00:00Z",
    }
    moved = data["call"]
    assert moved["call_status"] == "scheduled"
    assert moved["scheduled_timestamp"] == new == moved["metadata"]["scheduled_timestamp"]
    # The event as upstream's page shows it: its name, and the endpoint that moved it.
    assert moved["events"][-1]["event"] == "Scheduled call time updated via dedicated endpoint"
    assert moved["events"][-1]["data"] == {
        "previous_scheduled_timestamp": first,
        "new_scheduled_timestamp": new,
        "updated_at": moved["updated_at"],
        "endpoint_used": "/schedule",
    }
    assert store.get_call(tenant.organization_id, call["call_id"]) == moved


def test_update_schedule_to_a_past_time_is_400_and_changes_nothing(client, tenant, store):
    call = scheduled_call(client, tenant)

    response = client.put(
        f"/api/calls/{call['call_id']}/schedule",
        json={"scheduled_timestamp": 1_000},
        headers=tenant.headers,
    )

    assert_error(response, 400, "not in the future")
    assert store.get_call(tenant.organization_id, call["call_id"]) == call


def test_update_schedule_of_a_call_that_is_not_scheduled_is_409(client, tenant):
    call = create_call(client, tenant)

    response = client.put(
        f"/api/calls/{call['call_id']}/schedule",
        json={"scheduled_timestamp": 4102444800},
        headers=tenant.headers,
    )

    assert_error(response, 409, "is not scheduled (status 'registered')")


@pytest.mark.parametrize(
    "body", [{}, {"scheduled_timestamp": "soon"}, {"scheduled_timestamp": 0}, {"when": 5}]
)
def test_update_schedule_rejects_an_invalid_body_with_400(client, tenant, body):
    call = scheduled_call(client, tenant)

    response = client.put(
        f"/api/calls/{call['call_id']}/schedule", json=body, headers=tenant.headers
    )

    assert_error(response, 400)


def test_update_schedule_of_an_unknown_call_is_404(client, tenant):
    response = client.put(
        "/api/calls/call_nope/schedule",
        json={"scheduled_timestamp": 4102444800},
        headers=tenant.headers,
    )

    assert_error(response, 404, "call_nope")


def test_cancel_schedule_turns_the_call_into_a_regular_call(client, tenant, store):
    at = int(time.time()) + 3600
    call = scheduled_call(client, tenant, at)

    response = client.delete(f"/api/calls/{call['call_id']}/schedule", headers=tenant.headers)

    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Scheduled call cancelled successfully - converted to regular call"
    data = body["data"]
    assert (data["operation"], data["call_id"], data["cancelled_scheduled_timestamp"]) == (
        "schedule_cancelled",
        call["call_id"],
        at,
    )
    cancelled = data["call"]
    assert cancelled["call_status"] == "registered"
    assert cancelled["scheduled_timestamp"] is None
    # The caller's own keys only: the schedule's are gone, as upstream's page shows it.
    assert cancelled["metadata"] == {"k": "v"}
    last = cancelled["events"][-1]
    assert last["event"] == "Scheduled call cancelled - converted to regular call"
    assert last["data"] == {
        "previous_scheduled_timestamp": at,
        "cancelled_at": cancelled["updated_at"] // 1000,
        "endpoint_used": "/schedule DELETE",
    }
    assert store.get_call(tenant.organization_id, call["call_id"]) == cancelled


def test_cancel_schedule_twice_is_409(client, tenant):
    call = scheduled_call(client, tenant)
    client.delete(f"/api/calls/{call['call_id']}/schedule", headers=tenant.headers)

    response = client.delete(f"/api/calls/{call['call_id']}/schedule", headers=tenant.headers)

    assert_error(response, 409, "is not scheduled")


def test_cancel_schedule_of_an_unknown_call_is_404(client, tenant):
    assert_error(
        client.delete("/api/calls/call_nope/schedule", headers=tenant.headers), 404, "call_nope"
    )


def test_a_scheduled_call_that_starts_leaves_the_schedule(client, tenant):
    call = scheduled_call(client, tenant)

    response = client.put(
        f"/api/calls/{call['call_id']}", json={"call_status": "ongoing"}, headers=tenant.headers
    )

    started = response.json()["data"]["call"]
    assert started["call_status"] == "ongoing"
    assert started["scheduled_timestamp"] is None
    assert started["metadata"]["is_scheduled"] is False
    assert started["metadata"]["execution_status"] == "executed"
