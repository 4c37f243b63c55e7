"""`Idempotency-Key` on the operations that create: a retried create answers what the first
one answered, instead of creating again.

`@idempotent` wraps a create handler. Without the header it only runs the handler. With
it: a kept answer for the same key and the same request is replayed (with
`Idempotent-Replayed: true`); the same key with another request is 422; a request whose
twin is still running waits for the twin's answer (409 after `IN_FLIGHT_WAIT`), also when
the twin runs in another process on the same PostgreSQL store: before running, a request
claims its key in the store (`Store.claim_idempotent`), which exactly one process gets. Answers
are kept durably, by the store, for `CALLS_IDEMPOTENCY_TTL`; requests refused before the
handler ran (validation, authentication) are not kept, nor answers that say to try again.

The answer is kept right after the handler's own write, not in the same transaction, and
without waiting for an fsync of its own (the next write's covers it): a crash of the
process between the two writes, or of the machine before that next fsync (milliseconds
under load), lets one retry run again.

An answer that says to try again is never kept, the 503 "Outcome unknown" (the database
went away while the create was being committed) included. On PostgreSQL the create marks
the key's claim in its own transaction (`storage.interface.UNDER_CLAIM`), so a retry knows
whether it was stored: if not, the retry runs; if so, once the first request has ended (or
its process stopped: the claim's lease passed), the retry answers what the first would
have, made again from the stored record by the operation's `recover` function (and kept),
never creating a second one; until then the first may still be running (a call is stored,
then dialed), and the retry is told so (409 after `IN_FLIGHT_WAIT`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import anyio.to_thread

from calls_server.domain import idempotency
from calls_server.domain.envelope import failure, unpack
from calls_server.domain.errors import (
    ApiError,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    StoreUnavailable,
)
from calls_server.domain.idempotency import RUNNING, IdempotentAnswer
from calls_server.handlers.scope import services
from calls_server.storage.interface import UNDER_CLAIM

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

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_ms = int(ttl_seconds * 1000)
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
            running = services()
            found = await _from_store(running.store.find_idempotent, scope, key)
            now = running.clock()
            if found is not None and found["expires_at"] > now and found["status"] != RUNNING:
                _check_same(key, found["fingerprint"], fingerprint)
                return _replay(found)
            claim, answered, written = await self._claim(scope, key, fingerprint)
            if answered is not None:
                return _replay(answered)
            if written is not None:
                keep_it = functools.partial(self._keep, scope, key, fingerprint)
                return _replayed(await recover(written["id"], keep_it))
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
                        await _from_store(running.store.release_idempotent, claim)
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
        running = services()
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        while True:
            now = running.clock()
            claim = idempotency.claim(scope, key, fingerprint, now, CLAIM_LEASE_MS)
            other = await _from_store(running.store.claim_idempotent, claim, now)
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
        running = services()
        now = running.clock()
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
        running.store.keep_idempotent(answer)


# Keeps an answer: (status, body, headers).
Keep = Callable[[int, Any, Any], None]
# What is kept (and replayed) instead of an answer: (status, body, headers) in and out.
KeptAs = Callable[[int, Any, dict[str, str]], tuple[int, Any, dict[str, str]]]
# The answer to a create whose record (this id) was stored but whose answer was lost,
# made from the stored record; called with the id and the handler's own arguments.
Recover = Callable[..., Any]


def idempotent(
    recover: Recover, kept_as: KeptAs | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Awaitable[Any]]]:
    """A create handler, answering retries with an `Idempotency-Key` from the kept answer.

    `recover(record_id, **arguments)` answers a retry whose first request stored its
    record (`record_id`) but lost its answer: what the handler would have answered,
    from the record as stored (finishing what the first left undone, if anything). It runs
    on a worker thread. `kept_as` changes what is kept (and replayed) of an answer shown
    once (a secret, which the store must never hold); a recovered answer goes through it
    too, as the secret is gone.
    """

    def decorate(handler: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        takes = frozenset(inspect.signature(handler).parameters)
        is_async = inspect.iscoroutinefunction(handler)
        operation = handler.__name__

        def keeping(keep: Keep) -> Keep:
            return keep if kept_as is None else _keeping_as(keep, kept_as)

        async def run(arguments: dict[str, Any], keep: Keep | None = None) -> Any:
            keep = None if keep is None else keeping(keep)
            if not is_async:
                # The handler and the keeping of its answer on one worker thread: the
                # store's lock is never waited for on the event loop.
                call = functools.partial(_run_keeping, handler, arguments, keep)
                return await anyio.to_thread.run_sync(call)
            try:
                result = await handler(**arguments)
            except ApiError as error:
                if keep is not None:
                    await anyio.to_thread.run_sync(_keep_error, keep, error)
                raise
            if keep is not None:
                await anyio.to_thread.run_sync(_keep_result, keep, result)
            return result

        async def recovered(arguments: dict[str, Any], record_id: str, keep: Keep) -> Any:
            def answer_and_keep() -> Any:
                result = recover(record_id, **arguments)
                _keep_result(keeping(keep), result)
                return result if kept_as is None else _as_kept(result, kept_as)

            return await anyio.to_thread.run_sync(answer_and_keep)

        async def answer(idempotency_key: str | None = None, **kwargs: Any) -> Any:
            arguments = {name: value for name, value in kwargs.items() if name in takes}
            if idempotency_key is None:
                return await run(arguments)
            token_info = kwargs.get("token_info") or {}
            org = token_info["apiKey"]["organization_id"] if "apiKey" in token_info else None
            scope = org or "admin"
            asked = {name: v for name, v in arguments.items() if name != "token_info"}
            fingerprint = idempotency.fingerprint(operation, asked)
            keys: IdempotencyKeys = services().idempotency
            return await keys.answer(
                scope,
                idempotency_key,
                fingerprint,
                functools.partial(run, arguments),
                functools.partial(recovered, arguments),
            )

        answer.__name__ = answer.__qualname__ = operation
        answer.__module__ = handler.__module__
        answer.__doc__ = handler.__doc__
        return answer

    return decorate


def _keeping_as(keep: Keep, kept_as: KeptAs) -> Keep:
    def keep_as(status: int, body: Any, headers: Any) -> None:
        keep(*kept_as(status, body, dict(headers)))

    return keep_as


def _run_keeping(handler: Callable[..., Any], arguments: dict[str, Any], keep: Keep | None) -> Any:
    """`handler`'s answer, kept with `keep` (if given) when it is one to keep."""
    try:
        result = handler(**arguments)
    except ApiError as error:
        if keep is not None:
            _keep_error(keep, error)
        raise
    if keep is not None:
        _keep_result(keep, result)
    return result


def _keep_result(keep: Keep, result: Any) -> None:
    body, status, headers = unpack(result)
    if idempotency.kept(status):
        keep(status, body, headers)


def _keep_error(keep: Keep, error: ApiError) -> None:
    if idempotency.kept(error.status_code):
        keep(error.status_code, failure(error.message, error.error), error.headers)


async def _from_store(call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)` on a store method: on a worker thread when the store's reads wait for
    a database, at once otherwise."""
    if services().store.reads_wait:
        return await anyio.to_thread.run_sync(call, *args)
    return call(*args)


def _check_same(key: str, kept: str, sent: str) -> None:
    if kept != sent:
        raise IdempotencyKeyReused(
            f"Idempotency-Key '{key}' was first used with another request; "
            "send a new key for a new request"
        )


def _as_kept(result: Any, kept_as: KeptAs) -> Any:
    """`result` (a handler's answer) as `kept_as` would keep it."""
    body, status, headers = unpack(result)
    kept_status, kept_body, kept_headers = kept_as(status, body, headers)
    return kept_body, kept_status, kept_headers


def _replayed(result: Any) -> Any:
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
