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

The answer is kept right after the handler's own write, without waiting for an fsync of
its own (the next write's covers it); the write itself carries a mark of the key's claim
(`storage.interface.UNDER_CLAIM`), so a process stopped between the two leaves a mark the
retry answers from (see below), on either store.

An answer that says to try again is never kept, the 503 "Outcome unknown" (the database
went away while the create was being committed) included. The create marks the key's
claim in its own transaction or journal record (`storage.interface.UNDER_CLAIM`), so a
retry knows whether it was stored: if not, the retry runs; if so, once the first request
has ended (or its process stopped: the claim's lease passed), the retry answers what the
first would have, made again from the stored record by the operation's `recover`
function (and kept), never creating a second one; until then the first may still be
running (a call is stored, then dialed), and the retry is told so (409 after
`IN_FLIGHT_WAIT`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread

from calls_server.domain import idempotency
from calls_server.domain.envelope import failure, unpack
from calls_server.domain.errors import ApiError
from calls_server.handlers.idempotency_keys import IdempotencyKeys, Keep
from calls_server.handlers.scope import services

# What is kept (and replayed) instead of an answer: (status, body, headers) in and out.
KeptAs = Callable[[int, Any, dict[str, str]], tuple[int, Any, dict[str, str]]]
# The answer to a create whose record (this id) was stored but whose answer was lost,
# made from the stored record; called with the id and the handler's own arguments.
Recover = Callable[..., Any]

# The scope of the admin API's keys: not an organization id (their pattern has no colon), so
# an organization named `admin` keeps keys of its own.
ADMIN_SCOPE = ":admin"


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
            scope = org or ADMIN_SCOPE
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


def _as_kept(result: Any, kept_as: KeptAs) -> Any:
    """`result` (a handler's answer) as `kept_as` would keep it."""
    body, status, headers = unpack(result)
    kept_status, kept_body, kept_headers = kept_as(status, body, headers)
    return kept_body, kept_status, kept_headers
