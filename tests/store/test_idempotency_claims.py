"""Idempotency-Key claims under concurrency: many twins of one keyed request at once, in one
process (the process's registry of requests running, `IdempotencyKeys`) and across processes
(the store's claim: two PostgresStores on one database stand for two processes). Exactly one
twin runs the request and the others get its answer (or a 409 while it runs), never an
error of the server.

Aggressive rather than lucky: every round starts its twins together (a barrier, or tasks
started in one go on one event loop) and many rounds run."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from calls_server.domain import idempotency
from calls_server.domain.errors import ApiError, IdempotencyKeyInFlight
from calls_server.domain.idempotency import RUNNING
from calls_server.handlers import idempotency_keys as handlers_idempotency
from calls_server.handlers.idempotency_keys import CLAIM_LEASE_MS, IdempotencyKeys
from calls_server.integrations.clock import wall_clock
from calls_server.storage.interface import UNDER_CLAIM
from calls_server.storage.postgres import PostgresStore
from tests.store.test_store_contract import a_call

TWINS = 12
ROUNDS = 40


class ReadsWait:
    """`store` as a store whose reads wait for a database: `IdempotencyKeys` calls it on
    worker threads, so a request's twins interleave at each of its reads (as on
    PostgreSQL), whatever the backend."""

    reads_wait = True

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@contextmanager
def serving(store: Any, clock: Any = wall_clock) -> Iterator[IdempotencyKeys]:
    """A process's registry of requests with a key, as a running app builds it, over
    `store` (read as a database's)."""
    yield IdempotencyKeys(ttl_seconds=60, store=ReadsWait(store), clock=clock)


async def never_recovered(record_id: str, keep: Any) -> Any:
    raise AssertionError(f"no request stored {record_id} and lost its answer here")


def test_twins_in_one_process_run_the_request_once_and_all_get_its_answer(store):
    """Twins that all arrive while the first reads the store: each waits for the one
    running instead of registering over it (then one of them was never told it had
    ended: a KeyError, a 500, and a 409 for those waiting on it)."""
    runs: Counter[str] = Counter()
    answers: dict[str, list[Any]] = {}

    async def round_of_twins(keys: IdempotencyKeys, key: str) -> None:
        async def run(keep: Any) -> Any:
            runs[key] += 1
            await anyio.sleep(0.005)
            body = {"call_id": f"call-of-{key}"}
            keep(200, body, {})
            return body, 200, {}

        async def twin() -> None:
            try:
                answer = await keys.answer("acme", key, "print", run, never_recovered)
            except ApiError as error:
                answer = error.status_code
            answers.setdefault(key, []).append(answer)

        async with anyio.create_task_group() as twins:
            for _ in range(TWINS):
                twins.start_soon(twin)

    async def rounds() -> None:
        with serving(store) as keys:
            for n in range(ROUNDS):
                await round_of_twins(keys, f"key-{n}")

    anyio.run(rounds)

    assert runs == Counter({f"key-{n}": 1 for n in range(ROUNDS)})
    for key, got in answers.items():
        assert len(got) == TWINS
        assert got.count(({"call_id": f"call-of-{key}"}, 200, {})) == 1  # the one that ran
        replayed = ({"call_id": f"call-of-{key}"}, 200, {"Idempotent-Replayed": "true"})
        assert got.count(replayed) == TWINS - 1, got


@pytest.fixture
def stores(database_url: str) -> Iterator[list[PostgresStore]]:
    """Two PostgresStores on one database: two processes serving it."""
    opened = [PostgresStore(database_url, max_connections=TWINS) for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


def test_twins_claiming_in_two_processes_run_once_each_time_the_key_is_free(stores):
    """Twins claim one key at once, through two stores, until it is answered. The first to
    claim it runs the request and, every other round, releases it (its answer is not one to
    keep): then exactly one other claims it and keeps its answer. No claim fails, each
    sees either a claim running (the fingerprint sent), or the answer kept."""
    errors: list[BaseException] = []

    def round_of_twins(n: int) -> list[str]:
        key = f"key-{n}"
        release_first = n % 2 == 1
        start = threading.Barrier(TWINS)
        ran: list[str] = []
        lock = threading.Lock()

        def twin(t: int) -> None:
            store = stores[t % 2]
            try:
                start.wait()
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    now = wall_clock()
                    mine = idempotency.claim("acme", key, "print", now, lease_ms=60_000)
                    other = store.claim_idempotent(mine, now)
                    if other is None:
                        with lock:
                            ran.append(f"twin-{t}")
                            first = len(ran) == 1
                        time.sleep(0.002)  # runs the request
                        if release_first and first:
                            store.release_idempotent(mine)
                        else:
                            store.keep_idempotent(answer(key, f"twin-{t}", now))
                        return
                    assert other["fingerprint"] == "print"
                    if other["status"] != RUNNING:
                        assert other["body"] == {"by": ran[-1]}
                        return
                    time.sleep(0.001)
                raise AssertionError(f"{key} never answered")
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=twin, args=(t,)) for t in range(TWINS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert len(ran) == (2 if release_first else 1), (key, ran)
        return ran

    for n in range(ROUNDS):
        round_of_twins(n)


def answer(key: str, by: str, now: int) -> idempotency.IdempotentAnswer:
    return idempotency.IdempotentAnswer(
        scope="acme",
        key=key,
        fingerprint="print",
        status=200,
        body={"by": by},
        headers={},
        created_at=now,
        expires_at=now + 60_000,
    )


# -- a claim whose request stored its record (PostgreSQL marks it `written`) ----------------

TTL_MS = 3_600_000


def stored_under_a_claim(store: PostgresStore, now: int) -> idempotency.IdempotentAnswer:
    """Another process's request with key-1 claimed at `now`, which stored call 'first'
    (its claim marked `written` in the call's transaction) and has not answered yet."""
    claim = idempotency.claim("acme", "key-1", "print", now, CLAIM_LEASE_MS)
    assert store.claim_idempotent(claim, now) is None
    under = UNDER_CLAIM.set((claim, now + TTL_MS))
    try:
        store.add_call(a_call(org="acme", call_id="first"))
    finally:
        UNDER_CLAIM.reset(under)
    return claim


def retry(store: PostgresStore, clock: Any) -> tuple[BaseException | None, float, list[str]]:
    """key-1 sent again to a process serving `store`: what it raised, how long it took,
    and what it did: ran the request (`ran`), or answered from a stored record's id."""
    did: list[str] = []

    async def run(keep: Any) -> Any:
        did.append("ran")
        return {}, 200, {}

    async def recover(record_id: str, keep: Any) -> Any:
        did.append(record_id)
        return {}, 200, {}

    async def send() -> None:
        with serving(store, clock) as keys:
            await keys.answer("acme", "key-1", "print", run, recover)

    started = time.monotonic()
    try:
        anyio.run(send)
    except ApiError as error:
        return error, time.monotonic() - started, did
    return None, time.monotonic() - started, did


def test_a_retry_while_the_first_request_runs_after_storing_its_record_is_in_flight(
    stores, monkeypatch
):
    """The first request stored its call and is dialing it (up to 10 s): still running, so
    its retry is told so, not that the request is done and its answer lost."""
    monkeypatch.setattr(handlers_idempotency, "IN_FLIGHT_WAIT", 0.3)
    now = wall_clock()
    stored_under_a_claim(stores[0], now)

    error, _, did = retry(stores[1], clock=lambda: now + 1_000)

    assert type(error) is IdempotencyKeyInFlight, error
    assert "still running" in error.error
    assert did == []


def test_a_retry_past_the_lease_of_a_request_that_stored_its_record_answers_from_it_at_once(
    stores,
):
    """The first request's process stopped after storing its call: once the claim's lease
    passed, a retry is answered from what was stored, without waiting, and runs nothing."""
    now = wall_clock()
    stored_under_a_claim(stores[0], now)

    error, took, did = retry(stores[1], clock=lambda: now + CLAIM_LEASE_MS)

    assert error is None
    assert did == ["first"]  # recovered from the stored call, the request not run again
    assert took < 2  # not IN_FLIGHT_WAIT (10 s)


def test_a_claim_whose_request_stored_its_record_is_never_taken_over(stores):
    """Past its lease too (its process stopped), until the answer it stands for would have
    expired: taking it over would store the record a second time."""
    now = wall_clock()
    written = stored_under_a_claim(stores[0], now)

    for later in (now + CLAIM_LEASE_MS, now + TTL_MS - 1):
        theirs = idempotency.claim("acme", "key-1", "print", later, CLAIM_LEASE_MS)
        found = stores[1].claim_idempotent(theirs, later)
        assert found is not None
        assert found["created_at"] == written["created_at"]
        assert found["written"] == {"kind": "call", "id": "first"}
    after_ttl = idempotency.claim("acme", "key-1", "print", now + TTL_MS, CLAIM_LEASE_MS)
    assert stores[1].claim_idempotent(after_ttl, now + TTL_MS) is None  # as an answer expires
