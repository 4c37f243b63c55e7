"""Cursor pages: every listing answers `next_cursor`; the calls after it come by bisection,
stable while calls are created and deleted, whatever the sort, filters and depth."""

from __future__ import annotations

import base64
import random

import orjson
import pytest

from calls_server.domain import calls
from calls_server.domain.listing import CallQuery
from tests.conftest import assert_error, create_call


def pages(client, tenant, **params):
    """Every call of the listing `params`, followed by cursor, page after page."""
    seen, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/calls", params=query, headers=tenant.headers)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        seen += [c["call_id"] for c in data["calls"]]
        cursor = data["pagination"]["next_cursor"]
        if cursor is None:
            return seen


def test_every_page_answers_a_next_cursor_but_the_last(client, tenant):
    for _ in range(3):
        create_call(client, tenant)

    first = client.get("/api/calls", params={"limit": 2}, headers=tenant.headers).json()["data"]
    cursor = first["pagination"]["next_cursor"]
    last = client.get(
        "/api/calls", params={"limit": 2, "cursor": cursor}, headers=tenant.headers
    ).json()["data"]

    assert isinstance(cursor, str)
    assert len(last["calls"]) == 1
    assert last["pagination"]["next_cursor"] is None
    assert last["pagination"]["has_next_page"] is False
    assert last["pagination"]["has_previous_page"] is True


def test_following_cursors_lists_every_call_once_in_order(client, tenant):
    made = [create_call(client, tenant)["call_id"] for _ in range(7)]

    assert pages(client, tenant, limit=3) == made[::-1]
    assert pages(client, tenant, limit=2, sort_order="ascending") == made


def test_the_filter_body_takes_the_cursor_too(client, tenant):
    for _ in range(3):
        create_call(client, tenant)
    body = {"limit": 2, "filter_criteria": {"call_status": ["REGISTERED"]}}
    first = client.post("/api/calls", json=body, headers=tenant.headers).json()["data"]

    second = client.post(
        "/api/calls",
        json={**body, "cursor": first["pagination"]["next_cursor"]},
        headers=tenant.headers,
    ).json()["data"]

    assert len(second["calls"]) == 1
    assert not {c["call_id"] for c in first["calls"]} & {c["call_id"] for c in second["calls"]}


@pytest.mark.parametrize("sort_by", ["created_at", "start_timestamp", "call_duration"])
@pytest.mark.parametrize("sort_order", ["ascending", "descending"])
@pytest.mark.parametrize(
    "filters",
    [{}, {"call_status": "ended"}, {"duration_ms_lower_threshold": 2000}, {"agent_id": "a1"}],
)
def test_cursor_pages_are_the_numbered_pages(store, tenant, client, sort_by, sort_order, filters):
    """Whatever the sort and filters, following cursors lists what numbered pages list."""
    rng = random.Random(7)
    for n in range(40):
        call = calls.new_call(
            organization_id=tenant.organization_id,
            agent_id=rng.choice(["a1", "a2"]),
            now=1_000_000 + n // 3,  # ties in created_at
            call_type="phone_call",
        )
        if rng.random() < 0.6:
            start = 1_000_000 + rng.randrange(5) * 1000
            end = start + rng.randrange(4) * 1000
            call = {**call, "call_status": "ended", "start_timestamp": start}
            call = {**call, "end_timestamp": end, "call_duration": end - start}
        store.add_call(call)
    params = {"sort_by": sort_by, "sort_order": sort_order, **filters}
    numbered = client.get(
        "/api/calls", params={**params, "limit": 100}, headers=tenant.headers
    ).json()["data"]["calls"]

    assert pages(client, tenant, limit=3, **params) == [c["call_id"] for c in numbered]


def test_a_cursor_with_other_filters_is_400(client, tenant):
    for _ in range(3):
        create_call(client, tenant)
    first = client.get("/api/calls", params={"limit": 1}, headers=tenant.headers).json()["data"]

    response = client.get(
        "/api/calls",
        params={"limit": 1, "cursor": first["pagination"]["next_cursor"], "call_status": "ended"},
        headers=tenant.headers,
    )

    assert_error(response, 400, "another sort or other filters")


@pytest.mark.parametrize("cursor", ["garbage", "W1tdXQ", "WyJ4IiwgWzAsMV1d"])
def test_a_cursor_this_server_did_not_answer_is_400(client, tenant, cursor):
    create_call(client, tenant)

    response = client.get("/api/calls", params={"cursor": cursor}, headers=tenant.headers)

    assert_error(response, 400, "'cursor'")


def test_page_and_cursor_together_are_400(client, tenant):
    for _ in range(3):
        create_call(client, tenant)
    first = client.get("/api/calls", params={"limit": 1}, headers=tenant.headers).json()["data"]

    response = client.get(
        "/api/calls",
        params={"page": 1, "cursor": first["pagination"]["next_cursor"]},
        headers=tenant.headers,
    )

    assert_error(response, 400, "either 'page' or 'cursor'")


def test_deleting_the_cursors_call_does_not_lose_the_place(client, tenant):
    made = [create_call(client, tenant)["call_id"] for _ in range(5)]
    first = client.get("/api/calls", params={"limit": 2}, headers=tenant.headers).json()["data"]
    client.delete(f"/api/calls/{first['calls'][-1]['call_id']}", headers=tenant.headers)

    rest = client.get(
        "/api/calls",
        params={"limit": 10, "cursor": first["pagination"]["next_cursor"]},
        headers=tenant.headers,
    ).json()["data"]["calls"]

    assert [c["call_id"] for c in rest] == made[::-1][2:]


def test_a_deep_cursor_page_reads_no_more_than_the_first(store, tenant):
    """Keyset paging: the page after the 1,990th call is found by bisection (2,000 calls:
    as deep as 10,000 for the bisection, at a fifth of the writes)."""
    for n in range(2_000):
        store.add_call(
            calls.new_call(
                organization_id=tenant.organization_id,
                agent_id="a",
                now=n,
                call_type="phone_call",
            )
        )
    query = CallQuery(page=0, limit=10, sort_by="created_at", sort_order="ascending", filters={})
    position = None
    for _ in range(199):
        page = store.list_calls(tenant.organization_id, query)
        position = page.next_position
        query = CallQuery(**{**query.__dict__, "cursor": query.next_cursor(position)})

    last = store.list_calls(tenant.organization_id, query)

    assert [c["created_at"] for c in last.calls] == list(range(1990, 2_000))
    assert last.next_position is None


def _forged(cursor: str, replace) -> str:
    """`cursor` decoded, changed by `replace(digest, position)`, and encoded again: what a
    client who read the cursor's (unsigned) encoding could send."""
    digest, position = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    forged = replace(digest, position)
    raw = forged.encode() if isinstance(forged, str) else orjson.dumps(forged)  # str: JSON
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


FORGED = {
    "empty position": lambda d, p: [d, []],
    "object position": lambda d, p: [d, {}],
    "number position": lambda d, p: [d, 5],
    "null position": lambda d, p: [d, None],
    "strings in the position": lambda d, p: [d, ["0", "a", "b", "c"]],
    "a float in the position": lambda d, p: [d, [0, 1.5, 2, 3]],
    "booleans in the position": lambda d, p: [d, [False, True, 2, 3]],
    "an unknown group": lambda d, p: [d, [2, 1, 2]],
    "a short position": lambda d, p: [d, [0, 1, 2]],
    "a long position": lambda d, p: [d, [1, 1, 2, 3]],
    "a number past signed 64 bits": lambda d, p: [d, [0, 2**64 - 1, 2, 3]],
    "a number past 64 bits": lambda d, p: f'["{d}", [1, -9223372036854775809, 3]]',
    "an empty list": lambda d, p: [],
    "an object": lambda d, p: {},
    "a number": lambda d, p: 7,
    "a string": lambda d, p: '"ab"',
    "a digest alone": lambda d, p: [d],
    "one part too many": lambda d, p: [d, p, p],
    "a number for the digest": lambda d, p: [1, p],
}


@pytest.mark.parametrize("forge", FORGED.values(), ids=FORGED.keys())
def test_a_forged_cursor_is_400_invalid_cursor(client, tenant, forge):
    for _ in range(2):
        create_call(client, tenant)
    first = client.get("/api/calls", params={"limit": 1}, headers=tenant.headers).json()["data"]

    forged = _forged(first["pagination"]["next_cursor"], forge)
    response = client.get(
        "/api/calls", params={"limit": 1, "cursor": forged}, headers=tenant.headers
    )

    assert_error(response, 400, "'cursor' is not a cursor this server answered")


@pytest.mark.parametrize("garbage", ["a", "____", "W10", "e30", "Nw", "bnVsbA", "IiI"])
def test_cursor_garbage_is_400_invalid_cursor(client, tenant, garbage):
    create_call(client, tenant)

    response = client.get("/api/calls", params={"cursor": garbage}, headers=tenant.headers)

    assert_error(response, 400, "'cursor' is not a cursor this server answered")
