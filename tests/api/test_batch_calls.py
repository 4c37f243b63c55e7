"""The batch-call endpoints: upstream's surface, statuses and moves, and refusals.

Dispatching (what a running batch dials, and when) is tests/store/test_batch_dispatch.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from calls_server.domain import agents
from tests.conftest import app_client, assert_error

FROM = "+14157774444"


@pytest.fixture
def client(store, data_dir, clock):
    """The API on the test's clock; no dialer, so no batch is dispatched here."""
    with app_client(store, clock=clock, data_dir=data_dir) as test_client:
        yield test_client


@pytest.fixture
def agent_id(store, tenant, clock) -> str:
    agent = agents.new_agent(tenant.organization_id, {"agent_name": "Campaigner"}, clock())
    store.add_agent(agent)
    return str(agent["agent_id"])


def tasks(count: int, first: int = 5550000000) -> list[dict[str, Any]]:
    return [
        {"to_number": f"+1{first + i}", "dynamic_variables": {"n": str(i)}} for i in range(count)
    ]


def create(client, tenant, agent_id, path="/batch-call", **body: Any) -> Any:
    request = {"name": "Renewals", "from_number": FROM, "agent_id": agent_id, "tasks": tasks(3)}
    return client.post(path, json={**request, **body}, headers=tenant.headers)


def created(client, tenant, agent_id, **body: Any) -> dict[str, Any]:
    response = create(client, tenant, agent_id, **body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def stored_tasks(store, tenant, batch) -> list[dict[str, Any]]:
    return store.batch_tasks(tenant.organization_id, batch["batch_call_id"])[0]


# -- create ----------------------------------------------------------------------------------------
def test_a_batch_is_created_with_its_tasks_and_counters(client, tenant, agent_id, store, clock):
    response = create(client, tenant, agent_id)

    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Batch call created successfully"
    assert body["status"] == "success"
    assert body["error"] is None
    batch = body["data"]
    assert re.fullmatch(r"batch_call_[0-9a-f]{32}", batch["batch_call_id"])
    assert batch["status"] == "sent"  # no trigger time: it runs now
    assert (batch["total_task_count"], batch["total"], batch["pending"]) == (3, 3, 3)
    assert (batch["sent"], batch["picked_up"], batch["completed"]) == (0, 0, 0)
    assert batch["created_timestamp"] == clock()
    assert batch["tasks_url"] == f"/batch-call/{batch['batch_call_id']}/tasks"
    assert store.get_batch(tenant.organization_id, batch["batch_call_id"]) == batch
    assert [t["to_number"] for t in stored_tasks(store, tenant, batch)] == [
        "+15550000000",
        "+15550000001",
        "+15550000002",
    ]


def test_batch_paths_answer_without_and_with_the_api_prefix(client, tenant, agent_id):
    batch = created(client, tenant, agent_id)

    bare = client.get(f"/batch-call/{batch['batch_call_id']}", headers=tenant.headers)
    prefixed = client.get(f"/api/batch-call/{batch['batch_call_id']}", headers=tenant.headers)

    assert bare.status_code == prefixed.status_code == 200
    assert bare.json() == prefixed.json()


def test_a_future_trigger_in_seconds_schedules_the_batch_in_milliseconds(
    client, tenant, agent_id, clock
):
    trigger = clock() // 1000 + 3600

    batch = created(client, tenant, agent_id, trigger_timestamp=trigger)

    assert batch["status"] == "scheduled"
    assert batch["scheduled_timestamp"] == trigger * 1000


def test_a_trigger_in_milliseconds_is_kept_as_is(client, tenant, agent_id, clock):
    batch = created(client, tenant, agent_id, trigger_timestamp=clock() + 60_000)

    assert batch["scheduled_timestamp"] == clock() + 60_000


def test_send_now_runs_a_batch_whatever_its_trigger_time(client, tenant, agent_id, clock):
    batch = created(client, tenant, agent_id, trigger_timestamp=clock() + 60_000, send_now=True)

    assert batch["status"] == "sent"
    assert batch["execution_started_at"] is not None


def test_a_draft_stays_a_draft(client, tenant, agent_id):
    batch = created(client, tenant, agent_id, status="DRAFT")

    assert batch["status"] == "draft"
    assert batch["execution_started_at"] is None


def test_without_an_agent_the_from_numbers_outbound_agent_places_the_calls(
    client, tenant, agent_id
):
    number = {"phone_number": FROM, "outbound_agent_id": agent_id}
    assert client.post("/api/phone-numbers/import", json=number, headers=tenant.headers).is_success

    body = {"from_number": FROM, "tasks": tasks(2)}

    response = client.post("/batch-call", json=body, headers=tenant.headers)

    assert response.status_code == 200, response.text
    assert response.json()["data"]["agent_id"] == agent_id


def test_create_with_an_idempotency_key_creates_one_batch(client, tenant, agent_id, store):
    headers = {**tenant.headers, "Idempotency-Key": "campaign-1"}
    body = {"from_number": FROM, "agent_id": agent_id, "tasks": tasks(2)}

    first = client.post("/batch-call", json=body, headers=headers)
    again = client.post("/batch-call", json=body, headers=headers)

    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(store.list_batches(tenant.organization_id)) == 1


# -- refused whole ---------------------------------------------------------------------------------
def test_a_bad_batch_is_refused_naming_every_offending_task_and_nothing_is_stored(
    client, tenant, agent_id, store
):
    bad = tasks(6)
    bad[1]["to_number"] = "15550000001"
    bad[3]["to_number"] = bad[0]["to_number"]
    bad[4]["to_number"] = FROM
    bad[5]["dynamic_variables"] = {"blob": "x" * 6000}

    response = create(client, tenant, agent_id, tasks=bad)

    body = assert_error(response, 400)
    assert body["message"] == "Validation error"
    error = body["error"]
    assert 'tasks[1].to_number "15550000001" is not an E.164 number' in error
    assert "tasks[3].to_number +15550000000 repeats tasks[0]" in error
    assert "tasks[4].to_number is the batch's from_number" in error
    assert "tasks[5].dynamic_variables take" in error
    assert "tasks[0]" not in error.replace("repeats tasks[0]", "")
    assert store.list_batches(tenant.organization_id) == []


def test_over_a_thousand_tasks_is_refused(client, tenant, agent_id, store):
    response = create(client, tenant, agent_id, tasks=tasks(1001))

    assert_error(response, 400, "more than 1000 items")
    assert store.list_batches(tenant.organization_id) == []


def test_a_thousand_tasks_are_taken(client, tenant, agent_id, store):
    batch = created(client, tenant, agent_id, tasks=tasks(1000))

    assert batch["total_task_count"] == 1000
    assert store.batch_tasks(tenant.organization_id, batch["batch_call_id"], limit=1)[1] == 1000


def test_a_trigger_time_in_the_past_is_refused(client, tenant, agent_id, clock):
    response = create(client, tenant, agent_id, trigger_timestamp=clock() // 1000 - 1)

    assert_error(response, 400, "trigger_timestamp")


def test_quiet_hours_that_leave_no_calling_time_are_refused(client, tenant, agent_id):
    quiet = {"enabled": True, "start_time": "09:00", "end_time": "09:00"}

    response = create(client, tenant, agent_id, quiet_hours=quiet)

    assert_error(response, 400, "09:00")


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("timezone", "Mars/Olympus", "Mars/Olympus"),
        ("quiet_hours", {"enabled": True, "start_time": "24:00", "end_time": "08:00"}, "24:00"),
        ("agent_id", "agent_nobody", "agent_nobody"),
        ("from_number", "4157774444", "from_number"),
    ],
)
def test_other_bad_settings_are_refused_by_name(
    client, tenant, agent_id, store, field, value, named
):
    body = {"from_number": FROM, "agent_id": agent_id, "tasks": tasks(1), field: value}

    response = client.post("/batch-call", json=body, headers=tenant.headers)

    assert_error(response, 400, named)
    assert store.list_batches(tenant.organization_id) == []


def test_a_repeated_retry_condition_is_refused(client, tenant, agent_id):
    rule = {"condition": "busy", "retry_timing": {"type": "AFTER", "duration_minutes": 5}}

    response = create(client, tenant, agent_id, retry_rules=[rule, {**rule}])

    assert_error(response, 400, "repeats the condition 'busy'")


# -- read and list ---------------------------------------------------------------------------------
def test_get_answers_the_batch_and_an_unknown_one_is_404(client, tenant, agent_id):
    batch = created(client, tenant, agent_id)

    found = client.get(f"/batch-call/{batch['batch_call_id']}", headers=tenant.headers)
    missing = client.get("/batch-call/batch_abc123", headers=tenant.headers)

    assert found.json()["message"] == "Batch call retrieved successfully"
    assert found.json()["data"] == batch
    body = assert_error(missing, 404, "Batch call with ID 'batch_abc123' does not exist")
    assert body["message"] == "Batch call not found"


def test_another_organizations_batch_is_not_found(client, tenant, other_tenant, agent_id):
    batch = created(client, tenant, agent_id)

    response = client.get(f"/batch-call/{batch['batch_call_id']}", headers=other_tenant.headers)

    assert_error(response, 404)


def test_list_without_a_limit_answers_every_batch(client, tenant, agent_id, clock):
    for _ in range(3):
        created(client, tenant, agent_id)
        clock.advance(1)

    response = client.get("/batch-call/list", headers=tenant.headers)

    data = response.json()["data"]
    assert response.json()["message"] == "Batch calls retrieved successfully"
    assert data["returned_count"] == 3
    assert (data["pagination"]["total_count"], data["pagination"]["total_pages"]) == (3, 1)
    created_at = [b["created_timestamp"] for b in data["batch_calls"]]
    assert created_at == sorted(created_at, reverse=True)  # updated_at, descending


def test_list_pages_by_limit_or_its_size_alias(client, tenant, agent_id, clock):
    names = []
    for i in range(5):
        names.append(created(client, tenant, agent_id, name=f"b{i}")["name"])
        clock.advance(1)

    by_limit = client.get(
        "/batch-call/list?page=1&limit=2&sort_by=name&sort_order=ascending",
        headers=tenant.headers,
    ).json()["data"]
    by_size = client.get(
        "/batch-call/list?page=1&size=2&sort_by=name&sort_order=ascending",
        headers=tenant.headers,
    ).json()["data"]

    assert [b["name"] for b in by_limit["batch_calls"]] == ["b2", "b3"]
    assert by_size["batch_calls"] == by_limit["batch_calls"]
    assert by_limit["pagination"] == {
        "page": 1,
        "limit": 2,
        "total_count": 5,
        "total_pages": 3,
        "has_next_page": True,
        "has_previous_page": True,
    }


def test_list_with_filters_matches_status_agent_and_name_and_counts_them(client, tenant, agent_id):
    created(client, tenant, agent_id, name="Spring campaign", status="draft")
    created(client, tenant, agent_id, name="Autumn CAMPAIGN")
    created(client, tenant, agent_id, name="Other", status="draft")
    body = {
        "filter_criteria": {"status": ["DRAFT", "failed"], "name": ["campaign"]},
        "pagination": {"page": 0, "limit": 20},
    }

    response = client.post("/batch-call/list", json=body, headers=tenant.headers)

    assert response.json()["message"] == "Batch calls retrieved successfully with filters"
    data = response.json()["data"]
    assert [b["name"] for b in data["batch_calls"]] == ["Spring campaign"]
    assert data["applied_filters"] == {"status": "2 values", "name": "1 values"}


# -- moves -----------------------------------------------------------------------------------------
def test_execute_starts_a_draft(client, tenant, agent_id):
    batch = created(client, tenant, agent_id, status="draft")

    response = client.post(f"/batch-call/{batch['batch_call_id']}/execute", headers=tenant.headers)

    assert response.json()["message"] == "Batch call execution started"
    assert response.json()["data"]["status"] == "sent"
    assert response.json()["data"]["execution_started_at"] is not None


def test_execute_is_refused_once_sent_in_upstreams_words(client, tenant, agent_id):
    batch = created(client, tenant, agent_id)

    response = client.post(f"/batch-call/{batch['batch_call_id']}/execute", headers=tenant.headers)

    body = assert_error(response, 400, "Cannot execute batch call with status SENT")
    assert body["message"] == "Validation error"


def test_delete_of_a_sent_batch_is_refused_and_of_a_draft_done(client, tenant, agent_id, store):
    sent = created(client, tenant, agent_id)
    draft = created(client, tenant, agent_id, status="draft")

    refused = client.delete(f"/batch-call/{sent['batch_call_id']}", headers=tenant.headers)
    deleted = client.delete(f"/batch-call/{draft['batch_call_id']}", headers=tenant.headers)

    assert_error(refused, 400, "Cannot delete batch call with status SENT")
    assert deleted.json() == {
        "message": "Batch call deleted successfully",
        "status": "success",
        "error": None,
        "data": None,
    }
    assert [b["batch_call_id"] for b in store.list_batches(tenant.organization_id)] == [
        sent["batch_call_id"]
    ]
    assert store.batch_tasks(tenant.organization_id, sent["batch_call_id"])[1] == 3


def test_patch_changes_only_the_fields_sent(client, tenant, agent_id, clock):
    batch = created(client, tenant, agent_id, status="draft", timezone="Europe/Paris")
    trigger = clock() // 1000 + 600

    response = client.patch(
        f"/batch-call/{batch['batch_call_id']}",
        json={"name": "Renamed", "trigger_timestamp": trigger, "status": "scheduled"},
        headers=tenant.headers,
    )

    data = response.json()["data"]
    assert response.json()["message"] == "Batch call updated successfully"
    assert (data["name"], data["status"], data["timezone"]) == (
        "Renamed",
        "scheduled",
        "Europe/Paris",
    )
    assert data["scheduled_timestamp"] == trigger * 1000


def test_patch_cannot_move_a_sent_batch_back(client, tenant, agent_id):
    batch = created(client, tenant, agent_id)

    response = client.patch(
        f"/batch-call/{batch['batch_call_id']}", json={"status": "draft"}, headers=tenant.headers
    )

    assert_error(response, 400, "Cannot update batch call with status SENT")


def test_a_sending_batch_can_still_be_renamed(client, tenant, agent_id):
    batch = created(client, tenant, agent_id)

    response = client.patch(
        f"/batch-call/{batch['batch_call_id']}", json={"name": "Later"}, headers=tenant.headers
    )

    assert response.status_code == 200, response.text
    assert (response.json()["data"]["name"], response.json()["data"]["status"]) == ("Later", "sent")


def test_a_finished_batch_cannot_be_changed(client, tenant, agent_id, store, clock):
    batch = created(client, tenant, agent_id, status="draft")
    store.change_batch(
        tenant.organization_id, batch["batch_call_id"], lambda b: {**b, "status": "completed"}
    )

    response = client.patch(
        f"/batch-call/{batch['batch_call_id']}", json={"name": "x"}, headers=tenant.headers
    )

    assert_error(response, 400, "Cannot update batch call with status COMPLETED")


def test_put_replaces_a_drafts_tasks(client, tenant, agent_id, store):
    batch = created(client, tenant, agent_id, status="draft")
    body = {
        "from_number": FROM,
        "agent_id": agent_id,
        "status": "draft",
        "tasks": tasks(2, 5551110000),
    }

    response = client.put(
        f"/batch-call/{batch['batch_call_id']}", json=body, headers=tenant.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["data"]["total_task_count"] == 2
    assert [t["to_number"] for t in stored_tasks(store, tenant, batch)] == [
        "+15551110000",
        "+15551110001",
    ]


def test_put_of_a_sent_batch_is_refused(client, tenant, agent_id):
    batch = created(client, tenant, agent_id)
    body = {"from_number": FROM, "agent_id": agent_id, "tasks": tasks(1)}

    response = client.put(
        f"/batch-call/{batch['batch_call_id']}", json=body, headers=tenant.headers
    )

    assert_error(response, 400, "Cannot update batch call with status SENT")


def test_pause_and_resume_a_sending_batch(client, tenant, agent_id):
    batch = created(client, tenant, agent_id)
    path = f"/batch-call/{batch['batch_call_id']}"

    paused = client.post(f"{path}/pause", headers=tenant.headers)
    paused_again = client.post(f"{path}/pause", headers=tenant.headers)
    resumed = client.post(f"{path}/resume", headers=tenant.headers)

    assert paused.json()["data"]["status"] == "paused"
    assert_error(paused_again, 400, "Cannot pause batch call with status PAUSED")
    assert resumed.json()["data"]["status"] == "sent"


def test_cancel_cancels_every_pending_task_at_once(client, tenant, agent_id, store):
    batch = created(client, tenant, agent_id)

    response = client.post(f"/batch-call/{batch['batch_call_id']}/cancel", headers=tenant.headers)

    data = response.json()["data"]
    assert (data["status"], data["pending"], data["cancelled"]) == ("cancelled", 0, 3)
    assert {t["status"] for t in stored_tasks(store, tenant, batch)} == {"cancelled"}
    deleted = client.delete(f"/batch-call/{batch['batch_call_id']}", headers=tenant.headers)
    assert deleted.status_code == 200


def test_tasks_are_listed_in_order_with_paging_and_a_status_filter(client, tenant, agent_id):
    batch = created(client, tenant, agent_id, tasks=tasks(5))
    path = f"/batch-call/{batch['batch_call_id']}/tasks"

    page = client.get(f"{path}?page=1&limit=2", headers=tenant.headers).json()
    pending = client.get(f"{path}?status=PENDING", headers=tenant.headers).json()["data"]
    calling = client.get(f"{path}?status=calling", headers=tenant.headers).json()["data"]

    assert page["message"] == "Batch call tasks retrieved successfully"
    assert [t["index"] for t in page["data"]["tasks"]] == [2, 3]
    assert page["data"]["pagination"]["total_count"] == 5
    task = page["data"]["tasks"][0]
    assert (task["status"], task["attempts"], task["call_id"], task["error_message"]) == (
        "pending",
        0,
        None,
        None,
    )
    assert "claimed_by" not in task
    assert pending["pagination"]["total_count"] == 5
    assert calling["tasks"] == []


def test_in_upstream_casing_a_task_status_is_upper_and_a_batch_status_lower(
    store, data_dir, tenant, agent_id, clock
):
    with app_client(store, clock=clock, data_dir=data_dir, enum_case="upstream") as client:
        batch = created(client, tenant, agent_id)
        listed = client.get(f"/batch-call/{batch['batch_call_id']}/tasks", headers=tenant.headers)

    assert batch["status"] == "sent"
    assert listed.json()["data"]["tasks"][0]["status"] == "PENDING"


# -- If-None-Match: polling a batch's progress ---------------------------------------------------


def test_an_unchanged_batch_is_answered_304_and_a_changed_one_in_full(client, tenant, agent_id):
    batch = created(client, tenant, agent_id)
    path = f"/batch-call/{batch['batch_call_id']}"
    first = client.get(path, headers=tenant.headers)
    polled = {**tenant.headers, "If-None-Match": first.headers["ETag"]}

    unchanged = client.get(path, headers=polled)
    client.patch(path, json={"name": "Renamed"}, headers=tenant.headers)
    changed = client.get(path, headers=polled)

    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert changed.status_code == 200
    assert changed.json()["data"]["name"] == "Renamed"


def test_a_page_of_tasks_unchanged_is_answered_304(client, tenant, agent_id):
    batch = created(client, tenant, agent_id)
    path = f"/batch-call/{batch['batch_call_id']}/tasks"
    first = client.get(path, headers=tenant.headers)

    again = client.get(path, headers={**tenant.headers, "If-None-Match": first.headers["ETag"]})

    assert again.status_code == 304
    assert again.headers["ETag"] == first.headers["ETag"]
