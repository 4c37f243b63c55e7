"""The requests with an `Idempotency-Key` that this process is running, and the answers
the store keeps for them: `IdempotencyKeys`, which `handlers.idempotency.idempotent` asks
for a request's answer (the rules are in that module's docstring)."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import anyio
import anyio.to_thread

from calls_server.domain import idempotency
from calls_server.domain.envelope import unpack
from calls_server.domain.errors import (
    ApiError,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    StoreUnavailable,
)
from calls_server.domain.idempotency import RUNNING, IdempotentAnswer
from calls_server.integrations.clock import Clock
from calls_server.storage.interface import UNDER_CLAIM, Durability, IdempotencyRecords


class IdempotencyStore(IdempotencyRecords, Durability, Protocol):
    """What the registry needs of the store: its answers and claims, and whether its reads
    wait for a database."""


# Keeps an answer: (status, body, headers).
Keep = Callable[[int, Any, Any], None]

# Seconds a retry waits for its twin still running before it is answered 409.
IN_FLIGHT_WAIT = 10.0
# A claim's lease (a process that stops mid-request leaves its claim for that long) and how
# often a retry asks whether another process's twin has answered (seconds).
CLAIM_LEASE_MS = 60_000
CLAIM_POLL = 0.05
REPLAYED = {"Idempotent-Replayed": "true"}


@dataclass
class _Flight:
    fingerprint: str
    done: anyio.Event = field(default_factory=anyio.Event)


class IdempotencyKeys:
    """The requests with a key that are running in this process, and the kept answers."""

    def __init__(self, ttl_seconds: float, store: IdempotencyStore, clock: Clock) -> None:
        self.ttl_ms = int(ttl_seconds * 1000)
        self.store, self.clock = store, clock
        self._flying: dict[tuple[str, str], _Flight] = {}  # touched on the event loop only

    async def answer(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        run: Callable[[Keep], Awaitable[Any]],
        recover: Callable[[str, Keep], Awaitable[Any]],
    ) -> Any:
        """The answer to the request `fingerprint` sent with `key`: kept, or made by `run`
        (which keeps it with the function it is given), or, when an earlier request with
        the key stored its record and lost its answer, made by `recover` from that record's
        id (and kept the same way)."""
        slot = (scope, key)
        while (flight := self._flying.get(slot)) is not None:
            _check_same(key, flight.fingerprint, fingerprint)
            with anyio.move_on_after(IN_FLIGHT_WAIT):
                await flight.done.wait()
            if not flight.done.is_set():
                raise IdempotencyKeyInFlight(
                    f"A request with Idempotency-Key '{key}' is still running; "
                    "retry once it has been answered"
                )
        # Registered before the first await: a twin that arrives while this one reads the
        # store must find it and wait, not register a flight of its own over it.
        flight = self._flying[slot] = _Flight(fingerprint)
        try:
            found = await _from_store(self.store, self.store.find_idempotent, scope, key)
            now = self.clock()
            if found is not None and found["expires_at"] > now and found["status"] != RUNNING:
                _check_same(key, found["fingerprint"], fingerprint)
                return _replay(found)
            claim, answered, written = await self._claim(scope, key, fingerprint)
            if answered is not None:
                return _replay(answered)
            if written is not None:
                keep_it = functools.partial(self._keep, scope, key, fingerprint)
                return replayed(await recover(written["id"], keep_it))
            kept = False

            def keep(status: int, body: Any, headers: Any) -> None:
                nonlocal kept
                self._keep(scope, key, fingerprint, status, body, headers)
                kept = True

            under = UNDER_CLAIM.set((claim, now + self.ttl_ms))
            try:
                return await run(keep)
            finally:
                UNDER_CLAIM.reset(under)
                if not kept:  # not an answer to keep: the next retry runs the request
                    # The answer is the request's, not the release's: a store failing now
                    # (the database gone) leaves the claim to expire with its lease.
                    with contextlib.suppress(StoreUnavailable):
                        await _from_store(self.store, self.store.release_idempotent, claim)
        finally:
            del self._flying[slot]
            flight.done.set()

    async def _claim(
        self, scope: str, key: str, fingerprint: str
    ) -> tuple[IdempotentAnswer, IdempotentAnswer | None, dict[str, str] | None]:
        """Claim the key among the processes sharing the store: (the claim, None, None) once
        this one may run the request; (the claim, the answer, None) if another answered it
        meanwhile; (the claim, None, what it wrote: kind and id) if another added its record
        and ended without an answer (or its lease passed: its process stopped). While
        another runs it, ask again every CLAIM_POLL seconds; 409 after IN_FLIGHT_WAIT."""
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        while True:
            now = self.clock()
            claim = idempotency.claim(scope, key, fingerprint, now, CLAIM_LEASE_MS)
            other = await _from_store(self.store, self.store.claim_idempotent, claim, now)
            if other is None:
                return claim, None, None
            _check_same(key, other["fingerprint"], fingerprint)
            if other["status"] != RUNNING:
                return claim, other, None
            marked = cast(dict[str, Any], other)
            written = marked.get("written")
            lease_until = marked.get("lease_until", 0)  # none: marked before leases were kept
            if written is not None and (marked.get("ended") or now >= lease_until):
                # Its request added a record but did not keep its answer (it ended with an
                # outcome it could not know, or its process stopped: its lease passed) and
                # will not: answer from what is stored. Until then it may still be running
                # (a call stored, then dialed): in flight, as any claim.
                return claim, None, cast(dict[str, str], written)
            if time.monotonic() >= deadline:
                raise IdempotencyKeyInFlight(
                    f"A request with Idempotency-Key '{key}' is still running; "
                    "retry once it has been answered"
                )
            await anyio.sleep(CLAIM_POLL)

    def _keep(
        self, scope: str, key: str, fingerprint: str, status: int, body: Any, headers: Any
    ) -> None:
        now = self.clock()
        answer = IdempotentAnswer(
            scope=scope,
            key=key,
            fingerprint=fingerprint,
            status=status,
            body=body,
            headers=dict(headers),
            created_at=now,
            expires_at=now + self.ttl_ms,
        )
        self.store.keep_idempotent(answer)


async def _from_store(store: IdempotencyStore, call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)` on a method of `store`: on a worker thread when the store's reads wait
    for a database, at once otherwise."""
    if store.reads_wait:
        return await anyio.to_thread.run_sync(call, *args)
    return call(*args)


def _check_same(key: str, kept: str, sent: str) -> None:
    if kept != sent:
        raise IdempotencyKeyReused(
            f"Idempotency-Key '{key}' was first used with another request; "
            "send a new key for a new request"
        )


def replayed(result: Any) -> Any:
    """`result` (a handler's answer) marked as a replay."""
    body, status, headers = unpack(result)
    return body, status, {**headers, **REPLAYED}


def _replay(found: IdempotentAnswer) -> Any:
    if found["status"] >= 400:
        body = found["body"]
        error = ApiError(body["error"], body["message"], {**found["headers"], **REPLAYED})
        error.status_code = found["status"]
        raise error
    return found["body"], found["status"], {**found["headers"], **REPLAYED}
