"""The PostgreSQL store beyond the storage contract (test_storage.py and every app test run
on both backends, see conftest.py): reopening, agents, numbers and webhooks, listing
exactly as a filter-and-sort over everything would, the outbox in the same transaction,
migrations, and 503s naming the cause when the database is out of reach.

One PostgreSQL server runs for the session (tests/postgres_server.py); each test gets a
fresh database."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
import select
import socket
import threading
import time

import psycopg
import pytest

from calls_server.domain import agents, calls, idempotency, keys, webhooks
from calls_server.domain.errors import (
    AgentNotFound,
    BadRequest,
    CallNotFound,
    DuplicateId,
    OrganizationNotFound,
    OutcomeUnknown,
    PhoneNumberNotFound,
    QuotaExceeded,
    StoreUnavailable,
    WebhookEventNotFound,
    WebhookNotFound,
)
from calls_server.domain.listing import CallQuery, normalize_filters
from calls_server.domain.quotas import Quota
from calls_server.integrations.clock import wall_clock
from calls_server.storage import postgres
from calls_server.storage.postgres import PostgresStore, migrate, migrations
from tests.conftest import wait_for
from tests.postgres_server import TcpProxy
from tests.store.test_storage import a_call
from tests.unit.test_call_index import random_call, random_query, reference

EVERYTHING = CallQuery(page=0, limit=100, sort_by="created_at", sort_order="ascending", filters={})


@pytest.fixture
def store(database_url):
    opened = PostgresStore(database_url)
    yield opened
    opened.close()


def ids(page) -> list[str]:
    return [call["call_id"] for call in page]


# -- the contract of test_storage.py ---------------------------------------------------------------


def test_add_call_with_a_duplicate_id_in_the_same_organization_raises(store):
    store.add_call(a_call(call_id="x"))

    with pytest.raises(DuplicateId):
        store.add_call(a_call(call_id="x"))
    store.add_call(a_call(org="other", call_id="x"))  # ids are per organization


def test_change_call_that_raises_writes_nothing(store):
    call = a_call()
    store.add_call(call)

    def fail(stored):
        stored["agent_id"] = "changed"
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        store.change_call("org", call["call_id"], fail)
    assert store.get_call("org", call["call_id"]) == call
    assert (
        store.list_calls("org", dataclasses.replace(EVERYTHING, filters={"agent_id": ["changed"]}))[
            1
        ]
        == 0
    )


def test_change_call_returns_and_stores_the_new_record(store):
    call = a_call()
    store.add_call(call)

    changed = store.change_call(
        "org", call["call_id"], lambda c: calls.update(c, {"call_status": "ongoing"}, 5)
    )

    assert changed["call_status"] == "ongoing"
    assert store.get_call("org", call["call_id"]) == changed
    assert store.list_calls("org", EVERYTHING)[0] == [changed]
    with pytest.raises(CallNotFound):
        store.change_call("org", "nope", lambda c: c)


def test_delete_call_removes_it_from_get_and_list(store):
    call = a_call()
    store.add_call(call)

    assert store.delete_call("org", call["call_id"]) == call

    with pytest.raises(CallNotFound):
        store.get_call("org", call["call_id"])
    assert store.list_calls("org", EVERYTHING)[:2] == ([], 0)
    with pytest.raises(CallNotFound):
        store.delete_call("org", call["call_id"])


def test_delete_call_whose_check_raises_removes_nothing(store):
    call = a_call()
    store.add_call(call)

    def refuse(stored):
        raise ValueError("keep it")

    with pytest.raises(ValueError, match="keep it"):
        store.delete_call("org", call["call_id"], check=refuse)
    assert store.get_call("org", call["call_id"]) == call


def test_list_calls_counts_all_matches_and_returns_one_page(store):
    for n in range(5):
        store.add_call(a_call(call_id=f"c{n}", created_at=n))
    query = CallQuery(page=1, limit=2, sort_by="created_at", sort_order="ascending", filters={})

    page, total, position = store.list_calls("org", query)

    assert ids(page) == ["c2", "c3"]
    assert total == 5
    assert position is not None  # c4 follows


def test_scheduled_calls_are_every_organizations_due_ones(store):
    now = wall_clock()
    for org, call_id, at in (("a", "soon", 100), ("b", "sooner", 50), ("a", "later", 10**9)):
        store.add_call(calls.schedule(a_call(org=org, call_id=call_id, created_at=now), at, 0))
    store.add_call(a_call(call_id="plain"))

    assert ids(store.scheduled_calls(due_by=100)) == ["sooner", "soon"]
    assert len(store.scheduled_calls(due_by=2**62)) == 3


def test_organizations_and_keys_round_trip(store):
    store.add_organization(keys.new_organization(1, "acme"))
    record, _ = keys.new_api_key("acme", 2)
    store.add_api_key(record)

    assert store.get_organization("acme")["organization_id"] == "acme"
    assert store.find_api_key(record["api_key"]) == record
    assert store.list_api_keys("acme") == [record]
    assert store.find_api_key("sk_unknown") is None
    with pytest.raises(DuplicateId):
        store.add_organization(keys.new_organization(3, "acme"))
    with pytest.raises(OrganizationNotFound):
        store.get_organization("ghost")


def test_a_revocation_is_seen_at_once_by_another_store_on_the_same_database(store, database_url):
    other = PostgresStore(database_url)  # another process, as far as the database can tell
    try:
        store.add_organization(keys.new_organization(1, "acme"))
        record, _ = keys.new_api_key("acme", 2)
        store.add_api_key(record)
        assert other.find_api_key(record["api_key"])["status"] == "ACTIVE"

        store.change_api_key("acme", record["api_key_id"], lambda k: keys.revoked(k, 3))

        assert other.find_api_key(record["api_key"])["status"] == "REVOKED"
    finally:
        other.close()


def test_everything_survives_a_reopen(store, database_url):
    call = a_call()
    store.add_call(call)
    store.change_call("org", call["call_id"], lambda c: calls.update(c, {"transcript": "t"}, 5))
    store.add_call(a_call(call_id="gone"))
    store.delete_call("org", "gone")
    store.add_organization(keys.new_organization(1, "acme"))
    changed = store.get_call("org", call["call_id"])
    store.close()

    reopened = PostgresStore(database_url)
    try:
        assert reopened.get_call("org", call["call_id"]) == changed
        assert reopened.list_calls("org", EVERYTHING)[1] == 1
        assert reopened.get_organization("acme")["organization_id"] == "acme"
    finally:
        reopened.close()


def test_concurrent_writers_lose_nothing(store):
    threads, per_thread = 8, 12  # within a call's limits: 96 metadata keys, 97 events
    store.add_call(a_call(call_id="shared"))
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(per_thread):
                store.add_call(a_call(call_id=f"t{n}-{i}"))
                store.change_call(
                    "org",
                    "shared",
                    lambda c, n=n, i=i: calls.update(
                        c, {"metadata": {f"t{n}-{i}": i}}, wall_clock()
                    ),
                )
        except BaseException as e:  # surfaced below: a thread's exception is not the test's
            errors.append(e)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    assert errors == []
    assert store.list_calls("org", EVERYTHING)[1] == 1 + threads * per_thread
    shared = store.get_call("org", "shared")
    assert len(shared["metadata"]) == threads * per_thread
    assert len(shared["events"]) == 1 + threads * per_thread


# -- agents, phone numbers, webhooks ---------------------------------------------------------------


def test_agents_round_trip_within_their_organization(store):
    store.add_organization(keys.new_organization(1, "acme"))
    first = agents.new_agent("acme", {"agent_name": "First"}, 1)
    second = agents.new_agent("acme", {"agent_name": "Second"}, 2)
    store.add_agent(first)
    store.add_agent(second)

    assert store.agents("acme") == [first, second]
    assert store.get_agent("acme", first["agent_id"]) == first
    with pytest.raises(AgentNotFound):
        store.get_agent("other", first["agent_id"])
    renamed = store.change_agent("acme", first["agent_id"], lambda a: {**a, "agent_name": "R"})
    assert store.get_agent("acme", first["agent_id"]) == renamed
    assert store.delete_agent("acme", first["agent_id"]) == renamed
    assert store.agents("acme") == [second]
    with pytest.raises(AgentNotFound):
        store.delete_agent("acme", first["agent_id"])
    with pytest.raises(OrganizationNotFound):
        store.add_agent(agents.new_agent("ghost", {"agent_name": "G"}, 1))


def test_phone_numbers_are_unique_within_an_organization(store):
    store.add_organization(keys.new_organization(1, "acme"))
    number = {"organization_id": "acme", "phone_number": "+15550001", "nickname": None}
    store.add_phone_number(number)

    with pytest.raises(DuplicateId, match="already exists"):
        store.add_phone_number(dict(number))
    assert store.phone_numbers("acme") == [number]
    changed = store.change_phone_number("acme", "+15550001", lambda n: {**n, "nickname": "x"})
    assert store.get_phone_number("acme", "+15550001") == changed
    assert store.delete_phone_number("acme", "+15550001") == changed
    with pytest.raises(PhoneNumberNotFound):
        store.get_phone_number("acme", "+15550001")


def webhook(org: str = "acme", **fields) -> webhooks.Webhook:
    given = {"name": "hook", "url": "https://example.com/h", "is_active": True, **fields}
    return webhooks.new_webhook(org, given, 1, 0, 10)


def test_deleting_a_webhook_removes_its_events_and_assignments(store):
    store.add_organization(keys.new_organization(1, "acme"))
    hook, other = webhook(status_events=True), webhook(status_events=True)
    store.add_webhook(hook)
    store.add_webhook(other)
    agent = agents.assigned(
        agents.assigned(agents.new_agent("acme", {"agent_name": "A"}, 1), hook["id"]),
        other["id"],
    )
    store.add_agent(agent)
    store.record_webhook_events(owing, lambda events: None)
    store.add_call(a_call(org="acme", agent_id=agent["agent_id"]))
    assert len(store.pending_webhook_events()) == 2

    def refuse(stored):
        raise ValueError("in use")

    with pytest.raises(ValueError, match="in use"):
        store.delete_webhook("acme", hook["id"], check=refuse)
    assert store.get_webhook("acme", hook["id"]) == hook

    assert store.delete_webhook("acme", hook["id"]) == hook

    with pytest.raises(WebhookNotFound):
        store.get_webhook("acme", hook["id"])
    with pytest.raises(WebhookNotFound):
        store.list_webhook_events("acme", hook["id"])
    assert [e["webhook_id"] for e in store.pending_webhook_events()] == [other["id"]]
    assert agents.webhook_ids(store.get_agent("acme", agent["agent_id"])) == [other["id"]]
    assert store.webhooks("acme") == [other]


# -- the outbox ------------------------------------------------------------------------------------


def owing(old, new, hooks, assigned):
    """The production event source, with a clock and ids of its own."""
    return webhooks.owed_events(old, new, hooks, assigned, wall_clock(), f"evt_{wall_clock()}")


def first_told(told: list[list[dict]]) -> list[str]:
    """The ids of the events told, each once, in the order first told (an event may be
    told again: the listener looks at it again)."""
    return list(dict.fromkeys(e["event_id"] for batch in told for e in batch))


def test_a_call_change_records_its_events_and_tells_the_listener_after_commit(store, database_url):
    store.add_organization(keys.new_organization(1, "acme"))
    hook = webhook(status_events=True)
    store.add_webhook(hook)
    told: list[list[dict]] = []
    seen_committed: list[int] = []

    def listener(events):
        # Told after the commit: another connection sees the events already.
        with psycopg.connect(database_url) as conn:
            seen_committed.append(conn.execute("SELECT count(*) FROM webhook_events").fetchone()[0])
        told.append(events)

    store.record_webhook_events(owing, listener)
    call = a_call(org="acme")
    store.add_call(call)
    store.change_call(
        "acme", call["call_id"], lambda c: calls.update(c, {"call_status": "ongoing"}, 5)
    )
    wait_for(lambda: len(first_told(told)) == 2)

    pending = store.pending_webhook_events()
    assert [e["event"] for e in pending] == ["call_registered", "call_started"]
    assert first_told(told) == ids_of(pending)
    assert set(told[0][0]) == {
        "event_id", "webhook_id", "organization_id", "call_id", "status", "next_attempt_at",
    }  # fmt: skip
    assert all(seen >= len(batch) for seen, batch in zip(seen_committed, told, strict=True))
    events, total = store.list_webhook_events("acme", hook["id"])
    assert total == 2
    assert [e["event"] for e in events] == ["call_started", "call_registered"]  # newest first


def test_an_event_source_that_raises_leaves_the_change_unwritten(store):
    store.add_organization(keys.new_organization(1, "acme"))
    store.add_webhook(webhook(status_events=True))
    call = a_call(org="acme")
    store.add_call(call)
    told: list = []

    def broken(old, new, hooks, assigned):
        raise RuntimeError("source failed")

    store.record_webhook_events(broken, told.append)

    with pytest.raises(RuntimeError, match="source failed"):
        store.change_call(
            "acme", call["call_id"], lambda c: calls.update(c, {"call_status": "ongoing"}, 5)
        )
    with pytest.raises(RuntimeError, match="source failed"):
        store.add_call(a_call(org="acme", call_id="never"))
    with pytest.raises(RuntimeError, match="source failed"):
        store.delete_call("acme", call["call_id"])

    assert store.get_call("acme", call["call_id"]) == call
    with pytest.raises(CallNotFound):
        store.get_call("acme", "never")
    assert store.pending_webhook_events() == []
    assert told == []


def test_concurrent_changes_of_a_call_are_told_in_commit_order(store):
    store.add_organization(keys.new_organization(1, "acme"))
    hook = webhook(status_events=True)
    store.add_webhook(hook)
    store.add_call(a_call(org="acme", call_id="shared"))
    numbers = itertools.count()
    told: list[list[dict]] = []

    def every_change(old, new, hooks, assigned):  # one event per change, whatever it is
        event = webhooks.owed_events(None, new, hooks, [], 0, f"evt_{next(numbers)}")[0]
        return [event]

    def listener(events) -> None:
        time.sleep(0.005)  # a listener that takes a while: the next change commits meanwhile
        told.append(events)

    store.record_webhook_events(every_change, listener)

    def work(n: int) -> None:
        for i in range(10):
            store.change_call("acme", "shared", lambda c, n=n, i=i: {**c, "metadata": {f"t{n}": i}})

    workers = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wait_for(lambda: len(first_told(told)) == 80)

    recorded = ids_of(store.pending_webhook_events())  # in the order of their inserts
    assert first_told(told) == recorded


def test_a_listing_reads_one_snapshot_and_leaves_the_connection_at_the_defaults(database_url):
    store = PostgresStore(database_url, max_connections=1)  # one connection: the same one
    try:
        with store._transaction(snapshot=True) as conn:
            inside = conn.execute("SHOW transaction_isolation").fetchone()
            read_only = conn.execute("SHOW transaction_read_only").fetchone()
        store.list_calls("org", EVERYTHING)
        with store._transaction() as conn:
            after = conn.execute("SHOW transaction_isolation").fetchone()
    finally:
        store.close()

    assert (inside, read_only, after) == (("repeatable read",), ("on",), ("read committed",))


def test_a_value_postgresql_cannot_hold_is_a_bad_request(store):
    with pytest.raises(BadRequest, match="cannot be stored"):
        store.add_call(a_call(transcript="nul \x00 inside"))
    assert store.list_calls("org", EVERYTHING)[1] == 0


def test_an_event_insert_that_fails_leaves_the_change_unwritten(store):
    store.add_organization(keys.new_organization(1, "acme"))
    hook = webhook(status_events=True)
    store.add_webhook(hook)
    call = a_call(org="acme")
    store.add_call(call)

    def twice(old, new, hooks, assigned):  # the same event twice: its key is taken
        event = owing(old, new, hooks, assigned)[0]
        return [event, dict(event)]

    store.record_webhook_events(twice, lambda events: None)

    with pytest.raises(psycopg.errors.UniqueViolation):
        store.change_call(
            "acme", call["call_id"], lambda c: calls.update(c, {"call_status": "ongoing"}, 5)
        )
    assert store.get_call("acme", call["call_id"]) == call
    assert store.pending_webhook_events() == []


def test_webhook_events_change_list_and_prune(store):
    store.add_organization(keys.new_organization(1, "acme"))
    hook = webhook(status_events=True)
    store.add_webhook(hook)
    told: list = []
    store.record_webhook_events(owing, told.append)
    for n in range(3):
        store.add_call(a_call(org="acme", call_id=f"c{n}"))
    first, second, third = store.pending_webhook_events()
    wait_for(lambda: len(first_told(told)) == 3)
    told.clear()

    attempt = webhooks.Attempt(at=1_000, latency_ms=5, status_code=200)
    delivered = store.change_webhook_event(
        "acme",
        hook["id"],
        first["event_id"],
        lambda e: webhooks.attempted(e, attempt, webhooks.RetryPolicy()),
    )
    failed = webhooks.Attempt(at=2_000, latency_ms=5, status_code=500)
    store.change_webhook_event(
        "acme",
        hook["id"],
        second["event_id"],
        lambda e: {**webhooks.attempted(e, failed, webhooks.RetryPolicy()), "status": "failed"},
    )

    assert delivered["status"] == "delivered"
    # Nothing became pending (the third, pending all along, may be looked at again).
    assert set(first_told(told)) <= {third["event_id"]}
    assert [e["event_id"] for e in store.pending_webhook_events()] == [third["event_id"]]
    page, total = store.list_webhook_events("acme", hook["id"], status="delivered")
    assert (ids_of(page), total) == ([first["event_id"]], 1)
    page, total = store.list_webhook_events("acme", hook["id"], offset=1, limit=1)
    assert (ids_of(page), total) == ([second["event_id"]], 3)
    assert store.get_webhook_event("acme", hook["id"], first["event_id"]) == delivered
    with pytest.raises(WebhookEventNotFound):
        store.get_webhook_event("acme", hook["id"], "evt_none")
    with pytest.raises(WebhookNotFound):
        store.get_webhook_event("acme", "webhook_none", first["event_id"])

    store.change_webhook_event(
        "acme", hook["id"], second["event_id"], lambda e: webhooks.redelivered(e, 3_000)
    )
    wait_for(lambda: second["event_id"] in first_told(told))  # queued again

    assert store.prune_webhook_events(settled_before=1_500) == 1
    with pytest.raises(WebhookEventNotFound):
        store.get_webhook_event("acme", hook["id"], first["event_id"])
    assert store.list_webhook_events("acme", hook["id"])[1] == 2


def ids_of(events) -> list[str]:
    return [e["event_id"] for e in events]


# -- quotas and idempotency ------------------------------------------------------------------------


def test_quotas_count_calls_and_bytes_without_counting_rows(database_url):
    store = PostgresStore(database_url, quota=Quota(max_calls=2))
    try:
        store.add_call(a_call(call_id="a"))
        store.add_call(a_call(call_id="b"))
        with pytest.raises(QuotaExceeded):
            store.add_call(a_call(call_id="c"))
        with pytest.raises(CallNotFound):
            store.get_call("org", "c")
        store.delete_call("org", "a")
        store.add_call(a_call(call_id="c"))  # room again
        store.add_call(a_call(org="other", call_id="x"))  # per organization
    finally:
        store.close()

    size = len(calls_json(a_call(call_id="z")))
    store = PostgresStore(database_url, quota=Quota(max_bytes=3 * size + 200))
    try:
        store.add_call(a_call(org="bytes", call_id="z"))
        with pytest.raises(QuotaExceeded):
            store.change_call("bytes", "z", lambda c: {**c, "transcript": "x" * 4 * size})
        assert store.get_call("bytes", "z")["transcript"] is None
        store.change_call("bytes", "z", lambda c: {**c, "transcript": "x" * size})
    finally:
        store.close()


def calls_json(call) -> bytes:
    import orjson

    return orjson.dumps(call)


def test_idempotent_answers_are_kept_replaced_and_pruned_when_expired(store):
    def answer(key: str, created: int, expires: int, status: int = 201):
        return {
            "scope": "org",
            "key": key,
            "fingerprint": "f",
            "status": status,
            "body": {"n": 1},
            "headers": {},
            "created_at": created,
            "expires_at": expires,
        }

    store.keep_idempotent(answer("a", 1, 10))
    store.keep_idempotent(answer("b", 2, 100))
    assert store.find_idempotent("org", "a") == answer("a", 1, 10)
    assert store.find_idempotent("other", "a") is None

    store.keep_idempotent(answer("b", 20, 100, status=200))  # replaces b, drops a (expired)

    assert store.find_idempotent("org", "a") is None
    assert store.find_idempotent("org", "b")["status"] == 200


# -- listing ---------------------------------------------------------------------------------------


def grown(store, rng: random.Random, org: str) -> dict[str, calls.Call]:
    """Random calls stored in order (so that seq follows their numbers, the reference's
    tie-breaker), then some added, deleted and replaced through the store."""
    docs: dict[str, calls.Call] = {}
    for n in range(rng.randint(0, 60)):
        docs[str(n)] = {**random_call(rng, n), "organization_id": org}
        store.add_call(docs[str(n)])
    for n in range(len(docs), len(docs) + 20):
        action = rng.random()
        if action < 0.4 or not docs:
            docs[str(n)] = {**random_call(rng, n), "organization_id": org}
            store.add_call(docs[str(n)])
        elif action < 0.7:
            victim = rng.choice(list(docs))
            store.delete_call(org, docs.pop(victim)["call_id"])
        else:
            target = rng.choice(list(docs))
            new = {
                **random_call(rng, int(target)),
                "call_id": docs[target]["call_id"],
                "organization_id": org,
            }
            store.change_call(org, new["call_id"], lambda _, new=new: new)
            docs[target] = new
    return docs


def expected(docs: dict[str, calls.Call], query: CallQuery) -> tuple[list[str], int]:
    found, total = reference(docs, query)
    return [docs[str(i)]["call_id"] for i in found], total


@pytest.mark.parametrize("seed", range(20))
def test_list_calls_equals_filter_and_sort_over_everything(store, seed):
    rng = random.Random(seed)
    docs = grown(store, rng, "org")
    store.add_call(a_call(org="neighbour", call_id="c1"))  # never listed for "org"

    for _ in range(30):
        query = random_query(rng)
        page, total, _ = store.list_calls("org", query)
        assert (ids(page), total) == expected(docs, query), query


@pytest.mark.parametrize("seed", range(20))
def test_following_cursors_lists_every_match_once_in_order(store, seed):
    rng = random.Random(seed)
    docs = grown(store, rng, "org")

    for _ in range(10):
        query = random_query(rng)
        every = dataclasses.replace(query, page=0, limit=len(docs) + 1)
        wanted, total = expected(docs, every)
        # From the first page, and from a numbered page's position.
        for start in (dataclasses.replace(query, page=0), query):
            followed: list[str] = []
            page = start
            while True:
                found, counted, position = store.list_calls("org", page)
                assert counted == total
                followed += ids(found)
                if position is None:
                    break
                page = dataclasses.replace(page, page=0, cursor=page.next_cursor(position))
            assert followed == wanted[start.offset :], query


def test_a_cursor_skips_nothing_and_repeats_nothing_while_calls_come_and_go(store):
    for n in range(10):
        store.add_call(a_call(call_id=f"c{n}", created_at=n))
    query = CallQuery(page=0, limit=4, sort_by="created_at", sort_order="descending", filters={})
    first, _, position = store.list_calls("org", query)
    store.add_call(a_call(call_id="new", created_at=100))  # before the cursor: not repeated
    store.delete_call("org", "c5")

    after = dataclasses.replace(query, cursor=query.next_cursor(position))
    second, total, _ = store.list_calls("org", after)

    assert ids(first) == ["c9", "c8", "c7", "c6"]
    assert ids(second) == ["c4", "c3", "c2", "c1"]
    assert total == 10


def test_a_malformed_or_foreign_cursor_is_a_bad_request(store):
    query = CallQuery(page=0, limit=4, sort_by="created_at", sort_order="descending", filters={})
    other = dataclasses.replace(query, sort_order="ascending")

    for cursor in (
        "!!!",
        query.next_cursor([]),
        query.next_cursor([7]),
        query.next_cursor([0, 1]),
        other.next_cursor([0, 1, 1, 1]),
    ):
        with pytest.raises(BadRequest):
            store.list_calls("org", dataclasses.replace(query, cursor=cursor))


def test_transcript_search_is_a_case_insensitive_literal_substring(store):
    entries = [{"role": "agent", "content": "Ask about a REFUND"}, {"role": "user", "content": 5}]
    store.add_call(a_call(call_id="object", transcript_object=entries))
    store.add_call(a_call(call_id="plain", transcript="50% off_now \\o/"))
    store.add_call(a_call(call_id="parts", transcript="ab", transcript_object=[{"content": "cd"}]))
    store.add_call(a_call(call_id="turkish", transcript="İstanbul"))
    store.add_call(a_call(call_id="none"))

    def search(text: str) -> set[str]:
        query = dataclasses.replace(
            EVERYTHING, filters=normalize_filters({"transcript_search": text})
        )
        found = set(ids(store.list_calls("org", query)[0]))
        reference_found = {
            c["call_id"] for c in store.list_calls("org", EVERYTHING)[0] if query.matches(c)
        }
        assert found == reference_found
        return found

    assert search("refund") == {"object"}
    assert search("% OFF_") == {"plain"}
    assert search("0%") == {"plain"}
    assert search("_") == {"plain"}
    assert search("\\o/") == {"plain"}
    assert search("%%") == set()
    assert search("b\nc") == set()  # no match across two parts
    assert search("bc") == set()
    assert search("İstanbul") == {"turkish"}  # lower-cased as Python does
    assert search("") == {"object", "plain", "parts", "turkish", "none"}


def test_transcript_search_and_listing_use_indexes(store, database_url):
    for n in range(3000):
        store.add_call(
            a_call(org=f"org{n % 30}", call_id=f"c{n}", transcript=f"call {n} about {n % 97}")
        )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE calls")
        # A table this small is cheaper to scan: what is shown is that the indexes serve
        # these queries (the planner picks them once scanning is priced out, as it is for
        # tables of real size).
        conn.execute("SET enable_seqscan = off")

        def plan(statement: str) -> str:
            rows = conn.execute("EXPLAIN " + statement).fetchall()
            return "\n".join(row[0] for row in rows)

        searched = plan("SELECT doc FROM calls WHERE search_text LIKE '%about 42%'")
        newest = plan(
            "SELECT doc FROM calls WHERE organization_id = 'org3'"
            " ORDER BY created_at DESC, seq DESC LIMIT 10"
        )
        counted = plan(
            "SELECT count(*) FROM calls WHERE organization_id = 'org3'"
            " AND agent_id = ANY('{agent-1}') AND call_status = ANY('{ended}')"
            " AND direction = ANY('{inbound}') AND start_timestamp IS NOT NULL"
        )
    assert "calls_search" in searched
    assert "Seq Scan" not in searched
    assert "calls_created" in newest
    assert "Sort" not in newest
    # Every filter checked in the index: the count reads no table row.
    assert "Index Only Scan" in counted


def test_of_two_processes_claiming_one_key_one_gets_it_until_released_or_expired(
    store, database_url
):
    other = PostgresStore(database_url)
    try:
        mine = idempotency.claim("acme", "k", "print-a", now=1_000, lease_ms=60_000)
        theirs = idempotency.claim("acme", "k", "print-a", now=1_001, lease_ms=60_000)

        assert store.claim_idempotent(mine, now=1_000) is None  # claimed
        assert other.claim_idempotent(theirs, now=1_001) == mine  # running elsewhere
        other.release_idempotent(theirs)  # not its claim: nothing removed
        assert store.find_idempotent("acme", "k") == mine
        store.release_idempotent(mine)
        assert other.claim_idempotent(theirs, now=1_001) is None  # free again
        later = idempotency.claim("acme", "k", "print-a", now=61_001, lease_ms=60_000)
        assert store.claim_idempotent(later, now=61_001) is None  # its lease ran out
    finally:
        other.close()


# -- several processes on one database -------------------------------------------------------------


def pending_event(store, call_id: str) -> None:
    """Record a call (of organization acme, which has a webhook) that owes an event."""
    store.add_call(a_call(org="acme", call_id=call_id))


@pytest.fixture
def acme(store):
    store.add_organization(keys.new_organization(1, "acme"))
    store.add_webhook(webhook(status_events=True))
    return store


def test_each_process_has_an_id_and_sees_the_others_live(store, database_url):
    other = PostgresStore(database_url)
    try:
        assert other.process_id != store.process_id
        assert store.live_processes() == other.live_processes()
        assert store.live_processes() >= {store.process_id, other.process_id}
    finally:
        other.close()
    assert other.process_id not in store.live_processes()


def test_a_process_whose_connection_dies_leaves_the_live_ones(store, database_url):
    proxy = TcpProxy(database_url)
    other = PostgresStore(proxy.url())
    try:
        assert other.process_id in store.live_processes()
        proxy.cut()  # as kill -9 would: its connections close without a word
        wait_for(lambda: other.process_id not in store.live_processes())
    finally:
        other.close()


def test_one_process_at_a_time_is_told_of_pending_events(acme, database_url):
    other = PostgresStore(database_url)
    told_here: list[list[dict]] = []
    told_there: list[list[dict]] = []
    acme.record_webhook_events(owing, told_here.append)
    other.record_webhook_events(owing, told_there.append)
    try:
        pending_event(other, "made-there")  # recorded by the other process
        pending_event(acme, "made-here")
        wait_for(lambda: len(first_told(told_here)) == 2)

        assert first_told(told_here) == ids_of(acme.pending_webhook_events())
        assert told_there == []
    finally:
        acme.close()
    # The deliverer stopped: the other takes over and is told of every pending event.
    wait_for(lambda: len(first_told(told_there)) == 2)
    pending_event(other, "after")
    wait_for(lambda: len(first_told(told_there)) == 3)
    assert first_told(told_there) == ids_of(other.pending_webhook_events())
    other.close()


def test_a_deliverer_that_loses_its_connection_forgets_and_another_takes_over(acme, database_url):
    proxy = TcpProxy(database_url)
    cut_off = PostgresStore(proxy.url())
    forgotten = threading.Event()
    told_there: list[list[dict]] = []
    try:
        cut_off.record_webhook_events(owing, lambda events: None, forgotten.set)
        acme.record_webhook_events(owing, told_there.append)
        pending_event(acme, "c1")
        assert cut_off._presence.delivering  # it asked first
        proxy.cut()

        wait_for(forgotten.is_set)
        wait_for(lambda: len(first_told(told_there)) == 1)
        assert first_told(told_there) == ids_of(acme.pending_webhook_events())
    finally:
        cut_off.close()


# -- migrations ------------------------------------------------------------------------------------


def test_migrations_applied_again_are_a_no_op(store, database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        before = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
        assert [version for version, _ in before] == [v for v, _ in migrations()]

        assert migrate(conn) == []

        assert (
            conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall() == before
        )
    PostgresStore(database_url).close()  # and opening again changes nothing either


@pytest.mark.parametrize("version", [v for v, _ in migrations()][:-1])
def test_a_database_of_an_earlier_version_is_migrated_keeping_its_records(databases, version):
    url = databases.fresh_url()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            assert migrate(conn, up_to=version) == list(range(1, version + 1))
            conn.execute(
                "INSERT INTO webhook_events (organization_id, webhook_id, event_id, status,"
                " created_at, doc) VALUES ('acme', 'wh', 'evt_1', 'pending', 1, %s::jsonb)",
                ('{"event_id": "evt_1", "call_id": "c1", "next_attempt_at": 5}',),
            )
            conn.execute(
                "INSERT INTO organization_usage (organization_id, calls, bytes)"
                " VALUES ('acme', 3, 300)"
            )
        opened = PostgresStore(url)
        told: list[list[dict]] = []
        try:
            opened.record_webhook_events(owing, told.append)
            wait_for(lambda: first_told(told) == ["evt_1"])
            assert told[0][0]["call_id"] == "c1"
            assert [e["event_id"] for e in opened.pending_webhook_events()] == ["evt_1"]
            assert opened.counts()["calls"] == 3
        finally:
            opened.close()
        with psycopg.connect(url) as conn:
            versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == [v for v, _ in migrations()]
    finally:
        databases.drop(url)


def test_concurrent_opens_of_a_new_database_migrate_it_once(databases):
    url = databases.fresh_url()
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            opened.append(PostgresStore(url))
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=open_store) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    try:
        assert errors == []
        with psycopg.connect(url) as conn:
            counted = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
            assert counted == (len(migrations()),)
    finally:
        for s in opened:
            s.close()
        databases.drop(url)


# -- an unreachable database -----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_database_is_a_503_naming_the_cause_in_bounded_time():
    url = f"postgresql://calls@127.0.0.1:{closed_port()}/calls"
    started = time.monotonic()

    with pytest.raises(StoreUnavailable, match=r"cannot be reached.*(refused|failed)") as refused:
        PostgresStore(url, pool_timeout=1.0, connect_timeout=1)

    assert refused.value.status_code == 503
    assert time.monotonic() - started < 10


def test_a_lost_database_is_a_503_naming_the_cause(database_url):
    proxy = TcpProxy(database_url)
    store = PostgresStore(proxy.url(), pool_timeout=1.0, connect_timeout=1)
    try:
        store.add_call(a_call(call_id="kept"))
        proxy.cut()
        started = time.monotonic()

        with pytest.raises(StoreUnavailable) as lost:
            store.get_call("org", "kept")
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            store.check_ready()

        assert time.monotonic() - started < 15
        assert "database" in lost.value.error
    finally:
        store.close()


def test_connections_the_server_dropped_are_replaced(store, database_url):
    store.add_call(a_call(call_id="kept"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'calls-server' AND pid <> pg_backend_pid()"
        )

    assert store.get_call("org", "kept")["call_id"] == "kept"
    store.check_ready()


def test_a_pool_with_no_free_connection_is_a_503_not_an_endless_wait(database_url):
    store = PostgresStore(database_url, max_connections=1, pool_timeout=0.5)
    holding = threading.Thread(target=_slow, args=(store, 2))
    try:
        store.add_call(a_call(call_id="kept"))
        holding.start()
        time.sleep(0.3)  # the one connection is taken
        started = time.monotonic()

        with pytest.raises(StoreUnavailable, match="none of the store's 1 connections") as busy:
            store.get_call("org", "kept")

        assert time.monotonic() - started < 5
        assert busy.value.status_code == 503
        holding.join()
        assert store.get_call("org", "kept")["call_id"] == "kept"  # free again
    finally:
        store.close()


def test_a_statement_that_runs_too_long_is_a_503(database_url):
    store = PostgresStore(database_url, statement_timeout=0.2)
    try:
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            _slow(store)
    finally:
        store.close()


def _slow(store: PostgresStore, seconds: float = 5) -> None:
    with store._transaction() as conn:
        conn.execute("SELECT pg_sleep(%s)", (seconds,))


def test_a_closed_store_is_a_503(database_url):
    store = PostgresStore(database_url)
    store.close()

    with pytest.raises(StoreUnavailable, match="closed"):
        store.get_call("org", "x")


# -- connections the database dropped -------------------------------------------------------------


def terminate_store_connections(databases, database_url: str) -> int:
    """End, from an admin connection, every backend serving the store's connections to the
    test's database (as a restart would), waiting until each is gone; how many there were."""
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(databases.admin_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
            " WHERE application_name = 'calls-server' AND datname = %s",
            (name,),
        ).fetchone()
    assert ended is not None
    return int(ended[0])


@pytest.fixture
def unheard(monkeypatch, database_url):
    """A store of one connection handed out without the check that hears that the database
    ended it: as when the database's word has not arrived yet (pg_terminate_backend and a
    shutdown end backends asynchronously), deterministically."""
    monkeypatch.setattr(postgres, "_check_connection", lambda conn: None)
    opened = PostgresStore(database_url, min_connections=1, max_connections=1)
    yield opened
    opened.close()


def test_after_the_database_dropped_every_connection_reads_and_writes_run_at_once(
    store, databases, database_url
):
    store.add_organization(keys.new_organization(0, "acme"))
    store.add_call(a_call(call_id="kept"))
    assert terminate_store_connections(databases, database_url) >= 1

    assert store.get_call("org", "kept")["call_id"] == "kept"
    store.add_call(a_call(call_id="added"))
    assert store.list_calls("org", EVERYTHING).total == 2


def test_a_read_on_a_connection_the_database_dropped_runs_again_on_a_fresh_one(
    unheard, databases, database_url
):
    unheard.add_call(a_call(call_id="kept"))

    for read in (
        lambda: unheard.get_call("org", "kept")["call_id"] == "kept",  # one statement
        lambda: unheard.list_calls("org", EVERYTHING).total == 1,  # a snapshot transaction
        lambda: unheard.find_api_key("none") is None,
        lambda: unheard.check_ready() is None,
    ):
        assert terminate_store_connections(databases, database_url) >= 1
        assert read()


def test_a_read_that_fails_on_a_live_connection_is_not_run_again(database_url, monkeypatch):
    store = PostgresStore(database_url, statement_timeout=0.2)
    runs = []

    def too_long(conn, *args, **kwargs):
        runs.append(1)
        conn.execute("SELECT pg_sleep(1)")

    monkeypatch.setattr(postgres, "_locked", too_long)  # what get_agent reads with
    try:
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            store.get_agent("org", "agent")
        assert runs == [1]
    finally:
        store.close()


def test_a_write_on_a_connection_the_database_dropped_runs_again_only_if_nothing_was_sent(
    unheard, databases, database_url
):
    # A transaction finds the connection dropped at its BEGIN: nothing sent, begun again.
    assert terminate_store_connections(databases, database_url) >= 1
    unheard.add_organization(keys.new_organization(0, "acme"))
    assert unheard.get_organization("acme")["organization_id"] == "acme"

    # A write of one statement (its own transaction) finds it out only once the statement
    # was sent, and nothing tells whether the database ran it before ending the connection
    # (the error is the same either way; a backend ended while waiting for a synchronous
    # standby has committed). So it is OutcomeUnknown, and the write is not run again; here
    # the database had not received it, and the client's retry adds it.
    assert terminate_store_connections(databases, database_url) >= 1
    with pytest.raises(StoreUnavailable, match="terminating connection") as lost:
        unheard.add_call(a_call(call_id="once"))
    assert type(lost.value) is OutcomeUnknown
    with pytest.raises(CallNotFound):
        unheard.get_call("org", "once")
    unheard.add_call(a_call(call_id="once"))  # the client's retry
    assert unheard.list_calls("org", EVERYTHING).total == 1


def test_a_write_whose_connection_is_dropped_after_it_was_sent_is_a_503_not_run_again(
    store, databases, database_url
):
    store.add_call(a_call(call_id="kept", call_status="registered"))
    changes = []

    def change(call):
        changes.append(call["call_id"])
        terminate_store_connections(databases, database_url)  # mid-transaction
        return {**call, "call_status": "ongoing"}

    with pytest.raises(StoreUnavailable, match="terminating connection") as lost:
        store.change_call("org", "kept", change)

    assert type(lost.value) is StoreUnavailable  # its COMMIT never sent: nothing written
    assert changes == ["kept"]
    assert store.get_call("org", "kept")["call_status"] == "registered"


# -- changes whose outcome the store cannot know, and a database that hangs -------------------


class FaultyProxy:
    """A TCP port on 127.0.0.1 forwarding to the test's PostgreSQL server (as TcpProxy), with
    two faults: `hang()` forwards nothing more and closes nothing (a database that stopped:
    its kernel still takes what is sent) until `resume()`, at once or right after a client
    sent `after` (forwarded: the server acts on it); `lose_reply(marker, to_commit)`
    drops the connection that sent `marker` right before the server's reply to it reaches
    the client, or, with `to_commit`, its reply to the COMMIT that follows (the change was
    committed: only the client does not know)."""

    def __init__(self, url: str) -> None:
        params = psycopg.conninfo.conninfo_to_dict(url)
        host, port = str(params.get("host") or "localhost"), int(params.get("port") or 5432)
        self._target = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        self._url = url
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._running = threading.Event()
        self._running.set()
        self._lose: tuple[bytes, bool] | None = None
        self._hang_after: bytes | None = None
        self.lost = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        port = self._listener.getsockname()[1]
        return psycopg.conninfo.make_conninfo(self._url, host="127.0.0.1", port=str(port))

    def hang(self, after: bytes | None = None) -> None:
        if after is None:
            self._running.clear()
        self._hang_after = after

    def resume(self) -> None:
        self._running.set()

    def lose_reply(self, marker: bytes, to_commit: bool = False) -> None:
        self._lose = (marker, to_commit)

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            family, address = self._target
            server = socket.socket(family, socket.SOCK_STREAM)
            server.connect(address)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        marked = None  # (marker, to_commit) once this connection sent the marker
        try:
            while True:
                self._running.wait()
                readable, _, _ = select.select([client, server], [], [], 0.05)
                if not self._running.is_set():
                    continue  # hung: what arrived stays unread
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        if self._lose is not None and self._lose[0] in data:
                            marked, self._lose = self._lose, None
                        server.sendall(data)
                        if self._hang_after is not None and self._hang_after in data:
                            self._running.clear()
                        continue
                    if marked is not None and (not marked[1] or b"COMMIT\x00" in data):
                        self.lost.set()
                        return  # the reply is dropped with the connection
                    client.sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def faulty(database_url):
    """A store through a FaultyProxy, and the proxy; statements bounded at 1 s (so a store
    call at 1 + CALL_MARGIN s), readiness at 1 s."""
    proxy = FaultyProxy(database_url)
    opened = PostgresStore(
        proxy.url(), pool_timeout=2.0, connect_timeout=2, statement_timeout=1.0, ready_timeout=1.0
    )
    yield opened, proxy
    proxy.resume()
    opened.close()


def test_a_change_whose_commit_reply_is_lost_is_outcome_unknown_though_it_was_stored(
    faulty, database_url
):
    store, proxy = faulty
    proxy.lose_reply(b"INSERT INTO organizations", to_commit=True)

    with pytest.raises(OutcomeUnknown) as unknown:
        store.add_organization(keys.new_organization(0, "acme"))

    assert proxy.lost.is_set()
    assert unknown.value.status_code == 503
    assert unknown.value.message == "Outcome unknown"
    assert "may or may not have been stored" in unknown.value.error
    assert "same Idempotency-Key" in unknown.value.error
    assert store.get_organization("acme")["organization_id"] == "acme"  # it was committed


def test_a_single_statement_write_whose_reply_is_lost_is_outcome_unknown(faulty):
    store, proxy = faulty
    proxy.lose_reply(b"INSERT INTO calls")  # the common add_call: one autocommit statement

    with pytest.raises(OutcomeUnknown, match="may or may not have been stored"):
        store.add_call(a_call(call_id="sent"))

    assert store.get_call("org", "sent")["call_id"] == "sent"


def test_a_change_whose_connection_is_lost_before_its_commit_is_the_plain_503(
    store, databases, database_url
):
    store.add_call(a_call(call_id="kept", call_status="registered"))

    def change(call):
        terminate_store_connections(databases, database_url)  # COMMIT never sent
        return {**call, "call_status": "ongoing"}

    with pytest.raises(StoreUnavailable) as lost:
        store.change_call("org", "kept", change)

    assert type(lost.value) is StoreUnavailable  # not OutcomeUnknown: nothing was written
    assert store.get_call("org", "kept")["call_status"] == "registered"


def test_a_hung_database_is_a_503_within_the_store_calls_bound_and_ready_within_its_own(faulty):
    store, proxy = faulty
    store.add_call(a_call(call_id="kept"))
    proxy.hang()

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="did not answer within 6 s") as read:
        store.get_call("org", "kept")
    read_took = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.check_ready()
    ready_took = time.monotonic() - started

    assert type(read.value) is StoreUnavailable  # a read: nothing to be unsure of
    # The upper bounds are loose, for a loaded machine (the suite runs on 2 busy cores), but
    # still below what they guard against: a read run again waits 2 x 6 s, and a readiness
    # check without its own bound waits the store call's 6 s.
    assert 5.5 < read_took < 11  # 1 s statement_timeout + CALL_MARGIN, not run again
    assert ready_took < 5.5  # its own bound (1 s), then a probe (connect_timeout, 2 s)
    proxy.resume()
    wait_for(lambda: _ready(store), timeout=10)
    assert store.get_call("org", "kept")["call_id"] == "kept"


def test_a_write_whose_commit_hangs_past_the_bound_is_outcome_unknown(faulty):
    store, proxy = faulty

    store.add_call(a_call(call_id="kept", call_status="registered"))
    proxy.hang(after=b"COMMIT")  # the server commits; its answer is never read

    started = time.monotonic()
    with pytest.raises(OutcomeUnknown, match="did not answer within 6 s"):
        store.change_call("org", "kept", lambda call: {**call, "call_status": "ongoing"})

    assert time.monotonic() - started < 8
    proxy.resume()
    assert store.get_call("org", "kept")["call_status"] == "ongoing"  # it was committed


def test_a_connection_cut_just_as_its_call_was_answered_is_closed_for_the_pool_to_drop(
    database_url,
):
    """The watchdog may cut a call's connection right after its statement was answered: no
    error then, but its socket is shut down. It is closed, so the pool drops it rather than
    handing it to the next call (which the hand-out check would have to catch)."""
    watchdog = postgres._Watchdog()
    conn = psycopg.connect(database_url, autocommit=True)
    try:
        with watchdog.watch(conn, 60.0) as watch:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            watch.deadline = 0.0  # its bound reached only now, the statement answered
            wait_for(lambda: watch.fired, timeout=5)
        assert conn.closed
    finally:
        conn.close()
        watchdog.close()


def _ready(store: PostgresStore) -> bool:
    try:
        store.check_ready()
    except StoreUnavailable:
        return False
    return True
