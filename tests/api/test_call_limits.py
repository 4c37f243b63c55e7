"""What one call and one organization may hold: every limit is refused before anything is
stored, with a clear 4xx, and nothing accepted can later make its own call unchangeable."""

from __future__ import annotations

import pytest

from calls_server.domain import calls
from calls_server.domain.errors import BadRequest, QuotaExceeded
from calls_server.domain.quotas import Quota
from calls_server.settings import Settings
from calls_server.storage import EmbeddedStore
from tests.conftest import add_tenant, app_client, assert_error, create_call


def test_a_long_timeline_keeps_its_first_and_latest_events_and_counts_the_rest(client, tenant):
    call = create_call(client, tenant)
    for n in range(calls.MAX_EVENTS + 50):
        response = client.put(
            f"/api/calls/{call['call_id']}", json={"metadata": {"n": n}}, headers=tenant.headers
        )
        assert response.status_code == 200, response.text

    events = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).json()["data"][
        "events"
    ]

    assert len(events) == calls.MAX_EVENTS
    assert events[0]["event"] == "Call created via API"
    # 250 updates: the creation event, the count, and the latest 198.
    assert events[1] == {**events[1], "event": calls.EVENTS_OMITTED, "data": {"omitted": 52}}
    assert events[-1]["data"]["updated_fields"] == ["metadata"]


def test_metadata_over_its_key_limit_is_refused_on_create(client, tenant):
    metadata = {f"k{n}": n for n in range(calls.MAX_METADATA_KEYS + 1)}

    response = client.post(
        "/api/calls/create", json={"agent_id": "a", "metadata": metadata}, headers=tenant.headers
    )

    assert_error(response, 400, "more than")
    assert client.get("/api/calls", headers=tenant.headers).json()["data"]["calls"] == []


def test_merges_that_would_pass_the_key_limit_are_refused_and_change_nothing(client, tenant):
    full = {f"k{n}": n for n in range(calls.MAX_METADATA_KEYS)}
    call = create_call(client, tenant, agent_id="a", metadata=full)

    response = client.put(
        f"/api/calls/{call['call_id']}", json={"metadata": {"one": 1}}, headers=tenant.headers
    )

    assert_error(response, 400, "more than 100")
    got = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).json()["data"]
    assert got["metadata"] == full


def test_a_call_that_would_grow_past_its_size_limit_is_refused(store):
    add_tenant(store, "org")
    call = calls.new_call(organization_id="org", agent_id="a", now=1, call_type="web_call")
    store.add_call(call)
    big = "x" * 200_000

    def add_key(n: int) -> None:
        change = {"metadata": {f"k{n}": big}}
        store.change_call("org", call["call_id"], lambda c: calls.update(c, change, 2))

    for n in range(10):  # 2 MB in all: still within the limit
        add_key(n)
    with pytest.raises(BadRequest, match="more than the"):
        add_key(10)
    assert len(store.get_call("org", call["call_id"])["metadata"]) == 10


@pytest.fixture
def quota_store(data_dir):
    opened = EmbeddedStore(data_dir, quota=Quota(max_calls=3, max_bytes=20_000))
    yield opened
    opened.close()


def test_an_organization_over_its_call_quota_gets_429_and_others_do_not(quota_store, data_dir):
    ours, theirs = add_tenant(quota_store, "ours"), add_tenant(quota_store, "theirs")
    with app_client(quota_store, data_dir=data_dir) as client:
        for _ in range(3):
            create_call(client, ours)

        refused = client.post("/api/calls/create", json={"agent_id": "a"}, headers=ours.headers)
        create_call(client, theirs)
        total = client.get("/api/calls", headers=ours.headers).json()["data"]["pagination"]

    assert_error(refused, 429, "quota")
    assert total["total_count"] == 3


def test_an_organization_over_its_byte_quota_is_refused_and_deleting_frees_room(quota_store):
    add_tenant(quota_store, "org")
    big = {"pad": "x" * 8_000}
    first = calls.new_call(organization_id="org", agent_id="a", now=1, call_type="web_call",
                           metadata=big)  # fmt: skip
    quota_store.add_call(first)
    quota_store.add_call(calls.new_call(organization_id="org", agent_id="a", now=2,
                                        call_type="web_call", metadata=big))  # fmt: skip

    with pytest.raises(QuotaExceeded, match="bytes"):
        quota_store.add_call(calls.new_call(organization_id="org", agent_id="a", now=3,
                                            call_type="web_call", metadata=big))  # fmt: skip
    quota_store.delete_call("org", first["call_id"])
    quota_store.add_call(calls.new_call(organization_id="org", agent_id="a", now=4,
                                        call_type="web_call", metadata=big))  # fmt: skip


def test_quotas_are_settings(data_dir):
    settings = Settings.load({"CALLS_QUOTA_CALLS": "5", "CALLS_QUOTA_BYTES": "1000000"})

    assert (settings.quota_calls, settings.quota_bytes) == (5, 1_000_000)
