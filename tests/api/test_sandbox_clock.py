"""Test clocks: an organization's time frozen and advanced through the API, everything that
falls due on the way run at its own time, other organizations untouched."""

from __future__ import annotations

import json

import pytest

from calls_server.domain import iso8601
from calls_server.storage.embedded import EmbeddedStore
from tests.conftest import add_tenant, app_client, assert_error

SANDBOX = {
    "sandbox": True,
    "webhook_allow_http": True,
    "webhook_allow_networks": "127.0.0.0/8",
}
PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}
DAY = 86_400
# A Monday, 09:00 UTC, well ahead of the real time.
MONDAY = "2030-01-07T09:00:00Z"


@pytest.fixture
def client(store, data_dir):
    with app_client(store, data_dir=data_dir, **SANDBOX) as test_client:
        yield test_client


def freeze(client, tenant, at: str | None = MONDAY) -> dict:
    body = {} if at is None else {"frozen_at": at}
    response = client.post("/api/sandbox/clock/freeze", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    data: dict = response.json()["data"]
    return data


def advance(client, tenant, **body) -> dict:
    response = client.post("/api/sandbox/clock/advance", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    data: dict = response.json()["data"]
    return data


def get(client, tenant, call_id: str) -> dict:
    call: dict = client.get(f"/api/calls/{call_id}", headers=tenant.headers).json()["data"]
    return call


def schedule(client, tenant, at_ms: int, **metadata) -> str:
    body = {**PHONE, "scheduled_timestamp": at_ms // 1000, "metadata": metadata}
    response = client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    call_id: str = response.json()["data"]["call"]["call_id"]
    return call_id


def add_hook(client, tenant, receiver) -> str:
    """A webhook of every status event, at `receiver`; its id."""
    hook = {"name": "hook", "url": receiver.url, "status_events": True}
    created = client.post("/api/post-call-webhooks/create", json=hook, headers=tenant.headers)
    assert created.status_code == 200, created.text
    hook_id: str = created.json()["data"]["id"]
    return hook_id


def test_a_clock_runs_on_the_real_time_until_frozen(client, tenant):
    data = client.get("/api/sandbox/clock", headers=tenant.headers).json()["data"]

    assert data["frozen"] is False
    assert data["organization_id"] == tenant.organization_id
    assert data["now"] == iso8601.utc(data["now_ms"])


def test_a_frozen_clock_stands_still_and_dates_what_is_created(client, tenant):
    frozen = freeze(client, tenant)

    call = client.post("/api/calls/create", json={"agent_id": "ag"}, headers=tenant.headers).json()[
        "data"
    ]["call"]

    assert frozen["now"] == MONDAY
    assert frozen["frozen"] is True
    assert call["created_at"] == iso8601.parse_utc(MONDAY)


def test_advancing_dials_a_call_scheduled_a_day_ahead_and_plays_it_out_at_its_time(client, tenant):
    start = freeze(client, tenant)["now_ms"]
    call_id = schedule(
        client, tenant, start + DAY * 1000, sandbox_outcome="completed", sandbox_duration_ms=60_000
    )

    moved = advance(client, tenant, seconds=DAY + 3600)

    call = get(client, tenant, call_id)
    assert call["call_status"] == "ended"
    assert call["start_timestamp"] == start + DAY * 1000
    assert call["end_timestamp"] == start + DAY * 1000 + 60_000
    assert moved["now_ms"] == start + (DAY + 3600) * 1000
    assert moved["steps"] >= 2  # the dial, then the end


def test_nothing_falls_due_before_its_time(client, tenant):
    start = freeze(client, tenant)["now_ms"]
    call_id = schedule(client, tenant, start + DAY * 1000)

    advance(client, tenant, seconds=DAY - 60)

    assert get(client, tenant, call_id)["call_status"] == "scheduled"


def test_the_post_call_webhook_arrives_with_the_clocks_times(client, tenant, receiver):
    start = freeze(client, tenant)["now_ms"]
    add_hook(client, tenant, receiver)
    call_id = schedule(client, tenant, start + DAY * 1000, sandbox_outcome="completed")

    advance(client, tenant, seconds=2 * DAY)

    events = [json.loads(r.body) for r in receiver.received]
    ended = [e for e in events if e["call"]["call_id"] == call_id and e["event"] == "call_ended"]
    assert len(ended) == 1
    assert ended[0]["call"]["end_timestamp"] > start + DAY * 1000
    assert [e["event"] for e in events if e["call"]["call_id"] == call_id] == [
        "call_scheduled",
        "call_started",
        "call_ended",
    ]


def test_a_failing_webhook_is_retried_with_its_back_off_as_the_clock_advances(
    client, tenant, receiver
):
    receiver.replies = [(500, 0.0), (500, 0.0)]  # then 202
    freeze(client, tenant)
    hook_id = add_hook(client, tenant, receiver)
    client.post("/api/calls/create", json={"agent_id": "ag"}, headers=tenant.headers)
    advance(client, tenant, seconds=1)
    assert len(receiver.received) == 1

    advance(client, tenant, seconds=3600)

    page = client.get(f"/api/post-call-webhooks/{hook_id}/events", headers=tenant.headers)
    events = page.json()["data"]["events"]
    assert len(receiver.received) == 3
    assert events[0]["status"] == "delivered"
    attempts = [a["at"] for a in events[0]["attempts"]]
    assert attempts[1] - attempts[0] == 30_000  # the first retry after 30 s
    assert attempts[2] - attempts[1] == 60_000  # then twice as long


def test_another_organizations_clock_is_untouched(client, tenant, other_tenant):
    freeze(client, tenant)

    theirs = client.get("/api/sandbox/clock", headers=other_tenant.headers).json()["data"]
    call = client.post(
        "/api/calls/create", json={"agent_id": "ag"}, headers=other_tenant.headers
    ).json()["data"]["call"]

    assert theirs["frozen"] is False
    assert call["created_at"] < iso8601.parse_utc(MONDAY)


def test_a_clock_resumed_ahead_of_the_real_time_never_runs_backwards(client, tenant):
    freeze(client, tenant)

    resumed = client.post("/api/sandbox/clock/resume", headers=tenant.headers)

    assert resumed.status_code == 200
    assert resumed.json()["data"]["frozen"] is False
    assert resumed.json()["data"]["now"] == MONDAY


def test_a_clock_cannot_be_frozen_in_its_past(client, tenant):
    freeze(client, tenant)

    response = client.post(
        "/api/sandbox/clock/freeze",
        json={"frozen_at": "2030-01-01T00:00:00Z"},
        headers=tenant.headers,
    )

    assert_error(response, 400, "cannot move backwards")
    assert client.get("/api/sandbox/clock", headers=tenant.headers).json()["data"]["now"] == MONDAY


def test_a_clock_cannot_be_advanced_into_its_past(client, tenant):
    freeze(client, tenant)

    response = client.post(
        "/api/sandbox/clock/advance", json={"to": "2030-01-01T00:00:00Z"}, headers=tenant.headers
    )

    assert_error(response, 400, "cannot move backwards")


def test_a_running_clock_is_not_advanced(client, tenant):
    response = client.post(
        "/api/sandbox/clock/advance", json={"seconds": 60}, headers=tenant.headers
    )

    assert_error(response, 400, "not frozen")


@pytest.mark.parametrize("body", [{}, {"seconds": 1, "to": MONDAY}])
def test_an_advance_names_exactly_one_of_seconds_and_to(client, tenant, body):
    freeze(client, tenant)

    response = client.post("/api/sandbox/clock/advance", json=body, headers=tenant.headers)

    assert_error(response, 400, "exactly one of 'seconds' and 'to'")


def test_the_clock_is_not_there_with_the_sandbox_off(store, data_dir, tenant):
    with app_client(store, data_dir=data_dir) as client:
        response = client.get("/api/sandbox/clock", headers=tenant.headers)

    assert_error(response, 404, "sandbox is off")


def test_an_idempotency_key_expires_on_the_clock(client, tenant):
    freeze(client, tenant)
    headers = {**tenant.headers, "Idempotency-Key": "nightly-job"}
    first = client.post("/api/calls/create", json={"agent_id": "ag"}, headers=headers)
    kept = client.post("/api/calls/create", json={"agent_id": "ag"}, headers=headers)

    advance(client, tenant, seconds=2 * DAY)
    after = client.post("/api/calls/create", json={"agent_id": "ag"}, headers=headers)

    assert kept.headers["Idempotent-Replayed"] == "true"
    assert kept.json()["data"]["call"]["call_id"] == first.json()["data"]["call"]["call_id"]
    assert "Idempotent-Replayed" not in after.headers
    assert after.json()["data"]["call"]["call_id"] != first.json()["data"]["call"]["call_id"]


def test_delivered_webhook_events_expire_on_the_clock(client, tenant, receiver):
    freeze(client, tenant)
    hook_id = add_hook(client, tenant, receiver)
    client.post("/api/calls/create", json={"agent_id": "ag"}, headers=tenant.headers)
    advance(client, tenant, seconds=1)
    events = f"/api/post-call-webhooks/{hook_id}/events"
    assert len(client.get(events, headers=tenant.headers).json()["data"]["events"]) == 1

    advance(client, tenant, seconds=8 * DAY)

    assert client.get(events, headers=tenant.headers).json()["data"]["events"] == []


def test_a_batch_waits_out_its_quiet_hours_and_retry_wait_on_the_clock(client, tenant):
    freeze(client, tenant, at="2030-01-07T23:00:00Z")  # quiet until 08:00
    agent = client.post(
        "/api/agents/create", json={"agent_name": "Campaigner"}, headers=tenant.headers
    ).json()["data"]
    batch = {
        "name": "Renewals",
        "from_number": PHONE["from_number"],
        "agent_id": agent["agent_id"],
        "timezone": "UTC",
        "quiet_hours": {"enabled": True, "start_time": "22:00", "end_time": "08:00"},
        "retry_config": {"enabled": True, "max_attempts": 2},
        "retry_rules": [
            {"condition": "no_answer", "retry_timing": {"type": "AFTER", "duration_minutes": 30}}
        ],
        "tasks": [
            {
                "to_number": "+15550000000",
                "dynamic_variables": {
                    "sandbox_outcome": "no_answer,completed",
                    "sandbox_duration_ms": 20000,
                },
            }
        ],
    }
    created = client.post("/batch-call", json=batch, headers=tenant.headers)
    assert created.status_code == 200, created.text

    advance(client, tenant, seconds=DAY)

    listed = client.get("/api/calls", headers=tenant.headers).json()["data"]["calls"]
    started = sorted(iso8601.utc(call["created_at"]) for call in listed)
    assert started == ["2030-01-08T08:00:00Z", "2030-01-08T08:30:20Z"]
    assert sorted(call["call_status"] for call in listed) == ["ended", "ended"]


def test_a_reset_puts_the_clock_back_on_the_real_time_even_from_ahead(client, tenant):
    freeze(client, tenant)

    client.post("/api/sandbox/reset", headers=tenant.headers)

    clock = client.get("/api/sandbox/clock", headers=tenant.headers).json()["data"]
    assert clock["frozen"] is False
    assert clock["now_ms"] < iso8601.parse_utc(MONDAY)


def seeded_run(directory) -> list[tuple]:
    """A scenario of drawn outcomes, probable faults and clock moves, on a fresh store: what
    each create was answered, and how each call played out, relative to the clock."""
    store = EmbeddedStore(directory)
    try:
        tenant = add_tenant(store, "org-seeded")
        settings = {**SANDBOX, "sandbox_seed": 42}
        with app_client(store, data_dir=directory, **settings) as client:
            start = freeze(client, tenant)["now_ms"]
            rule = {"operation_id": "createPhoneCall", "action": "error", "probability": 0.5}
            client.post("/api/sandbox/faults", json={**rule, "seed": 3}, headers=tenant.headers)
            answers, call_ids = [], []
            for n in range(8):
                body = {**PHONE, "scheduled_timestamp": start // 1000 + 3600 * (n + 1)}
                response = client.post(
                    "/api/calls/create-phone-call", json=body, headers=tenant.headers
                )
                answers.append(response.status_code)
                if response.status_code == 200:
                    call_ids.append(response.json()["data"]["call"]["call_id"])
            advance(client, tenant, seconds=DAY)
            played = []
            for call_id in call_ids:
                call = get(client, tenant, call_id)
                played.append(
                    (
                        call["call_status"],
                        call["disconnection_reason"],
                        call["call_duration"],
                        (call["end_timestamp"] or 0) - start,
                    )
                )
        return [tuple(answers), *played]
    finally:
        store.close()


def test_the_same_seed_faults_and_clock_moves_give_the_same_run(tmp_path):
    first = seeded_run(tmp_path / "first")
    second = seeded_run(tmp_path / "second")

    assert first == second
    assert 503 in first[0]
    assert 200 in first[0]


def test_a_freeze_without_a_body_freezes_now(client, tenant):
    response = client.post("/api/sandbox/clock/freeze", headers=tenant.headers)

    assert response.status_code == 200, response.text
    assert response.json()["data"]["frozen"] is True
