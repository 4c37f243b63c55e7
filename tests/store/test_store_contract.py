"""The store contract: what every backend does, as `storage/interface.py` specifies it.

Every test here runs on the `store` fixture (tests/conftest.py), once per backend: the
embedded store and PostgreSQL (CALLS_TEST_BACKENDS names fewer). A backend passes them all;
what only one backend does (its files, its journal; its pool, migrations, several
processes on one database, dropped connections) is tested in test_embedded_store.py,
test_journal*.py, test_store_integrity.py and test_postgres_store.py.

The sections follow the roles of interface.py, in its order. Some roles have topical files
of their own, also on both backends: the sandbox players (test_sandbox_settlement.py),
batch dispatch (test_batch_dispatch.py), Idempotency-Key claims (test_idempotency_claims.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from calls_server.domain import (
    agents,
    batches,
    calls,
    idempotency,
    keys,
    phone_numbers,
    webhooks,
)
from calls_server.domain.errors import (
    AgentNotFound,
    ApiKeyNotFound,
    BadRequest,
    BatchNotFound,
    CallNotFound,
    Conflict,
    DuplicateId,
    OrganizationNotFound,
    PhoneNumberNotFound,
    QuotaExceeded,
    StoreUnavailable,
    WebhookEventNotFound,
    WebhookNotFound,
)
from calls_server.domain.listing import CallQuery, normalize_filters
from calls_server.domain.quotas import Quota
from calls_server.integrations.clock import wall_clock
from calls_server.storage import EmbeddedStore, Store
from calls_server.storage.interface import UNDER_CLAIM
from calls_server.storage.postgres import PostgresStore
from tests.conftest import wait_for
from tests.unit.test_call_index import random_call, random_query, reference

# -- helpers ---------------------------------------------------------------------------------------

EVERYTHING = CallQuery(page=0, limit=100, sort_by="created_at", sort_order="ascending", filters={})


def a_call(org: str = "org", call_id: str | None = None, **fields) -> calls.Call:
    call = calls.new_call(
        organization_id=org,
        agent_id="agent",
        now=wall_clock(),
        call_type="phone_call",
        call_id=call_id,
    )
    call.update(fields)
    return call


def ids(page) -> list[str]:
    return [call["call_id"] for call in page]


def an_agent(org: str = "acme") -> agents.Agent:
    return agents.new_agent(org, {"agent_name": "Ada"}, 1)


def a_phone_number(org: str = "acme") -> phone_numbers.PhoneNumber:
    return phone_numbers.new_phone_number(org, {"phone_number": "+14155550100"}, 1, bool)


def webhook(org: str = "acme", **fields) -> webhooks.Webhook:
    given = {"name": "hook", "url": "https://example.com/h", "is_active": True, **fields}
    return webhooks.new_webhook(org, given, 1, 0, 10)


def a_batch(org: str = "acme") -> tuple[batches.Batch, list[batches.Task]]:
    body = {
        "from_number": "+14155550100",
        "agent_id": "a",
        "tasks": [{"to_number": "+14155550101"}],
    }
    return batches.new_batch(org, body, 1, ["a"])


def an_api_key(org: str = "acme") -> keys.ApiKey:
    return keys.new_api_key(org, 1)[0]


def added_once(add: Callable[[], None], listed: Callable[[], list[Any]]) -> None:
    """Adding a record a second time with its id raises DuplicateId and stores nothing."""
    add()

    with pytest.raises(DuplicateId, match="already exists"):
        add()
    assert len(listed()) == 1


def owing(old, new, hooks, assigned):
    """The production event source, with a clock and ids of its own (unique, as its own: two
    changes within a millisecond owe two events)."""
    return webhooks.owed_events(old, new, hooks, assigned, wall_clock(), f"evt_{uuid.uuid4().hex}")


def first_told(told: list[list[dict]]) -> list[str]:
    """The ids of the events told, each once, in the order first told (an event may be
    told again: the listener looks at it again)."""
    return list(dict.fromkeys(e["event_id"] for batch in told for e in batch))


def ids_of(events) -> list[str]:
    return [e["event_id"] for e in events]


@pytest.fixture
def open_store(backend: str, data_dir: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Opens a store of the backend under test where the `store` fixture keeps its data (the
    data directory; the database), with the given options; each closed after the test."""
    opened: list[Store] = []

    def open_(**options: Any) -> Store:
        store: Store
        if backend == "postgres":
            store = PostgresStore(request.getfixturevalue("migrated_database_url"), **options)
        else:
            store = EmbeddedStore(data_dir, **options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def reopen(store: Store, open_store) -> Callable[[], Store]:
    """Closes the `store` and opens its data again (embedded: its data directory;
    PostgreSQL: its database), as a restart of the server would."""

    def reopen_() -> Store:
        store.close()
        return open_store()

    return reopen_


# -- calls -----------------------------------------------------------------------------------------


def test_add_call_then_get_call_returns_an_equal_copy(store):
    call = a_call()
    store.add_call(call)

    got = store.get_call("org", call["call_id"])

    assert got == call
    got["metadata"]["mutated"] = True
    assert "mutated" not in store.get_call("org", call["call_id"])["metadata"]


def test_add_call_keeps_no_reference_to_the_callers_dict(store):
    call = a_call()
    store.add_call(call)

    call["metadata"]["later"] = 1

    assert store.get_call("org", call["call_id"])["metadata"] == {}


def test_add_call_with_a_duplicate_id_in_the_same_organization_raises(store):
    store.add_call(a_call(call_id="x"))

    with pytest.raises(DuplicateId):
        store.add_call(a_call(call_id="x"))


def test_call_ids_are_per_organization(store):
    store.add_call(a_call(call_id="x"))

    store.add_call(a_call(org="other", call_id="x"))

    assert store.get_call("other", "x")["organization_id"] == "other"
    assert store.get_call("org", "x")["organization_id"] == "org"


def test_get_call_of_another_organization_raises_not_found(store):
    store.add_call(a_call(org="a", call_id="x"))

    with pytest.raises(CallNotFound):
        store.get_call("b", "x")


def test_change_call_returns_and_stores_the_new_record(store):
    call = a_call()
    store.add_call(call)

    changed = store.change_call(
        "org", call["call_id"], lambda c: calls.update(c, {"call_status": "ongoing"}, 5)
    )

    assert changed["call_status"] == "ongoing"
    assert store.get_call("org", call["call_id"]) == changed
    assert store.list_calls("org", EVERYTHING)[0] == [changed]


def test_change_call_of_an_unknown_call_raises_not_found(store):
    with pytest.raises(CallNotFound):
        store.change_call("org", "nope", lambda c: c)


def test_change_call_that_raises_writes_nothing(store):
    call = a_call()
    store.add_call(call)

    def fail(stored):
        stored["agent_id"] = "changed"
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        store.change_call("org", call["call_id"], fail)
    assert store.get_call("org", call["call_id"]) == call
    changed = dataclasses.replace(EVERYTHING, filters={"agent_id": ["changed"]})
    assert store.list_calls("org", changed)[1] == 0


def test_delete_call_removes_it_from_get_and_list(store):
    call = a_call()
    store.add_call(call)

    assert store.delete_call("org", call["call_id"]) == call

    with pytest.raises(CallNotFound):
        store.get_call("org", call["call_id"])
    assert store.list_calls("org", EVERYTHING)[:2] == ([], 0)


def test_delete_call_of_an_unknown_call_raises_not_found(store):
    store.add_call(a_call(call_id="x"))
    store.delete_call("org", "x")

    with pytest.raises(CallNotFound):
        store.delete_call("org", "x")


def test_delete_call_whose_check_raises_removes_nothing(store):
    call = a_call()
    store.add_call(call)

    def refuse(stored):
        raise ValueError("keep it")

    with pytest.raises(ValueError, match="keep it"):
        store.delete_call("org", call["call_id"], check=refuse)
    assert store.get_call("org", call["call_id"]) == call


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


def test_a_quota_of_calls_counts_each_organizations_calls(open_store):
    store = open_store(quota=Quota(max_calls=2))
    store.add_call(a_call(call_id="a"))
    store.add_call(a_call(call_id="b"))

    with pytest.raises(QuotaExceeded):
        store.add_call(a_call(call_id="c"))
    with pytest.raises(CallNotFound):
        store.get_call("org", "c")
    store.delete_call("org", "a")
    store.add_call(a_call(call_id="c"))  # room again
    store.add_call(a_call(org="other", call_id="x"))  # per organization


def test_a_quota_of_bytes_refuses_a_change_that_grows_past_it(open_store):
    size = len(orjson.dumps(a_call(call_id="z")))
    store = open_store(quota=Quota(max_bytes=3 * size + 200))
    store.add_call(a_call(org="bytes", call_id="z"))

    with pytest.raises(QuotaExceeded):
        store.change_call("bytes", "z", lambda c: {**c, "transcript": "x" * 4 * size})
    assert store.get_call("bytes", "z")["transcript"] is None
    store.change_call("bytes", "z", lambda c: {**c, "transcript": "x" * size})


# -- calls: listing --------------------------------------------------------------------------------


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


def test_list_calls_counts_all_matches_and_returns_one_page(store):
    for n in range(5):
        store.add_call(a_call(call_id=f"c{n}", created_at=n))
    query = CallQuery(page=1, limit=2, sort_by="created_at", sort_order="ascending", filters={})

    page, total, position = store.list_calls("org", query)

    assert ids(page) == ["c2", "c3"]
    assert total == 5
    assert position is not None  # c4 follows


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


# -- scheduled calls -------------------------------------------------------------------------------


def test_scheduled_calls_are_every_organizations_due_ones(store):
    now = wall_clock()
    for org, call_id, at in (("a", "soon", 100), ("b", "sooner", 50), ("a", "later", 10**9)):
        store.add_call(calls.schedule(a_call(org=org, call_id=call_id, created_at=now), at, 0))
    store.add_call(a_call(call_id="plain"))

    assert ids(store.scheduled_calls(due_by=100)) == ["sooner", "soon"]
    assert len(store.scheduled_calls(due_by=2**62)) == 3


# -- accounts --------------------------------------------------------------------------------------


def test_organizations_and_keys_round_trip(store):
    store.add_organization(keys.new_organization(1, "acme"))
    record, _ = keys.new_api_key("acme", 2)
    store.add_api_key(record)

    assert store.get_organization("acme")["organization_id"] == "acme"
    assert store.find_api_key(record["api_key"]) == record
    assert store.list_api_keys("acme") == [record]
    assert store.find_api_key("sk_unknown") is None


def test_an_organization_added_twice_raises_duplicate_id(store):
    store.add_organization(keys.new_organization(1, "acme"))

    with pytest.raises(DuplicateId):
        store.add_organization(keys.new_organization(3, "acme"))


def test_get_organization_of_an_unknown_one_raises_not_found(store):
    with pytest.raises(OrganizationNotFound):
        store.get_organization("ghost")


def test_an_api_key_added_twice_raises_duplicate_id_and_stores_nothing(store):
    store.add_organization(keys.new_organization(1, "acme"))
    key = an_api_key()

    added_once(lambda: store.add_api_key(key), lambda: store.list_api_keys("acme"))


def test_keys_need_an_existing_organization(store):
    record, _ = keys.new_api_key("ghost", 1)

    with pytest.raises(OrganizationNotFound):
        store.add_api_key(record)
    with pytest.raises(OrganizationNotFound):
        store.list_api_keys("ghost")


def test_change_api_key_of_an_unknown_key_raises(store):
    store.add_organization(keys.new_organization(1, "acme"))

    with pytest.raises(ApiKeyNotFound):
        store.change_api_key("acme", "key_x", lambda k: k)


# -- agents ----------------------------------------------------------------------------------------


def test_agents_round_trip_within_their_organization(store):
    store.add_organization(keys.new_organization(1, "acme"))
    first = agents.new_agent("acme", {"agent_name": "First"}, 1)
    second = agents.new_agent("acme", {"agent_name": "Second"}, 2)
    store.add_agent(first)
    store.add_agent(second)

    assert store.list_agents("acme") == [first, second]
    assert store.get_agent("acme", first["agent_id"]) == first
    with pytest.raises(AgentNotFound):
        store.get_agent("other", first["agent_id"])
    renamed = store.change_agent("acme", first["agent_id"], lambda a: {**a, "agent_name": "R"})
    assert store.get_agent("acme", first["agent_id"]) == renamed
    assert store.delete_agent("acme", first["agent_id"]) == renamed
    assert store.list_agents("acme") == [second]
    with pytest.raises(AgentNotFound):
        store.delete_agent("acme", first["agent_id"])
    with pytest.raises(OrganizationNotFound):
        store.add_agent(agents.new_agent("ghost", {"agent_name": "G"}, 1))


def test_an_agent_added_twice_raises_duplicate_id_and_stores_nothing(store):
    store.add_organization(keys.new_organization(1, "acme"))
    agent = an_agent()

    added_once(lambda: store.add_agent(agent), lambda: store.list_agents("acme"))


# -- phone numbers ---------------------------------------------------------------------------------


def test_phone_numbers_are_unique_within_an_organization(store):
    store.add_organization(keys.new_organization(1, "acme"))
    number = {"organization_id": "acme", "phone_number": "+15550001", "nickname": None}
    store.add_phone_number(number)

    with pytest.raises(DuplicateId, match="already exists"):
        store.add_phone_number(dict(number))
    assert store.list_phone_numbers("acme") == [number]
    changed = store.change_phone_number("acme", "+15550001", lambda n: {**n, "nickname": "x"})
    assert store.get_phone_number("acme", "+15550001") == changed
    assert store.delete_phone_number("acme", "+15550001") == changed
    with pytest.raises(PhoneNumberNotFound):
        store.get_phone_number("acme", "+15550001")


def test_a_phone_number_added_twice_raises_duplicate_id_and_stores_nothing(store):
    store.add_organization(keys.new_organization(1, "acme"))
    number = a_phone_number()

    added_once(lambda: store.add_phone_number(number), lambda: store.list_phone_numbers("acme"))


# -- webhooks --------------------------------------------------------------------------------------


def test_a_webhook_added_twice_raises_duplicate_id_and_stores_nothing(store):
    store.add_organization(keys.new_organization(1, "acme"))
    hook = webhook()

    added_once(lambda: store.add_webhook(hook), lambda: store.list_webhooks("acme"))


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
    store.record_webhook_events(owing, lambda events: None, lambda partitions: None)
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
    assert store.list_webhooks("acme") == [other]


# -- batches ---------------------------------------------------------------------------------------


def test_delete_batch_removes_it_and_its_tasks(store):
    store.add_organization(keys.new_organization(1, "acme"))
    batch, tasks = a_batch()
    store.add_batch(batch, tasks)

    removed = store.delete_batch("acme", batch["batch_call_id"])

    assert removed == batch
    assert store.list_batches("acme") == []
    with pytest.raises(BatchNotFound):
        store.get_batch("acme", batch["batch_call_id"])


def test_delete_batch_whose_check_raises_removes_nothing(store):
    store.add_organization(keys.new_organization(1, "acme"))
    batch, tasks = a_batch()
    store.add_batch(batch, tasks)

    def refuse(stored: batches.Batch) -> None:
        raise Conflict("not now")

    with pytest.raises(Conflict):
        store.delete_batch("acme", batch["batch_call_id"], refuse)
    assert store.get_batch("acme", batch["batch_call_id"]) == batch


def test_a_batch_added_twice_raises_duplicate_id_and_stores_nothing(store):
    store.add_organization(keys.new_organization(1, "acme"))
    batch, tasks = a_batch()

    added_once(lambda: store.add_batch(batch, tasks), lambda: store.list_batches("acme"))


# -- the outbox ------------------------------------------------------------------------------------


def test_a_call_change_records_its_events_and_tells_the_listener(store):
    store.add_organization(keys.new_organization(1, "acme"))
    hook = webhook(status_events=True)
    store.add_webhook(hook)
    told: list[list[dict]] = []

    store.record_webhook_events(owing, told.append, lambda partitions: None)
    call = a_call(org="acme")
    store.add_call(call)
    store.change_call(
        "acme", call["call_id"], lambda c: calls.update(c, {"call_status": "ongoing"}, 5)
    )
    wait_for(lambda: len(first_told(told)) == 2)

    pending = store.pending_webhook_events()
    assert [e["event"] for e in pending] == ["call_registered", "call_started"]
    assert first_told(told) == ids_of(pending)
    # PostgreSQL also tells each event's delivery partition (storage/postgres_presence.py).
    assert set(told[0][0]) - {"partition"} == {
        "event_id", "webhook_id", "organization_id", "call_id", "status", "next_attempt_at",
    }  # fmt: skip
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

    store.record_webhook_events(broken, told.append, lambda partitions: None)

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

    store.record_webhook_events(every_change, listener, lambda partitions: None)

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


def test_webhook_events_change_list_and_prune(store):
    store.add_organization(keys.new_organization(1, "acme"))
    hook = webhook(status_events=True)
    store.add_webhook(hook)
    told: list = []
    store.record_webhook_events(owing, told.append, lambda partitions: None)
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


def test_many_webhook_events_change_in_one_write(store):
    for org in ("acme", "other"):
        store.add_organization(keys.new_organization(1, org))
    hooks = {org: webhook(org=org, status_events=True) for org in ("acme", "other")}
    for hook in hooks.values():
        store.add_webhook(hook)
    told: list[list[dict]] = []
    store.record_webhook_events(owing, told.append, lambda partitions: None)
    for n in range(3):
        store.add_call(a_call(org="acme", call_id=f"c{n}"))
    store.add_call(a_call(org="other", call_id="o0"))
    first, second, third, fourth = store.pending_webhook_events()
    wait_for(lambda: len(first_told(told)) == 4)
    told.clear()
    delivered = webhooks.Attempt(at=1_000, latency_ms=5, status_code=200)
    failed = webhooks.Attempt(at=1_000, latency_ms=5, status_code=500)
    policy = webhooks.RetryPolicy()

    def change(event, attempt):
        return (
            event["organization_id"],
            event["webhook_id"],
            event["event_id"],
            lambda stored: webhooks.attempted(stored, attempt, policy),
        )

    changed = store.change_webhook_events(
        [
            change(first, delivered),
            ("acme", hooks["acme"]["id"], "evt_none", lambda e: e),  # no such event
            change(fourth, failed),  # another organization's, due again later
            ("acme", "webhook_none", second["event_id"], lambda e: e),  # no such webhook
            change(third, delivered),
        ]
    )

    assert [e and (e["event_id"], e["status"]) for e in changed] == [
        (first["event_id"], "delivered"),
        None,
        (fourth["event_id"], "pending"),
        None,
        (third["event_id"], "delivered"),
    ]
    assert changed[0] == store.get_webhook_event("acme", hooks["acme"]["id"], first["event_id"])
    assert changed[2]["attempts"][0]["status_code"] == 500
    assert ids_of(store.pending_webhook_events()) == [second["event_id"], fourth["event_id"]]
    assert set(first_told(told)) <= {second["event_id"], fourth["event_id"]}  # none queued

    # Queued again (a redelivery): the listener is told, as by change_webhook_event.
    (again,) = store.change_webhook_events(
        [
            (
                "acme",
                hooks["acme"]["id"],
                first["event_id"],
                lambda e: webhooks.redelivered(e, 3_000),
            )
        ]
    )
    assert again["status"] == "pending"
    wait_for(lambda: first["event_id"] in first_told(told))
    assert store.change_webhook_events([]) == []


def test_a_change_that_raises_writes_none_of_its_organizations_changes(store):
    store.add_organization(keys.new_organization(1, "acme"))
    hook = webhook(status_events=True)
    store.add_webhook(hook)
    store.record_webhook_events(owing, lambda events: None, lambda partitions: None)
    for n in range(2):
        store.add_call(a_call(org="acme", call_id=f"c{n}"))
    first, second = store.pending_webhook_events()
    attempt = webhooks.Attempt(at=1_000, latency_ms=5, status_code=200)

    def broken(event):
        raise RuntimeError("change failed")

    with pytest.raises(RuntimeError, match="change failed"):
        store.change_webhook_events(
            [
                (
                    "acme",
                    hook["id"],
                    first["event_id"],
                    lambda e: webhooks.attempted(e, attempt, webhooks.RetryPolicy()),
                ),
                ("acme", hook["id"], second["event_id"], broken),
            ]
        )

    assert store.pending_webhook_events() == [first, second]


# -- idempotency -----------------------------------------------------------------------------------


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


# A key's claim lease and its answer's lifetime, in these tests (ms).
LEASE, KEPT = 60_000, 86_400_000


@pytest.mark.parametrize(
    ("kind", "add"),
    [
        ("call", lambda s: s.add_call(a_call(org="acme", call_id="c1")) or "c1"),
        ("agent", lambda s: s.add_agent(agent := an_agent()) or agent["agent_id"]),
        ("webhook", lambda s: s.add_webhook(hook := webhook()) or hook["id"]),
    ],
)
def test_a_record_added_under_a_claim_is_named_to_a_retry_after_a_restart(store, reopen, kind, add):
    """A create killed after its record reached the store, before its answer was kept:
    the retry, in the next process, learns what was stored instead of adding it again."""
    store.add_organization(keys.new_organization(1, "acme"))
    now = wall_clock()
    claim = idempotency.claim("acme", "key-1", "print", now, LEASE)
    assert store.claim_idempotent(claim, now) is None
    under = UNDER_CLAIM.set((claim, now + KEPT))
    try:
        record_id = add(store)
    finally:
        UNDER_CLAIM.reset(under)

    later = now + LEASE + 1  # the first request's lease passed: its process is gone
    retry = idempotency.claim("acme", "key-1", "print", later, LEASE)
    found = reopen().claim_idempotent(retry, later)

    assert found is not None
    assert found["written"] == {"kind": kind, "id": record_id}


def test_a_claim_under_which_nothing_was_added_leaves_nothing_behind(store, reopen):
    now = wall_clock()
    claim = idempotency.claim("org", "key-1", "print", now, LEASE)
    store.claim_idempotent(claim, now)
    store.release_idempotent(claim)

    retry = idempotency.claim("org", "key-1", "print", now + 1, LEASE)
    assert reopen().claim_idempotent(retry, now + 1) is None


# -- processes -------------------------------------------------------------------------------------


def test_this_process_is_among_the_live_ones(store):
    assert store.process_id in store.live_processes()


# -- durability ------------------------------------------------------------------------------------


def test_everything_survives_a_reopen(store, reopen):
    call = a_call()
    store.add_call(call)
    store.change_call("org", call["call_id"], lambda c: calls.update(c, {"transcript": "t"}, 5))
    store.add_call(a_call(call_id="gone"))
    store.delete_call("org", "gone")
    store.add_organization(keys.new_organization(1, "acme"))
    changed = store.get_call("org", call["call_id"])

    reopened = reopen()

    assert reopened.get_call("org", call["call_id"]) == changed
    assert reopened.list_calls("org", EVERYTHING)[1] == 1
    assert reopened.get_organization("acme")["organization_id"] == "acme"


def test_the_active_batches_survive_a_reopen(store, reopen):
    store.add_organization(keys.new_organization(1, "acme"))
    batch, tasks = a_batch()
    store.add_batch(batch, tasks)
    active = [b["batch_call_id"] for b in store.active_batches()]

    reopened = reopen()

    assert [b["batch_call_id"] for b in reopened.active_batches()] == active
    assert reopened.get_batch("acme", batch["batch_call_id"]) == batch


def test_a_closed_store_is_a_503(store):
    store.add_call(a_call(call_id="kept"))
    store.close()

    with pytest.raises(StoreUnavailable, match="closed"):
        store.get_call("org", "kept")
    with pytest.raises(StoreUnavailable, match="closed"):
        store.add_call(a_call(call_id="x"))
    with pytest.raises(StoreUnavailable, match="closed"):
        store.check_ready()


# -- sandbox state ---------------------------------------------------------------------------------


def an_organization_with_everything(store: Store, org: str = "acme") -> dict[str, Any]:
    """`org` holding a record of every kind a fixture holds: an agent assigned a webhook, a
    number bound to the agent, a scheduled and an ended call, a batch call with two tasks.
    The records, by kind."""
    store.add_organization(keys.new_organization(1, org))
    hook = webhook(org)
    agent = agents.assigned(agents.new_agent(org, {"agent_name": "Ada"}, 1), hook["id"])
    number = phone_numbers.new_phone_number(
        org, {"phone_number": "+14155550100", "outbound_agent_id": agent["agent_id"]}, 1, bool
    )
    now = wall_clock()
    scheduled = calls.schedule(
        a_call(org, "due", agent_id=agent["agent_id"]), now // 1000 + 60, now
    )
    ended = calls.update(a_call(org, "done"), {"call_status": "ended"}, now + 1)
    body = {
        "from_number": "+14155550100",
        "agent_id": agent["agent_id"],
        "tasks": [{"to_number": "+14155550101"}, {"to_number": "+14155550102"}],
    }
    batch, tasks = batches.new_batch(org, body, 1, [agent["agent_id"]])
    store.add_webhook(hook)
    store.add_agent(agent)
    store.add_phone_number(number)
    store.add_call(scheduled)
    store.add_call(ended)
    store.add_batch(batch, tasks)
    return {
        "agents": [agent],
        "phone_numbers": [number],
        "webhooks": [hook],
        "calls": [scheduled, ended],
        "batch_calls": [(batch, tasks)],
    }


EMPTY = {"agents": 0, "phone_numbers": 0, "webhooks": 0, "calls": 0, "batch_calls": 0}
EVERY_KIND = {"agents": 1, "phone_numbers": 1, "webhooks": 1, "calls": 2, "batch_calls": 1}


def test_export_answers_the_organizations_records_as_stored(store):
    held = an_organization_with_everything(store)

    exported = store.export_organization("acme")

    assert exported == {
        "version": 1,
        "agents": held["agents"],
        "phone_numbers": held["phone_numbers"],
        "webhooks": held["webhooks"],
        "calls": held["calls"],
        "batch_calls": [{"batch_call": b, "tasks": t} for b, t in held["batch_calls"]],
    }


def test_export_reset_load_round_trips_the_exact_records(store):
    an_organization_with_everything(store)
    exported = store.export_organization("acme")

    assert store.reset_organization("acme") == EVERY_KIND
    assert store.export_organization("acme") == {"version": 1, **{k: [] for k in EMPTY}}
    assert store.load_organization("acme", exported) == EVERY_KIND

    assert store.export_organization("acme") == exported


def test_loaded_records_are_read_as_added_ones_are(store):
    held = an_organization_with_everything(store)
    exported = store.export_organization("acme")
    store.reset_organization("acme")

    store.load_organization("acme", exported)

    agent, (batch, tasks) = held["agents"][0], held["batch_calls"][0]
    assert store.get_agent("acme", agent["agent_id"]) == agent
    assert store.get_phone_number("acme", "+14155550100") == held["phone_numbers"][0]
    assert store.get_webhook("acme", held["webhooks"][0]["id"]) == held["webhooks"][0]
    assert ids(store.list_calls("acme", EVERYTHING)[0]) == ["due", "done"]
    ended = dataclasses.replace(EVERYTHING, filters=normalize_filters({"call_status": ["ended"]}))
    assert ids(store.list_calls("acme", ended)[0]) == ["done"]
    due_by = held["calls"][0]["scheduled_timestamp"]
    assert ids(store.scheduled_calls(due_by)) == ["due"]
    assert store.batch_tasks("acme", batch["batch_call_id"]) == (tasks, 2)
    assert [b["batch_call_id"] for b in store.active_batches()] == [batch["batch_call_id"]]


def test_load_makes_each_record_the_target_organizations(store):
    held = an_organization_with_everything(store)
    exported = store.export_organization("acme")
    store.add_organization(keys.new_organization(1, "beta"))
    unassigned = agents.unassigned(exported["agents"][0], [held["webhooks"][0]["id"]])
    calls_only = {"version": 1, "agents": [unassigned], "calls": exported["calls"]}

    assert store.load_organization("beta", calls_only)["calls"] == 2

    loaded = store.export_organization("beta")
    assert {r["organization_id"] for r in [*loaded["agents"], *loaded["calls"]]} == {"beta"}
    assert store.get_call("beta", "done")["call_status"] == "ended"
    assert store.export_organization("acme") == exported


def test_a_load_whose_id_the_organization_holds_loads_nothing(store):
    held = an_organization_with_everything(store)
    fixture = {"version": 1, "calls": [a_call("x", "new")], "agents": held["agents"]}

    with pytest.raises(
        BadRequest, match=r"agents\[0\] 'agent_.*': the organization has this agent already"
    ):
        store.load_organization("acme", fixture)

    with pytest.raises(CallNotFound):
        store.get_call("acme", "new")


def test_a_load_whose_ids_repeat_within_the_fixture_loads_nothing(store):
    store.add_organization(keys.new_organization(1, "acme"))
    fixture = {"version": 1, "calls": [a_call("x", "twice"), a_call("x", "twice")]}

    with pytest.raises(BadRequest, match=r"calls\[1\] 'twice': its id repeats calls\[0\]"):
        store.load_organization("acme", fixture)

    assert store.list_calls("acme", EVERYTHING)[1] == 0


def test_a_load_naming_an_agent_neither_has_loads_nothing(store):
    store.add_organization(keys.new_organization(1, "acme"))
    number = phone_numbers.new_phone_number(
        "x", {"phone_number": "+14155550100", "outbound_agent_id": "agent_gone"}, 1, bool
    )
    fixture = {"version": 1, "calls": [a_call("x", "c")], "phone_numbers": [number]}

    with pytest.raises(BadRequest, match="outbound_agent_id 'agent_gone' is neither"):
        store.load_organization("acme", fixture)

    assert store.list_phone_numbers("acme") == []
    assert store.list_calls("acme", EVERYTHING)[1] == 0


def test_a_load_of_a_call_the_listing_cannot_sort_loads_nothing(store):
    store.add_organization(keys.new_organization(1, "acme"))
    fixture = {"version": 1, "calls": [a_call("x", "ok"), a_call("x", "bad", created_at="now")]}

    with pytest.raises(BadRequest, match=r"calls\[1\] 'bad': created_at must be a 64-bit integer"):
        store.load_organization("acme", fixture)

    assert store.list_calls("acme", EVERYTHING)[1] == 0


def test_a_load_over_the_quota_loads_nothing(open_store):
    store = open_store(quota=Quota(max_calls=1))
    store.add_organization(keys.new_organization(1, "acme"))
    fixture = {"version": 1, "calls": [a_call("x", "one"), a_call("x", "two")]}

    with pytest.raises(QuotaExceeded):
        store.load_organization("acme", fixture)

    assert store.list_calls("acme", EVERYTHING)[1] == 0


def test_a_loads_check_sees_what_the_organization_would_hold_and_may_refuse(store):
    an_organization_with_everything(store)
    fixture = {"version": 1, "webhooks": [webhook("x")]}
    seen: list[dict[str, int]] = []

    def refuse(counts: dict[str, int]) -> None:
        seen.append(counts)
        raise BadRequest("too many webhooks")

    with pytest.raises(BadRequest, match="too many webhooks"):
        store.load_organization("acme", fixture, refuse)

    assert seen == [{**EVERY_KIND, "webhooks": 2}]
    assert len(store.list_webhooks("acme")) == 1


def test_load_and_reset_record_no_webhook_events(store):
    held = an_organization_with_everything(store)
    exported = store.export_organization("acme")
    told: list[list[dict]] = []
    store.record_webhook_events(owing, told.append, lambda partitions: None)
    store.reset_organization("acme")

    store.load_organization("acme", exported)

    assert store.pending_webhook_events() == []
    assert told == []
    assert store.list_webhook_events("acme", held["webhooks"][0]["id"]) == ([], 0)


def test_reset_removes_the_webhook_events_and_kept_answers_of_the_organization(store):
    held = an_organization_with_everything(store)
    hook = held["webhooks"][0]
    store.change_webhook("acme", hook["id"], lambda h: {**h, "status_events": True})
    store.record_webhook_events(owing, lambda events: None, lambda partitions: None)
    store.add_call(a_call("acme", "evented"))
    now = wall_clock()
    store.keep_idempotent({**idempotency.claim("acme", "k", "print", now, LEASE), "body": {}})
    assert store.pending_webhook_events()

    store.reset_organization("acme")

    assert store.pending_webhook_events() == []
    assert store.find_idempotent("acme", "k") is None
    store.load_organization("acme", {"version": 1, "webhooks": [hook]})
    assert store.list_webhook_events("acme", hook["id"]) == ([], 0)


def test_reset_empties_only_the_target_organization(store):
    an_organization_with_everything(store, "acme")
    store.add_organization(keys.new_organization(1, "beta"))
    kept = [a_call("beta", "kept"), a_call("beta", "due", call_status="scheduled")]
    kept[1]["scheduled_timestamp"] = 1
    for call in kept:
        store.add_call(call)
    beta = store.export_organization("beta")

    store.reset_organization("acme")

    assert store.export_organization("beta") == beta
    assert ids(store.scheduled_calls(wall_clock())) == ["due"]
    assert store.active_batches() == []


def test_reset_keeps_the_organization_and_its_keys(store):
    an_organization_with_everything(store)
    key = an_api_key()
    store.add_api_key(key)

    assert store.reset_organization("acme") == EVERY_KIND

    assert store.get_organization("acme")["organization_id"] == "acme"
    assert store.list_api_keys("acme") == [key]
    assert store.find_api_key(key["api_key"]) == key
    assert store.reset_organization("acme") == EMPTY


def test_the_state_of_an_unknown_organization_is_not_found(store):
    with pytest.raises(OrganizationNotFound):
        store.export_organization("nobody")
    with pytest.raises(OrganizationNotFound):
        store.load_organization("nobody", {"version": 1})
    with pytest.raises(OrganizationNotFound):
        store.reset_organization("nobody")


def test_loaded_records_survive_a_reopen(store, reopen):
    an_organization_with_everything(store)
    exported = store.export_organization("acme")
    store.reset_organization("acme")
    store.load_organization("acme", exported)

    reopened = reopen()

    assert reopened.export_organization("acme") == exported
    assert ids(reopened.scheduled_calls(wall_clock() + 3_600_000)) == ["due"]


def test_one_fixture_loads_into_two_organizations(store):
    an_organization_with_everything(store, "acme")
    exported = store.export_organization("acme")
    store.add_organization(keys.new_organization(1, "beta"))

    assert store.load_organization("beta", exported) == EVERY_KIND

    assert store.export_organization("acme") == exported


# Two organizations holding records under the same ids (one fixture loaded into both): each
# sees only its own webhook events and batch tasks, whatever the other does.

ORGS = ("acme", "beta")


def two_organizations_with_the_same_ids(store: Store) -> tuple[str, str]:
    """acme and beta holding the records of one fixture (the same ids), the webhook taking
    every call's status events: acme has the events of a call "a1", beta of "b1" then "b2".
    The webhook's and the batch call's ids."""
    held = an_organization_with_everything(store, "acme")
    store.add_organization(keys.new_organization(1, "beta"))
    store.load_organization("beta", store.export_organization("acme"))
    hook_id = held["webhooks"][0]["id"]
    for org in ORGS:
        store.change_webhook(org, hook_id, lambda h: {**h, "status_events": True})
    store.record_webhook_events(owing, lambda events: None, lambda partitions: None)
    for org, call_id in (("acme", "a1"), ("beta", "b1"), ("beta", "b2")):
        store.add_call(a_call(org, call_id))
    return hook_id, held["batch_calls"][0][0]["batch_call_id"]


def event_calls(store: Store, org: str, hook_id: str, **query: Any) -> list[str]:
    """The calls of the events the webhook of `org` lists (newest first; `query`: the
    filters of list_webhook_events), checked against the total it counts."""
    events, total = store.list_webhook_events(org, hook_id, **query)
    assert total == len(events)
    return [event["call_id"] for event in events]


def task_ids(listed: tuple[list[batches.Task], int]) -> list[str]:
    return [task["task_id"] for task in listed[0]]


def claim(batch: batches.Batch, task: batches.Task, calling: int) -> tuple[Any, Any]:
    """A `TaskChange`: the task's next attempt claimed by this process."""
    return batches.claimed(batch, task, calling, 10, wall_clock(), "me")


DELIVERED = webhooks.Attempt(at=1_000, latency_ms=5, status_code=200)


def delivered(event: webhooks.WebhookEvent) -> webhooks.WebhookEvent:
    return webhooks.attempted(event, DELIVERED, webhooks.RetryPolicy())


def test_two_organizations_with_the_same_webhook_id_see_only_their_own_events(store):
    hook_id, _ = two_organizations_with_the_same_ids(store)
    (acme_event,), _ = store.list_webhook_events("acme", hook_id)
    (b2, b1), _ = store.list_webhook_events("beta", hook_id)

    assert event_calls(store, "acme", hook_id) == ["a1"]
    assert event_calls(store, "beta", hook_id) == ["b2", "b1"]
    assert {e["organization_id"] for e in (acme_event, b1, b2)} == set(ORGS)
    with pytest.raises(WebhookEventNotFound):
        store.get_webhook_event("beta", hook_id, acme_event["event_id"])
    with pytest.raises(WebhookEventNotFound):
        store.change_webhook_event("beta", hook_id, acme_event["event_id"], delivered)

    store.change_webhook_event("acme", hook_id, acme_event["event_id"], delivered)
    store.change_webhook_event("beta", hook_id, b1["event_id"], delivered)

    assert event_calls(store, "acme", hook_id, status="delivered") == ["a1"]
    assert event_calls(store, "beta", hook_id, status="pending") == ["b2"]
    assert store.get_webhook_event("beta", hook_id, b2["event_id"]) == b2
    assert store.prune_webhook_events(settled_before=1_500, organization_id="acme") == 1
    assert event_calls(store, "acme", hook_id) == []
    assert event_calls(store, "beta", hook_id) == ["b2", "b1"]
    assert store.prune_webhook_events(settled_before=1_500) == 1
    assert event_calls(store, "beta", hook_id) == ["b2"]

    store.add_call(a_call("acme", "a2"))
    store.delete_webhook("acme", hook_id)

    assert event_calls(store, "beta", hook_id) == ["b2"]
    assert [e["call_id"] for e in store.pending_webhook_events()] == ["b2"]
    with pytest.raises(WebhookNotFound):
        store.list_webhook_events("acme", hook_id)


def test_two_organizations_with_the_same_batch_id_see_only_their_own_tasks(store):
    _, batch_id = two_organizations_with_the_same_ids(store)
    acme_tasks, beta_tasks = (store.batch_tasks(org, batch_id)[0] for org in ORGS)
    first, second = (task["task_id"] for task in acme_tasks)
    assert [t["organization_id"] for t in [*acme_tasks, *beta_tasks]] == [
        *["acme"] * 2,
        *["beta"] * 2,
    ]

    store.change_batch_task("acme", batch_id, first, claim)

    assert task_ids(store.batch_tasks("acme", batch_id, status="calling")) == [first]
    assert store.batch_tasks("beta", batch_id, status="calling") == ([], 0)
    assert task_ids(store.batch_tasks("acme", batch_id, due_by=wall_clock())) == [second]
    assert store.batch_tasks("beta", batch_id, due_by=wall_clock()) == (beta_tasks, 2)
    assert store.get_batch("beta", batch_id)["in_progress"] == 0

    now = wall_clock()
    store.change_batch(
        "acme",
        batch_id,
        lambda b: batches.cancelled(b, now),
        lambda b, t: batches.task_cancelled(b, t, now),
    )

    assert store.batch_tasks("acme", batch_id, status="cancelled")[1] == 1
    assert store.batch_tasks("beta", batch_id) == (beta_tasks, 2)

    store.delete_batch("acme", batch_id)

    with pytest.raises(BatchNotFound):
        store.batch_tasks("acme", batch_id)
    assert store.batch_tasks("beta", batch_id) == (beta_tasks, 2)
    assert store.batch_tasks("beta", batch_id, due_by=now) == (beta_tasks, 2)
    assert [b["organization_id"] for b in store.active_batches()] == ["beta"]
    store.change_batch_task("beta", batch_id, beta_tasks[0]["task_id"], claim)
    assert task_ids(store.batch_tasks("beta", batch_id, status="calling")) == [
        beta_tasks[0]["task_id"]
    ]


def test_resetting_one_of_two_organizations_with_the_same_ids_leaves_the_other(store):
    hook_id, batch_id = two_organizations_with_the_same_ids(store)
    beta = store.export_organization("beta")

    store.reset_organization("acme")

    assert store.export_organization("beta") == beta
    assert event_calls(store, "beta", hook_id) == ["b2", "b1"]
    assert [e["call_id"] for e in store.pending_webhook_events()] == ["b1", "b2"]
    assert store.batch_tasks("beta", batch_id, due_by=wall_clock())[1] == 2
    assert [b["organization_id"] for b in store.active_batches()] == ["beta"]
    store.load_organization("acme", beta)
    assert event_calls(store, "acme", hook_id) == []
    assert store.batch_tasks("acme", batch_id)[1] == 2
    assert store.export_organization("beta") == beta


def test_two_organizations_with_the_same_ids_keep_their_own_across_a_reopen(store, reopen):
    hook_id, batch_id = two_organizations_with_the_same_ids(store)
    (first, _), _ = store.batch_tasks("acme", batch_id)
    store.change_batch_task("acme", batch_id, first["task_id"], claim)
    exported = {org: store.export_organization(org) for org in ORGS}
    events = {org: store.list_webhook_events(org, hook_id) for org in ORGS}

    reopened = reopen()

    for org in ORGS:
        assert reopened.export_organization(org) == exported[org]
        assert reopened.list_webhook_events(org, hook_id) == events[org]
    assert task_ids(reopened.batch_tasks("acme", batch_id, status="calling")) == [first["task_id"]]
    assert reopened.batch_tasks("beta", batch_id, status="calling") == ([], 0)
    assert reopened.batch_tasks("acme", batch_id, due_by=wall_clock())[1] == 1
    assert reopened.batch_tasks("beta", batch_id, due_by=wall_clock())[1] == 2
    reopened.delete_webhook("beta", hook_id)
    reopened.delete_batch("beta", batch_id)
    assert reopened.list_webhook_events("acme", hook_id) == events["acme"]
    assert reopened.export_organization("acme") == exported["acme"]
    assert [e["call_id"] for e in reopened.pending_webhook_events()] == ["a1"]
