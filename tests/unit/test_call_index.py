"""The listing indexes answer exactly what a plain filter-and-sort over all calls would."""

from __future__ import annotations

import dataclasses
import random

import pytest

from calls_server.domain import calls
from calls_server.domain.listing import CallQuery, normalize_filters
from calls_server.storage.call_index import (
    EQUALITY_FIELDS,
    SORT_FIELDS,
    OrgCallIndex,
    StoredCall,
    parsed,
    stored,
)


def random_call(rng: random.Random, n: int) -> calls.Call:
    call = calls.new_call(
        organization_id="org",
        agent_id=rng.choice(["a1", "a2", "a3"]),
        now=rng.randint(0, 50),  # plenty of ties
        call_type=rng.choice(["phone_call", "web_call"]),
        direction=rng.choice(["inbound", "outbound", None]),
        call_id=f"c{n}",
    )
    call["call_status"] = rng.choice(["registered", "ongoing", "ended", "error"])
    call["updated_at"] = call["created_at"] + rng.randint(0, 5)
    if rng.random() < 0.7:
        call["start_timestamp"] = rng.randint(0, 30)
        if rng.random() < 0.7:
            call["end_timestamp"] = call["start_timestamp"] + rng.randint(0, 30)
            call["call_duration"] = call["end_timestamp"] - call["start_timestamp"]
    call["transcript"] = rng.choice([None, "hello refund", "nothing here"])
    return call


def random_query(rng: random.Random) -> CallQuery:
    criteria: dict = {}
    if rng.random() < 0.4:
        criteria["call_status"] = rng.sample(["registered", "ongoing", "ended", "error"], 2)
    if rng.random() < 0.3:
        criteria["agent_id"] = rng.choice(["a1", ["a2", "a3"]])
    if rng.random() < 0.3:
        criteria["direction"] = rng.choice(["inbound", ["outbound"]])
    if rng.random() < 0.2:
        criteria["call_type"] = ["web_call"]
    for name in ("duration_ms", "start_timestamp", "created_at"):
        if rng.random() < 0.2:
            criteria[name] = {"lower_threshold": rng.randint(0, 20), "upper_threshold": 40}
    if rng.random() < 0.2:
        criteria["transcript_search"] = "REFUND"
    return CallQuery(
        page=rng.randint(0, 3),
        limit=rng.choice([1, 3, 10, 100]),
        sort_by=rng.choice(SORT_FIELDS),
        sort_order=rng.choice(["ascending", "descending"]),
        filters=normalize_filters(criteria),
    )


def reference(docs: dict[str, calls.Call], query: CallQuery) -> tuple[list[int], int]:
    matching = [int(i) for i, call in docs.items() if query.matches(call)]

    def key(doc_id: int):
        call = docs[str(doc_id)]
        value = call[query.sort_by]
        return (value is None, 0 if value is None else value, call["created_at"], doc_id)

    present = sorted((i for i in matching if key(i)[0] is False), key=key)
    missing = sorted((i for i in matching if key(i)[0] is True), key=key)
    if query.descending:
        present.reverse()
        missing.reverse()
    ordered = present + missing
    return ordered[query.offset : query.offset + query.limit], len(matching)


def grown_index(rng: random.Random) -> tuple[dict[str, StoredCall], OrgCallIndex]:
    """Random calls (as stored), indexed in bulk, then some changed, added and removed one
    by one (so that incremental upkeep is covered too)."""
    docs = {str(n): stored(random_call(rng, n)) for n in range(rng.randint(0, 60))}
    index = OrgCallIndex((int(i), call) for i, call in docs.items())
    for n in range(len(docs), len(docs) + 20):
        action = rng.random()
        if action < 0.4 or not docs:
            docs[str(n)] = stored(random_call(rng, n))
            index.add(n, docs[str(n)])
        elif action < 0.7:
            victim = rng.choice(list(docs))
            index.remove(int(victim), docs.pop(victim))
        else:  # a call replaced by another, or changed in a few fields (as updates do)
            target = rng.choice(list(docs))
            changed = parsed(docs[target])
            if rng.random() < 0.5:
                changed = {**random_call(rng, int(target)), "call_id": changed["call_id"]}
            else:
                other = random_call(rng, int(target))
                for field in rng.sample([*EQUALITY_FIELDS, *SORT_FIELDS[1:]], 3):
                    changed[field] = other[field]
            new = stored(changed)
            index.replace(int(target), docs[target], new)
            docs[target] = new
    return docs, index


def plain(docs: dict[str, StoredCall]) -> dict[str, calls.Call]:
    """The calls as dicts, for `reference`."""
    return {doc_id: parsed(call) for doc_id, call in docs.items()}


@pytest.mark.parametrize("seed", range(20))
def test_select_equals_filter_and_sort_over_everything(seed):
    rng = random.Random(seed)
    docs, index = grown_index(rng)

    for _ in range(30):
        query = random_query(rng)
        assert index.select(query, docs)[:2] == reference(plain(docs), query), query


@pytest.mark.parametrize("seed", range(20))
def test_newest_first_on_equality_filters_counts_and_walks_as_filter_and_sort(seed):
    # The path that builds no set: totals from the combination counts, pages walked.
    rng = random.Random(seed)
    docs, index = grown_index(rng)

    for _ in range(30):
        query = random_query(rng)
        equality = {k: v for k, v in query.filters.items() if k in EQUALITY_FIELDS}
        if not equality:
            continue
        query = CallQuery(
            page=query.page,
            limit=query.limit,
            sort_by="created_at",
            sort_order=query.sort_order,
            filters=equality,
        )
        assert index.select(query, docs)[:2] == reference(plain(docs), query), query


@pytest.mark.parametrize("seed", range(20))
def test_following_cursors_lists_what_filter_and_sort_lists(seed):
    rng = random.Random(seed)
    docs, index = grown_index(rng)

    for _ in range(10):
        query = random_query(rng)
        every = dataclasses.replace(query, page=0, limit=len(docs) + 1)
        expected, total = reference(plain(docs), every)
        followed: list[int] = []
        page = dataclasses.replace(query, page=0)
        while True:
            ids, counted, position = index.select(page, docs)
            assert counted == total
            followed += ids
            if position is None:
                break
            page = dataclasses.replace(page, cursor=page.next_cursor(position))
        assert followed == expected, query


@pytest.mark.parametrize(
    ("transcript", "search", "found"),
    [
        ("Hello, I want a REFUND", "refund", True),
        ('he said "refund" twice', '"refund"', True),  # quotes are escaped in the JSON
        ("back\\slash", "k\\s", True),
        ("İstanbul office", "i̇stanbul", True),  # not ASCII: the text is parsed
        ("nothing here", "refund", False),
    ],
)
def test_transcript_search_finds_what_the_transcript_holds(transcript, search, found):
    call = random_call(random.Random(1), 1)
    call["transcript"] = transcript
    docs = {"1": stored(call)}
    index = OrgCallIndex([(1, docs["1"])])
    query = CallQuery(
        page=0,
        limit=10,
        sort_by="created_at",
        sort_order="descending",
        filters=normalize_filters({"transcript_search": search}),
    )

    assert index.select(query, docs)[:2] == (([1], 1) if found else ([], 0))
