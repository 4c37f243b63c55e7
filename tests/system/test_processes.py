"""Several server processes on one PostgreSQL database: they serve the same organizations,
dispatch each scheduled call and each batch task's attempt exactly once between them (also
when one is killed), keep an organization's batch concurrency cap together, deliver
each webhook event once and each call's in order whichever process made the change, run a
create sent to several of them with one Idempotency-Key once, and stop honouring a revoked
key at once. `serve --workers N` runs such processes on one port.

Real processes (`calls-server serve`), a real database, a real dialer and webhook receiver
on loopback."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from calls_server.domain import batches, calls, keys
from calls_server.services.scheduler import INTERRUPTED
from calls_server.storage.postgres import PostgresStore
from tests.conftest import ADMIN_TOKEN, Receiver, RunningServer, running_server, wait_for
from tests.system.test_batch_server import (
    PhoneNetwork,
    assert_counters_match_tasks,
    batch_of,
    most_at_once,
    new_agent,
    tasks_of,
)

SECRET = "dialer-secret-0123456789"
SCHEDULED = 300
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@contextmanager
def servers(tmp_path: Path, count: int, **env: str) -> Iterator[list[RunningServer]]:
    """`count` server processes on one database (env names it), each on a port of its own."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(running_server(tmp_path / f"process-{n}" / "unused", **env))
            for n in range(count)
        ]


@pytest.fixture
def database(database_url: str) -> Iterator[PostgresStore]:
    """The test's own view of the database the servers share."""
    store = PostgresStore(database_url)
    store.add_organization(keys.new_organization(0, "acme"))
    yield store
    store.close()


def schedule_calls(store: PostgresStore, count: int, due: int) -> list[str]:
    """`count` scheduled phone calls of acme, all due at `due` (Unix seconds)."""
    made = []
    for n in range(count):
        call = calls.new_call(
            organization_id="acme",
            agent_id="agent",
            now=int(time.time() * 1000),
            call_type="phone_call",
            direction="outbound",
            from_number="+14157774444",
            to_number=f"+1213777{n:04d}",
        )
        store.add_call(calls.schedule(call, due, int(time.time() * 1000)))
        made.append(call["call_id"])
    return made


def dialed(receiver: Receiver) -> Counter[str]:
    """How many times the dialer received each call."""
    return Counter(json.loads(r.body)["call_id"] for r in receiver.received)


def settled(store: PostgresStore, call_ids: list[str]) -> bool:
    return all(store.get_call("acme", c)["call_status"] != "scheduled" for c in call_ids)


def dialer_env(database_url: str, receiver: Receiver) -> dict[str, str]:
    return {
        "CALLS_DATABASE_URL": database_url,
        "CALLS_DIALER_URL": receiver.url,
        "CALLS_DIALER_SECRET": SECRET,
        "CALLS_SCHEDULER_INTERVAL": "0.1",
    }


# -- the scheduler -------------------------------------------------------------------------------


def test_calls_falling_due_together_are_dialed_once_across_three_processes(
    tmp_path, database, database_url, receiver
):
    with servers(tmp_path, 3, **dialer_env(database_url, receiver)):
        call_ids = schedule_calls(database, SCHEDULED, due=int(time.time()) + 2)
        wait_for(lambda: settled(database, call_ids), timeout=120)

    times = dialed(receiver)
    assert set(times) == set(call_ids)
    assert max(times.values()) == 1
    final = [database.get_call("acme", c) for c in call_ids]
    assert {c["call_status"] for c in final} == {"ongoing"}
    claimants = Counter(calls.claimant(c) for c in final)
    assert len(claimants) > 1  # the processes shared the work


def test_a_process_killed_mid_run_leaves_no_call_dialed_twice_and_none_unsettled(
    tmp_path, database, database_url, receiver
):
    receiver.reply_to = lambda request: (202, 0.02)  # dialing takes a while
    with servers(tmp_path, 3, **dialer_env(database_url, receiver)) as running:
        call_ids = schedule_calls(database, SCHEDULED, due=int(time.time()) + 2)
        wait_for(lambda: len(receiver.received) >= SCHEDULED // 4, timeout=60)
        running[0].process.send_signal(signal.SIGKILL)
        running[0].process.wait()
        # The survivors dispatch the rest, and settle the killed one's claims.
        wait_for(lambda: settled(database, call_ids), timeout=120)

    times = dialed(receiver)
    assert max(times.values()) == 1  # never twice
    final = {c: database.get_call("acme", c) for c in call_ids}
    interrupted = [c for c, call in final.items() if call["call_status"] == "error"]
    for call_id in interrupted:
        assert final[call_id]["events"][-1]["data"]["result"] == INTERRUPTED
    # Only what the killed process had claimed and not recorded: its dials under way.
    assert len({calls.claimant(final[c]) for c in interrupted}) <= 1
    assert len(interrupted) <= 4
    ongoing = {c for c, call in final.items() if call["call_status"] == "ongoing"}
    assert ongoing | set(interrupted) == set(call_ids)
    assert ongoing <= set(times)  # every call recorded as dialed reached the dialer


# -- webhooks --------------------------------------------------------------------------------------


def webhook_env(database_url: str) -> dict[str, str]:
    return {
        "CALLS_DATABASE_URL": database_url,
        "CALLS_WEBHOOK_ALLOW_HTTP": "true",
        "CALLS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
    }


def deliveries(receiver: Receiver) -> list[dict]:
    return [json.loads(r.body) for r in receiver.received]


def test_each_event_is_delivered_once_and_in_order_whichever_process_made_the_change(
    tmp_path, database_url, receiver
):
    with servers(tmp_path, 3, **webhook_env(database_url)) as running:
        headers = running[0].new_key_headers("acme")
        hook = {"name": "hook", "url": receiver.url, "status_events": True}
        created = httpx.post(
            f"{running[1].base_url}/api/post-call-webhooks/create", json=hook, headers=headers
        )
        assert created.status_code == 200, created.text
        call_ids = []
        for n in range(20):  # each change of a call through another process
            base = [server.base_url + "/api" for server in running[n % 3 :] + running[: n % 3]]
            made = httpx.post(f"{base[0]}/calls/create", json={"agent_id": "a"}, headers=headers)
            call_id = made.json()["data"]["call"]["call_id"]
            for url, status in zip(base[1:], ("ongoing", "ended"), strict=True):
                changed = httpx.put(
                    f"{url}/calls/{call_id}", json={"call_status": status}, headers=headers
                )
                assert changed.status_code == 200, changed.text
            call_ids.append(call_id)
        wait_for(lambda: len(receiver.received) >= 60, timeout=60)
        time.sleep(1)  # room for a duplicate to show up

    got = deliveries(receiver)
    assert len(got) == 60
    assert len({d["event_id"] for d in got}) == 60  # each once
    for call_id in call_ids:
        order = [d["event"] for d in got if d["call"]["call_id"] == call_id]
        assert order == ["call_registered", "call_started", "call_ended"]


def test_three_processes_share_delivery_and_one_killed_mid_delivery_loses_nothing(
    tmp_path, database_url, receiver
):
    receiver.reply_to = lambda received: (200, 0.05)  # deliveries take a while: some in flight
    env = {**webhook_env(database_url), "CALLS_LOG_LEVEL": "info"}
    with servers(tmp_path, 3, **env) as running:
        headers = running[0].new_key_headers("acme")
        hook = {"name": "hook", "url": receiver.url, "status_events": True}
        created = httpx.post(
            f"{running[0].base_url}/api/post-call-webhooks/create", json=hook, headers=headers
        )
        assert created.status_code == 200, created.text
        # Each takes its share of the partitions (within a second or two of the others).
        wait_for(lambda: all("delivers webhook partitions" in s.log() for s in running), 30)
        survivors = [server.base_url + "/api" for server in running[1:]]
        call_ids = []
        for n in range(40):
            base = survivors[n % 2]
            made = httpx.post(f"{base}/calls/create", json={"agent_id": "a"}, headers=headers)
            call_id = made.json()["data"]["call"]["call_id"]
            changed = httpx.put(
                f"{base}/calls/{call_id}", json={"call_status": "ongoing"}, headers=headers
            )
            assert changed.status_code == 200, changed.text
            call_ids.append(call_id)
            if n == 20:  # mid-delivery: its attempts under way are cut off
                running[0].process.send_signal(signal.SIGKILL)
                running[0].process.wait()
        wait_for(lambda: len({d["event_id"] for d in deliveries(receiver)}) >= 80, timeout=60)
        time.sleep(1.5)  # room for a duplicate to show up
        logs = [server.log() for server in running]

    got = deliveries(receiver)
    assert len({d["event_id"] for d in got}) == 80  # every event of the 40 calls
    first_seen: dict[str, dict] = {}
    for delivery in got:
        first_seen.setdefault(delivery["event_id"], delivery)
    for call_id in call_ids:  # each call's events in order
        order = [d["event"] for d in first_seen.values() if d["call"]["call_id"] == call_id]
        assert order == ["call_registered", "call_started"]
    # Sent twice only if under way at the kill (same event_id): at most a handful.
    assert len(got) - 80 <= 8
    assert all("delivers webhook partitions" in log for log in logs)  # all three delivered


# -- keys ----------------------------------------------------------------------------------------


def test_a_key_revoked_on_one_process_fails_on_the_others_at_the_next_request(
    tmp_path, database_url
):
    with servers(tmp_path, 2, CALLS_DATABASE_URL=database_url) as (first, second):
        admin = httpx.post(
            f"{first.base_url}/api/organizations", json={"organization_id": "acme"}, headers=ADMIN
        )
        assert admin.status_code in (200, 201), admin.text
        key = httpx.post(f"{first.base_url}/api/organizations/acme/api-keys", headers=ADMIN)
        data = key.json()["data"]
        headers = {"X-API-KEY": data["api_key"], "X-API-SECRET": data["api_secret"]}
        before = httpx.get(f"{second.base_url}/api/calls", headers=headers)

        revoked = httpx.delete(
            f"{first.base_url}/api/organizations/acme/api-keys/{data['api_key_id']}",
            headers=ADMIN,
        )
        after = httpx.get(f"{second.base_url}/api/calls", headers=headers)

    assert before.status_code == 200
    assert revoked.status_code == 200
    assert after.status_code == 401
    assert after.json()["status"] == "error"


# -- serve --workers -------------------------------------------------------------------------------


def test_workers_share_the_port_and_the_database(tmp_path, database, database_url):
    with running_server(
        tmp_path / "unused", serve_args=("--workers", "2"), CALLS_DATABASE_URL=database_url
    ) as server:
        # Two workers are present on the database, besides this test's own view of it.
        wait_for(lambda: len(database.live_processes()) == 3, timeout=30)
        headers = server.new_key_headers()
        with httpx.Client(base_url=server.base_url + "/api", headers=headers) as client:
            made = [
                client.post("/calls/create", json={"agent_id": "a"}).json()["data"]["call"]
                for _ in range(40)
            ]
            listed = client.get("/calls", params={"limit": 100}).json()
    assert server.process.returncode == 0  # SIGTERM stopped the workers, then the parent
    assert {c["call_id"] for c in listed["data"]["calls"]} >= {c["call_id"] for c in made}
    wait_for(lambda: database.live_processes() == {database.process_id})


# -- idempotency keys ----------------------------------------------------------------------------


def test_one_key_sent_to_two_processes_at_once_creates_one_call(tmp_path, database_url):
    with servers(tmp_path, 2, CALLS_DATABASE_URL=database_url) as running:
        headers = {**running[0].new_key_headers("acme"), "Idempotency-Key": "once"}
        urls = [f"{server.base_url}/api/calls/create" for server in running]
        with ThreadPoolExecutor(20) as pool:
            answers = list(
                pool.map(
                    lambda n: httpx.post(urls[n % 2], json={"agent_id": "a"}, headers=headers),
                    range(20),
                )
            )
        listed = httpx.get(urls[0].replace("/create", ""), headers=headers).json()

    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["data"]["call"]["call_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 19
    assert listed["data"]["pagination"]["total"] == 1


# -- batch calls -----------------------------------------------------------------------------------


def batch_env(database_url: str, receiver: Receiver) -> dict[str, str]:
    return {**dialer_env(database_url, receiver), "CALLS_SCHEDULER_INTERVAL": "0.05"}


def start_batch(base: str, headers: dict[str, str], count: int, **settings: Any) -> str:
    body = {
        "from_number": "+14157774444",
        "agent_id": new_agent(base, headers),
        "tasks": [{"to_number": f"+1555{n:07d}"} for n in range(count)],
        **settings,
    }
    created = httpx.post(f"{base}/batch-call", json=body, headers=headers)
    assert created.status_code == 200, created.text
    return str(created.json()["data"]["batch_call_id"])


def test_two_processes_dial_each_attempt_of_a_batch_once_within_the_organizations_cap(
    tmp_path, database_url, receiver
):
    receiver.reply_to = lambda request: (202, 0.01)
    env = {**batch_env(database_url, receiver), "CALLS_BATCH_CONCURRENCY": "6"}
    with servers(tmp_path, 2, **env) as running:
        headers = running[0].new_key_headers("acme")
        network = PhoneNetwork(receiver, headers)
        network.base = lambda: running[1].base_url
        with network.running():
            first = start_batch(running[0].base_url, headers, 40)
            second = start_batch(running[1].base_url, headers, 40)
            done = lambda: all(  # noqa: E731
                batch_of(running[0].base_url, headers, b)["status"] != "sent"
                for b in (first, second)
            )
            wait_for(done, timeout=120)
        tasks = [t for b in (first, second) for t in tasks_of(running[0].base_url, headers, b)]
        listed = [
            httpx.get(f"{running[0].base_url}/api/calls/{t['call_id']}", headers=headers).json()
            for t in tasks
        ]

    times = dialed(receiver)
    assert len(times) == 80
    assert max(times.values()) == 1
    assert {t["status"] for t in tasks} == {"COMPLETED"}
    spans = [(c["data"]["start_timestamp"], c["data"]["end_timestamp"]) for c in listed]
    assert most_at_once(spans) <= 6


def test_a_process_killed_mid_batch_leaves_no_attempt_dialed_twice_and_none_lost(
    tmp_path, database_url, receiver
):
    receiver.reply_to = lambda request: (202, 0.02)
    with servers(tmp_path, 2, **batch_env(database_url, receiver)) as running:
        headers = running[0].new_key_headers("acme")
        network = PhoneNetwork(receiver, headers)
        network.base = lambda: running[1].base_url  # the survivor
        with network.running():
            batch_id = start_batch(running[0].base_url, headers, 90, concurrency_limit=10)
            wait_for(lambda: len(receiver.received) >= 30, timeout=60)
            running[0].process.send_signal(signal.SIGKILL)
            running[0].process.wait()
            wait_for(
                lambda: batch_of(running[1].base_url, headers, batch_id)["status"] != "sent",
                timeout=120,
            )
        batch = batch_of(running[1].base_url, headers, batch_id)
        tasks = tasks_of(running[1].base_url, headers, batch_id)

    assert max(dialed(receiver).values()) == 1
    assert {t["status"] for t in tasks} <= {"COMPLETED", "FAILED"}
    for task in tasks:
        assert task["status"] == "COMPLETED" or task["error_message"] == batches.INTERRUPTED
    assert sum(t["status"] == "FAILED" for t in tasks) <= 10
    assert_counters_match_tasks(batch, tasks)


def test_many_keys_each_sent_twenty_times_at_once_to_two_processes_answer_one_call_each(
    tmp_path, database_url
):
    """test_one_key_sent_to_two_processes_at_once_creates_one_call, round after round: twins
    that reach one process together wait for the one running there (a twin registering
    over it once made a 500 for one and a 409 for those waiting on it)."""
    rounds = 15
    with servers(tmp_path, 2, CALLS_DATABASE_URL=database_url) as running:
        headers = running[0].new_key_headers("acme")
        urls = [f"{server.base_url}/api/calls/create" for server in running]
        answered = []
        with ThreadPoolExecutor(20) as pool:
            for n in range(rounds):
                keyed = {**headers, "Idempotency-Key": f"key-{n}"}
                answered.append(
                    list(
                        pool.map(
                            lambda t, keyed=keyed: httpx.post(
                                urls[t % 2], json={"agent_id": "a"}, headers=keyed, timeout=30
                            ),
                            range(20),
                        )
                    )
                )
        listed = httpx.get(urls[0].replace("/create", ""), headers=headers).json()
        logs = "".join(server.log() for server in running)

    for answers in answered:
        assert Counter(a.status_code for a in answers) == {200: 20}, [a.text for a in answers]
        assert len({a.json()["data"]["call"]["call_id"] for a in answers}) == 1
        assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 19
    assert listed["data"]["pagination"]["total"] == rounds
    assert "Traceback" not in logs
