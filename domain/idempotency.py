"""Idempotency keys: what identifies a request, and which answers are kept for replay.

A client sends `Idempotency-Key` with a create; the first answer is kept per scope (the
organization, or the admin API) for a while, and a retry with the same key and the same
request gets that answer again instead of creating a second record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, TypedDict

import orjson


class IdempotentAnswer(TypedDict):
    """An answer kept for a key: what was asked (its fingerprint) and what was answered."""

    scope: str
    key: str
    fingerprint: str
    status: int
    body: Any
    headers: dict[str, str]
    created_at: int  # Unix ms
    expires_at: int  # Unix ms


# The status of a claim: a request with this key is running (in some process), its answer
# not yet kept.
RUNNING = 0


def claim(scope: str, key: str, fingerprint: str, now: int, lease_ms: int) -> IdempotentAnswer:
    """The record that says a request with `key` is running, until `now + lease_ms` at most
    (past that, its process is taken to have stopped and another may run the request).
    Once the request added its record, the claim is marked `written` and kept as long as
    an answer would be (never run again), its lease kept as `lease_until`."""
    return IdempotentAnswer(
        scope=scope,
        key=key,
        fingerprint=fingerprint,
        status=RUNNING,
        body=None,
        headers={},
        created_at=now,
        expires_at=now + lease_ms,
    )


def fingerprint(operation: str, arguments: Mapping[str, Any]) -> str:
    """What identifies a request: its operation and its validated arguments (path
    parameters and body, defaults filled in), whatever the order of keys as sent."""
    canonical = orjson.dumps([operation, arguments], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def kept(status: int) -> bool:
    """Whether an answer is kept for replay: all but those that say to try again (429 and
    5xx: the next try may succeed, and must be allowed to run)."""
    return status < 500 and status != 429
