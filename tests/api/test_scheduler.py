"""Scheduled phone calls are dialed once, when due: also across restarts and races.

The scheduler reads the time from a clock the tests move, and the tests run its passes
themselves (`run_once`), so nothing here waits for time to pass but the one end-to-end
test with a real server process.
"""

from __future__ import annotations

import pytest

from calls_server.domain import calls
from calls_server.integrations.dialer import HttpDialer
from calls_server.services.scheduler import INTERRUPTED, UNRECORDED, Scheduler
from calls_server.storage.postgres import PostgresStore
from tests.conftest import app_client, assert_error, wait_for

SECRET = "dialer-secret-0123456789"
PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}


@pytest.fixture
def client(store, data_dir, clock):
    """The API on the test's clock; no dialer, so the app runs no scheduler of its own."""
    with app_client(store, clock=clock, data_dir=data_dir) as test_client:
        yield test_client


@pytest.fixture
def scheduler(store, receiver, clock):
    """A scheduler on the test's clock, dialing the receiver; its passes run when called."""
    running = Scheduler(store, HttpDialer(receiver.url, SECRET, timeout=5), clock=clock)
    yield running
    running.stop()


def schedule(client, tenant, clock, in_seconds: int) -> dict:
    body = {**PHONE, "scheduled_timestamp": clock() // 1000 + in_seconds}
    response = client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    call: dict = response.json()["data"]["call"]
    return call


def stored(store, tenant, call) -> dict:
    return store.get_call(tenant.organization_id, call["call_id"])


def settled(store, tenant, call) -> dict:
    """The call once the scheduler has recorded the dialer's answer."""
    wait_for(lambda: stored(store, tenant, call)["call_status"] != "scheduled")
    return stored(store, tenant, call)


def test_a_call_that_is_not_due_is_not_dialed(client, tenant, store, receiver, scheduler, clock):
    call = schedule(client, tenant, clock, 60)
    clock.advance(59)

    scheduler.run_once()

    assert receiver.received == []
    assert stored(store, tenant, call)["call_status"] == "scheduled"


def test_a_due_call_is_dialed_once_and_becomes_ongoing(
    client, tenant, store, receiver, scheduler, clock
):
    call = schedule(client, tenant, clock, 60)
    clock.advance(61)

    scheduler.run_once()
    final = settled(store, tenant, call)
    scheduler.run_once()  # later passes find nothing to do
    scheduler.run_once()

    assert final["call_status"] == "ongoing"
    assert final["metadata"]["execution_status"] == "executed"
    assert final["metadata"]["is_scheduled"] is False
    assert [e["event"] for e in final["events"]][-2:] == [
        "Scheduled call due",
        "Call dispatched to dialer",
    ]
    assert len(receiver.received) == 1


def test_a_refused_scheduled_call_fails(client, tenant, store, receiver, scheduler, clock):
    receiver.replies = [(422, 0.0)]
    call = schedule(client, tenant, clock, 60)
    clock.advance(60)

    scheduler.run_once()
    final = settled(store, tenant, call)

    assert final["call_status"] == "error"
    assert final["metadata"]["execution_status"] == "failed"
    assert "refused (HTTP 422)" in final["events"][-1]["data"]["result"]


def test_a_cancelled_call_is_never_dialed(client, tenant, store, receiver, scheduler, clock):
    call = schedule(client, tenant, clock, 60)

    cancelled = client.delete(f"/api/calls/{call['call_id']}/schedule", headers=tenant.headers)
    clock.advance(120)
    scheduler.run_once()

    assert cancelled.status_code == 200
    assert receiver.received == []
    assert stored(store, tenant, call)["call_status"] == "registered"


def test_a_rescheduled_call_is_dialed_at_the_new_time_only(
    client, tenant, store, receiver, scheduler, clock
):
    call = schedule(client, tenant, clock, 60)
    later = clock() // 1000 + 300

    moved = client.put(
        f"/api/calls/{call['call_id']}/schedule",
        json={"scheduled_timestamp": later},
        headers=tenant.headers,
    )
    clock.advance(120)  # past the old time
    scheduler.run_once()
    assert moved.status_code == 200
    assert receiver.received == []

    clock.advance(200)  # past the new one
    scheduler.run_once()
    settled(store, tenant, call)
    scheduler.run_once()

    assert len(receiver.received) == 1


def test_a_call_being_dispatched_can_no_longer_be_moved_or_cancelled(
    client, tenant, store, receiver, scheduler, clock
):
    receiver.replies = [(202, 1.5)]  # a slow dialer
    call = schedule(client, tenant, clock, 60)
    clock.advance(60)
    scheduler.run_once()
    wait_for(lambda: len(receiver.received) == 1)
    url = f"/api/calls/{call['call_id']}/schedule"

    moved = client.put(url, json={"scheduled_timestamp": 4102444800}, headers=tenant.headers)
    cancelled = client.delete(url, headers=tenant.headers)

    assert_error(moved, 409, "being dispatched")
    assert_error(cancelled, 409, "being dispatched")
    assert settled(store, tenant, call)["call_status"] == "ongoing"


def test_a_claim_interrupted_by_a_restart_is_marked_failed_not_dialed_again(
    store, tenant, receiver, clock
):
    call = calls.new_call(
        organization_id=tenant.organization_id,
        agent_id="ag",
        now=clock() - 5000,
        call_type="phone_call",
        from_number="+14157774444",
        to_number="+12137774445",
    )
    due = calls.schedule(call, clock() // 1000 - 1, clock() - 10_000)
    store.add_call(calls.claim_due(due, clock(), "a-stopped-process"))
    scheduler = Scheduler(store, HttpDialer(receiver.url, SECRET), clock=clock)

    scheduler.start()  # settles what a previous process left claimed, before any pass
    scheduler.stop()

    final = stored(store, tenant, call)
    assert final["call_status"] == "error"
    assert final["events"][-1]["data"]["result"] == INTERRUPTED
    assert receiver.received == []


class OutcomeUnrecorded:
    """The store, but the write after a claim fails: the database went out of reach
    between the dial and the recording of its outcome (as in a failover)."""

    def __init__(self, store) -> None:
        self._store = store
        self.changes = 0

    def change_call(self, *args, **kwargs):
        self.changes += 1
        if self.changes == 2:
            raise ConnectionError("the database cannot be reached")
        return self._store.change_call(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._store, name)


def test_a_dial_whose_outcome_was_not_recorded_is_settled_at_the_next_pass_not_dialed_again(
    client, tenant, store, receiver, clock
):
    call = schedule(client, tenant, clock, 1)
    clock.advance(1)
    scheduler = Scheduler(OutcomeUnrecorded(store), HttpDialer(receiver.url, SECRET), clock=clock)
    try:
        scheduler.run_once()  # claims, dials, cannot record the outcome
        wait_for(lambda: len(receiver.received) == 1)
        wait_for(lambda: not scheduler._in_flight)
        left = stored(store, tenant, call)

        scheduler.run_once()
    finally:
        scheduler.stop()

    assert calls.being_dispatched(left)
    final = stored(store, tenant, call)
    assert final["call_status"] == "error"
    assert final["events"][-1]["data"]["result"] == UNRECORDED
    assert len(receiver.received) == 1


def test_a_claim_of_a_process_seen_serving_is_settled_only_after_its_grace(
    migrated_database_url, receiver, clock
):
    this = PostgresStore(migrated_database_url)
    other = PostgresStore(migrated_database_url)  # another process, as the database sees it
    call = calls.new_call(
        organization_id="acme",
        agent_id="ag",
        now=clock() - 5000,
        call_type="phone_call",
        from_number="+14157774444",
        to_number="+12137774445",
    )
    due = calls.schedule(call, clock() // 1000 - 1, clock() - 10_000)
    this.add_call(calls.claim_due(due, clock(), other.process_id))
    scheduler = Scheduler(this, HttpDialer(receiver.url, SECRET), clock=clock, presence_grace=1.0)

    def settled_after_a_pass() -> bool:
        scheduler.run_once()
        return this.get_call("acme", call["call_id"])["call_status"] == "error"

    try:
        scheduler.run_once()  # sees the claimant serving
        other.close()  # its presence gone: a failover's moment, or its end
        wait_for(lambda: other.process_id not in this.live_processes())
        scheduler.run_once()
        within_grace = this.get_call("acme", call["call_id"])
        wait_for(settled_after_a_pass)
        final = this.get_call("acme", call["call_id"])
    finally:
        scheduler.stop()
        this.close()

    assert calls.being_dispatched(within_grace)
    assert final["events"][-1]["data"]["result"] == INTERRUPTED
    assert receiver.received == []
