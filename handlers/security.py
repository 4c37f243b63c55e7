"""Security functions named by openapi.yaml's security schemes.

The request path calls them before validation (on the event loop, or a worker thread when
they read a store whose reads wait: `@reads`), with exactly these signatures
(`request` is passed because the signature asks for it). The API key and secret are two
schemes required together; Connexion hands each function only its own header, so the
first function checks the pair (and the rate limits) and the second only accepts.

On a store whose reads are round trips, a request that only reads may be let in on the key's
record as last read by this process, its check against the database then carried by the
request's own read (domain/key_checks.py): the key is still read from the database by every
request, so a revocation holds at once in every process.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from connexion.lifecycle import ConnexionRequest

from calls_server.domain import key_checks, keys
from calls_server.domain.errors import (
    BOTH_HEADERS,
    INVALID_ADMIN_TOKEN,
    Forbidden,
    RateLimited,
    Unauthorized,
)
from calls_server.domain.keys import INVALID_PAIR, ApiKey
from calls_server.domain.rate_limits import RATE_LIMIT_HEADERS, RATE_LIMIT_REFUSED
from calls_server.handlers.scope import Services, reads


@reads
def check_api_key_pair(
    api_key: str, required_scopes: Any = None, request: ConnexionRequest | None = None
) -> dict[str, Any]:
    """Who is calling (key and organization) when the key/secret pair is valid and active."""
    assert request is not None  # Connexion passes it: the signature asks for it
    with _noting_refusal(request):
        return _check_api_key_pair(api_key, request)


def _check_api_key_pair(api_key: str, request: ConnexionRequest) -> dict[str, Any]:
    running = request.state.services
    now = running.clock()
    # Guessing keys is limited per client network: past the limit, even a right pair waits.
    address = _client_address(request)
    running.rate_limits.check_address(address, now)
    secret = request.headers.get("X-API-SECRET")
    try:
        if not secret:
            raise Unauthorized(BOTH_HEADERS)
        key = _checked_by_the_read(running, api_key, secret, request) or keys.authenticated(
            api_key, secret, running.store.find_api_key
        )
    except Unauthorized:
        running.rate_limits.failed(address, now)
        raise
    allowance = running.rate_limits.admit(key["api_key_id"], key["organization_id"], now)
    if allowance is not None:
        request.scope[RATE_LIMIT_HEADERS] = allowance.headers()
    return {
        "sub": key["api_key_id"],
        "organization_id": key["organization_id"],
        "api_key_id": key["api_key_id"],
    }


def _checked_by_the_read(
    running: Services, api_key: str, secret: str, request: ConnexionRequest
) -> ApiKey | None:
    """The key's record as last read in this process, when the pair verifies against it and
    the request's read will check it against the database (domain/key_checks.py): one round
    trip, not two. None otherwise (the record is then read first, as it always was)."""
    carrying = key_checks.current()
    known_api_key = getattr(running.store, "known_api_key", None)  # stores whose reads wait
    if carrying is None or known_api_key is None:
        return None
    known: ApiKey | None = known_api_key(api_key)
    key = None
    if known is not None:
        with contextlib.suppress(Unauthorized):  # the record kept may be out of date
            key = keys.authenticated(api_key, secret, lambda _: known)
    if key is None:  # the database decides
        if carrying.on_loop:
            raise key_checks.ReadNeeded
        return None
    who = (key["api_key_id"], key["organization_id"])

    def confirm(found: ApiKey | None) -> None:
        if found == known:
            return
        try:
            fresh = keys.authenticated(api_key, secret, lambda _: found)
            if (fresh["api_key_id"], fresh["organization_id"]) != who:
                raise Unauthorized(INVALID_PAIR)
        except Unauthorized:
            # As a refusal before the read: a failed authentication, no allowance shown.
            running.rate_limits.failed(_client_address(request), running.clock())
            request.scope.pop(RATE_LIMIT_HEADERS, None)
            raise

    carrying.check = key_checks.KeyCheck(api_key, confirm, running.store.find_api_key, known)
    return key


def accept_api_secret(
    api_secret: str, required_scopes: Any = None, request: ConnexionRequest | None = None
) -> dict[str, Any]:
    """The secret was checked together with its key by `check_api_key_pair`."""
    return {}


def check_admin_token(
    token: str, required_scopes: Any = None, request: ConnexionRequest | None = None
) -> dict[str, Any]:
    """Admin access when `token` is the configured admin token. Wrong tokens count as
    failed authentications, as wrong key pairs do: the same limit stops guessing either."""
    assert request is not None
    with _noting_refusal(request):
        return _check_admin_token(token, request)


def _check_admin_token(token: str, request: ConnexionRequest) -> dict[str, Any]:
    running = request.state.services
    expected: str | None = running.admin_token
    if expected is None:
        raise Forbidden(
            "The admin API is disabled: start the server with CALLS_ADMIN_TOKEN set",
            message="Admin API disabled",
        )
    now, address = running.clock(), _client_address(request)
    running.rate_limits.check_address(address, now)
    if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected.encode()):
        running.rate_limits.failed(address, now)
        raise Unauthorized(INVALID_ADMIN_TOKEN)
    return {"sub": "admin"}


def _client_address(request: ConnexionRequest) -> str:
    """The client's address (behind a trusted proxy, the one it forwarded)."""
    client = request.scope.get("client")
    return str(client[0]) if client else "unknown"


@contextmanager
def _noting_refusal(request: ConnexionRequest) -> Iterator[None]:
    """Note which limit refused a request, for the metrics (calls_server/metrics.py counts
    the 429s by limit)."""
    try:
        yield
    except RateLimited as refused:
        request.scope[RATE_LIMIT_REFUSED] = refused.limit
        raise
