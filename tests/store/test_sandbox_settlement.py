"""Sandbox calls left under way by a stopped process: the sandbox records on each call it
plays which process plays it, the store finds those whose process no longer serves it
(`Store.abandoned_sandbox_calls`), and the sandbox of a live process ends them
(`SandboxDialer.cut_off_abandoned`). On both backends; several processes on PostgreSQL.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from calls_server.domain import calls
from calls_server.domain.batches import attempt_call_id
from calls_server.domain.errors import Conflict
from calls_server.integrations.dialer import job_for
from calls_server.services.sandbox import CUT_OFF_REASON, SandboxDialer
from calls_server.storage import Store
from calls_server.storage.embedded import EmbeddedStore
from calls_server.storage.postgres import PostgresStore
from tests.conftest import FakeClock

ORG = "acme"
STOPPED = "a-killed-process"  # a process id no live process has
NOW = 1_800_000_000_000


def phone_call(call_id: str, **metadata: Any) -> calls.Call:
    return calls.new_call(
        organization_id=ORG,
        agent_id="agent-1",
        now=NOW,
        call_type="phone_call",
        call_id=call_id,
        direction="outbound",
        from_number="+14157774444",
        to_number="+12137774445",
        metadata=metadata,
    )


def web_call(call_id: str) -> calls.Call:
    return calls.new_call(
        organization_id=ORG, agent_id="agent-1", now=NOW, call_type="web_call", call_id=call_id
    )


def playing(call: calls.Call, process: str) -> calls.Call:
    """`call` as the sandbox of `process` left it once it accepted it: marked, ongoing."""
    marked = calls.played_by(call, process, NOW)
    return calls.dispatched(marked, True, "accepted by the sandbox dialer", 1, NOW)


def sandbox(store: Store) -> SandboxDialer:
    return SandboxDialer(store, "http://127.0.0.1/recordings", clock=FakeClock(NOW + 60_000))


# -- what the store finds ------------------------------------------------------------------------
def test_an_ongoing_call_whose_sandbox_process_stopped_is_found(store):
    store.add_call(playing(phone_call("c1"), STOPPED))

    assert store.abandoned_sandbox_calls() == [(ORG, "c1", STOPPED)]


def test_a_registered_call_whose_sandbox_process_stopped_is_found(store):
    store.add_call(calls.played_by(web_call("w1"), STOPPED, NOW))  # its participant never joined

    assert store.abandoned_sandbox_calls() == [(ORG, "w1", STOPPED)]


def test_a_call_this_process_plays_is_not_found(store):
    store.add_call(playing(phone_call("c1"), store.process_id))

    assert store.abandoned_sandbox_calls() == []


def test_an_ended_sandbox_call_is_not_found(store):
    store.add_call(playing(phone_call("c1"), STOPPED))
    store.change_call(ORG, "c1", lambda c: calls.update(c, {"call_status": "ended"}, NOW + 1))

    assert store.abandoned_sandbox_calls() == []


def test_a_call_under_way_that_no_sandbox_plays_is_not_found(store):
    store.add_call(calls.dispatched(phone_call("c1"), True, "accepted (HTTP 202)", 1, NOW))
    store.add_call(web_call("w1"))

    assert store.abandoned_sandbox_calls() == []


def test_a_deleted_sandbox_call_is_not_found(store):
    store.add_call(playing(phone_call("c1"), STOPPED))
    store.delete_call(ORG, "c1")

    assert store.abandoned_sandbox_calls() == []


def test_the_calls_a_closed_embedded_store_played_are_found_on_its_next_open(data_dir):
    first = EmbeddedStore(data_dir)
    first.add_call(playing(phone_call("c1"), first.process_id))
    first.close()

    reopened = EmbeddedStore(data_dir)
    try:
        assert reopened.abandoned_sandbox_calls() == [(ORG, "c1", first.process_id)]
    finally:
        reopened.close()


def test_a_call_another_live_postgres_process_plays_is_found_only_once_it_stops(
    migrated_database_url,
):
    this = PostgresStore(migrated_database_url)
    try:
        other = PostgresStore(migrated_database_url)  # another process, as the database sees it
        other.add_call(playing(phone_call("c1"), other.process_id))
        while_it_runs = this.abandoned_sandbox_calls()
        other.close()  # as a kill -9 would: its connections, and its presence, are gone
        # Its backend ends, releasing its presence lock, a moment after the client closed
        # (longer on a busy machine): the next scheduler passes find the call.
        deadline = time.monotonic() + 10
        found = this.abandoned_sandbox_calls()
        while not found and time.monotonic() < deadline:
            time.sleep(0.05)
            found = this.abandoned_sandbox_calls()

        assert while_it_runs == []
        assert found == [(ORG, "c1", other.process_id)]
    finally:
        this.close()


def test_the_postgres_lookup_reads_the_partial_index_of_calls_played(migrated_database_url):
    store = PostgresStore(migrated_database_url)
    try:
        for n in range(500):
            store.add_call(calls.dispatched(phone_call(f"c{n}"), True, "accepted", 1, NOW))
        store.add_call(playing(phone_call("played"), STOPPED))
    finally:
        store.close()
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE calls")
        conn.execute("SET enable_seqscan = off")  # a table this small is cheaper to scan
        rows = conn.execute(
            "EXPLAIN SELECT organization_id, call_id, played_by FROM calls"
            " WHERE played_by IS NOT NULL AND played_by <> 'x'"
        ).fetchall()
    plan = "\n".join(row[0] for row in rows)

    assert "calls_played" in plan
    assert "Seq Scan" not in plan


# -- what the sandbox records, and ends ------------------------------------------------------------
def test_the_sandbox_records_its_process_and_draw_on_a_phone_call_before_playing_it(store):
    store.add_call(phone_call("c1", sandbox_duration_ms=600_000))
    dialer = sandbox(store)

    dialer.dial(job_for(store.get_call(ORG, "c1")))

    stored = store.get_call(ORG, "c1")
    assert stored["events"][-1]["event"] == calls.PLAYED_EVENT
    assert stored["events"][-1]["data"] == {"played_by": store.process_id, "sandbox_draw": 0}


def test_the_sandbox_records_its_process_on_a_web_call_before_playing_it(store):
    store.add_call(web_call("w1"))
    dialer = sandbox(store)

    dialer.play_web_call(store.get_call(ORG, "w1"))

    assert calls.player(store.get_call(ORG, "w1")) == store.process_id


def test_the_sandbox_leaves_a_batch_call_to_its_task(store):
    call_id = attempt_call_id("task-1", 1)
    store.add_call(phone_call(call_id, batch_call_id="batch_call_1", task_id="task-1"))
    dialer = sandbox(store)

    dialer.dial(job_for(store.get_call(ORG, call_id)))

    assert calls.player(store.get_call(ORG, call_id)) is None


def test_the_calls_a_stopped_sandbox_left_under_way_are_ended_in_error(store):
    store.add_call(playing(phone_call("c1"), STOPPED))
    store.add_call(calls.played_by(web_call("w1"), STOPPED, NOW))

    assert sandbox(store).cut_off_abandoned() == 2

    for call_id, was in (("c1", "ongoing"), ("w1", "registered")):
        call = store.get_call(ORG, call_id)
        assert (call["call_status"], call["disconnection_reason"]) == ("error", CUT_OFF_REASON)
        assert call["events"][-1]["event"] == calls.CUT_OFF_EVENT
        assert "stopped with its process" in call["events"][-1]["data"]["reason"]
        assert call["events"][-1]["data"]["previous_status"] == was
        assert call["end_timestamp"] == NOW + 60_000
    assert store.abandoned_sandbox_calls() == []


def test_cutting_off_leaves_ended_calls_and_calls_a_live_sandbox_plays_as_they_are(store):
    store.add_call(playing(phone_call("mine"), store.process_id))
    store.add_call(playing(phone_call("ended"), STOPPED))
    store.change_call(ORG, "ended", lambda c: calls.update(c, {"call_status": "ended"}, NOW + 1))
    before = {c: store.get_call(ORG, c) for c in ("mine", "ended")}

    assert sandbox(store).cut_off_abandoned() == 0

    assert {c: store.get_call(ORG, c) for c in ("mine", "ended")} == before


def test_a_call_played_again_by_a_live_process_is_not_cut_off_for_its_stopped_player(store):
    store.add_call(playing(phone_call("c1"), STOPPED))
    (found,) = store.abandoned_sandbox_calls()
    store.change_call(ORG, "c1", lambda c: calls.played_by(c, store.process_id, NOW + 1))

    with pytest.raises(Conflict, match="not played by the sandbox of process"):
        sandbox(store).cut_off(*found[:2], played_by=found[2])

    assert store.get_call(ORG, "c1")["call_status"] == "ongoing"
