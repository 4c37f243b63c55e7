"""The embedded store: the Store interface, atomic changes, concurrency, locking."""

from __future__ import annotations

import threading

import pytest

from calls_server.domain import agents, batches, calls, keys, phone_numbers, webhooks
from calls_server.domain.errors import (
    ApiKeyNotFound,
    CallNotFound,
    DuplicateId,
    OrganizationNotFound,
)
from calls_server.domain.listing import CallQuery
from calls_server.integrations.clock import wall_clock
from calls_server.storage import DataDirectoryLocked, EmbeddedStore

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


def test_get_call_of_another_organization_raises_not_found(store):
    store.add_call(a_call(org="a", call_id="x"))

    with pytest.raises(CallNotFound):
        store.get_call("b", "x")


def test_change_call_that_raises_writes_nothing(store):
    call = a_call()
    store.add_call(call)

    def fail(stored):
        stored["agent_id"] = "changed"
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        store.change_call("org", call["call_id"], fail)
    assert store.get_call("org", call["call_id"]) == call


def test_delete_call_removes_it_from_get_and_list(store):
    call = a_call()
    store.add_call(call)

    assert store.delete_call("org", call["call_id"]) == call

    with pytest.raises(CallNotFound):
        store.get_call("org", call["call_id"])
    assert store.list_calls("org", EVERYTHING)[:2] == ([], 0)


def test_list_calls_counts_all_matches_and_returns_one_page(store):
    for n in range(5):
        store.add_call(a_call(call_id=f"c{n}", created_at=n))
    query = CallQuery(page=1, limit=2, sort_by="created_at", sort_order="ascending", filters={})

    page, total, _ = store.list_calls("org", query)

    assert [c["call_id"] for c in page] == ["c2", "c3"]
    assert total == 5


def test_organizations_and_keys_round_trip(store):
    store.add_organization(keys.new_organization(1, "acme"))
    record, _ = keys.new_api_key("acme", 2)
    store.add_api_key(record)

    assert store.get_organization("acme")["organization_id"] == "acme"
    assert store.find_api_key(record["api_key"]) == record
    assert store.list_api_keys("acme") == [record]
    assert store.find_api_key("sk_unknown") is None


def _agent(store):
    return agents.new_agent("acme", {"agent_name": "Ada"}, 1)


def _number(store):
    return phone_numbers.new_phone_number("acme", {"phone_number": "+14155550100"}, 1, bool)


def _webhook(store):
    return webhooks.new_webhook(
        "acme", {"name": "CRM", "url": "https://crm.example.com/h", "is_active": True}, 1
    )


def _batch(store):
    body = {
        "from_number": "+14155550100",
        "agent_id": "a",
        "tasks": [{"to_number": "+14155550101"}],
    }
    return batches.new_batch("acme", body, 1, ["a"])


# Each kind of record an organization holds: (make one, add it, list the organization's).
RECORDS = {
    "agent": (_agent, lambda s, r: s.add_agent(r), lambda s: s.agents("acme")),
    "phone number": (
        _number,
        lambda s, r: s.add_phone_number(r),
        lambda s: s.phone_numbers("acme"),
    ),
    "webhook": (_webhook, lambda s, r: s.add_webhook(r), lambda s: s.webhooks("acme")),
    "batch call": (_batch, lambda s, r: s.add_batch(*r), lambda s: s.batches("acme")),
    "API key": (
        lambda s: keys.new_api_key("acme", 1)[0],
        lambda s, r: s.add_api_key(r),
        lambda s: s.list_api_keys("acme"),
    ),
}


@pytest.mark.parametrize("kind", RECORDS)
def test_a_record_added_twice_with_its_id_raises_duplicate_id_and_stores_nothing(store, kind):
    """Both backends alike: no second record, no orphan left behind in the tables."""
    make, add, listed = RECORDS[kind]
    store.add_organization(keys.new_organization(1, "acme"))
    record = make(store)
    add(store, record)

    with pytest.raises(DuplicateId, match="already exists"):
        add(store, record)
    assert len(listed(store)) == 1
    if isinstance(store, EmbeddedStore):  # what `export` carries (copy-to-postgres)
        counts = {table: len(rows) for table, rows in store.export().items()}
        assert max(counts.values()) <= 1 or kind == "batch call", counts


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


def test_everything_survives_a_reopen(data_dir):
    store = EmbeddedStore(data_dir)
    call = a_call()
    store.add_call(call)
    store.change_call("org", call["call_id"], lambda c: calls.update(c, {"transcript": "t"}, 5))
    store.add_call(a_call(call_id="gone"))
    store.delete_call("org", "gone")
    store.add_organization(keys.new_organization(1, "acme"))
    changed = store.get_call("org", call["call_id"])
    store.close()

    reopened = EmbeddedStore(data_dir)
    try:
        assert reopened.get_call("org", call["call_id"]) == changed
        assert reopened.list_calls("org", EVERYTHING)[1] == 1
        assert reopened.get_organization("acme")["organization_id"] == "acme"
    finally:
        reopened.close()


def test_a_second_open_of_the_same_directory_is_refused_with_a_clear_message(store, data_dir):
    with pytest.raises(DataDirectoryLocked, match="in use by another process"):
        EmbeddedStore(data_dir)


def test_concurrent_writers_lose_nothing(store):
    threads, per_thread = 8, 12  # within a call's limits: 96 metadata keys, 97 events
    store.add_call(a_call(call_id="shared"))

    def work(n: int) -> None:
        for i in range(per_thread):
            store.add_call(a_call(call_id=f"t{n}-{i}"))
            store.change_call(
                "org",
                "shared",
                lambda c, n=n, i=i: calls.update(c, {"metadata": {f"t{n}-{i}": i}}, wall_clock()),
            )

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    assert store.list_calls("org", EVERYTHING)[1] == 1 + threads * per_thread
    shared = store.get_call("org", "shared")
    assert len(shared["metadata"]) == threads * per_thread
    assert len(shared["events"]) == 1 + threads * per_thread
