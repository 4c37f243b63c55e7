"""Versions of records, for `ETag` and `If-Match` (no lost updates).

A record's version is a digest of its stored content: every change of a call (its status,
fields, metadata, events, `updated_at`) gives another one, and every backend computes the
same version for the same record without storing a counter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from calls_server.domain.errors import PreconditionFailed


def etag(record: Mapping[str, Any]) -> str:
    """The record's version as a strong ETag (a quoted string)."""
    digest = hashlib.blake2b(orjson.dumps(record, option=orjson.OPT_SORT_KEYS), digest_size=8)
    return f'"{digest.hexdigest()}"'


def answer_etag(data: Any) -> str:
    """The version of an answer's `data` as an ETag: a digest of it as built (its keys in
    the order the server builds them, the same from one read to the next), without the
    sorting a stored record's version needs: a page's ETag is computed on every listing.

    SHA-1, cut to 64 bits: the processor's SHA instructions hash a page of 20 calls (30 KB)
    in 22 us where BLAKE2b takes 50 us (timeit); a page's tag only tells one answer from the
    next, never guards anything (a record's version, which If-Match checks, keeps BLAKE2b)."""
    digest = hashlib.sha1(orjson.dumps(data), usedforsecurity=False)
    return f'"{digest.hexdigest()[:16]}"'


def not_modified(if_none_match: str | None, current: str) -> bool:
    """Whether `If-None-Match` names the current version `current` (or is `*`): the client
    holds it already, and is answered 304 (RFC 9110 §13.1.2: weak comparison, `W/` and all
    tags of a comma-separated list considered)."""
    if if_none_match is None:
        return False
    listed = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in listed or current.removeprefix("W/") in listed


def check_if_match(record: Mapping[str, Any], if_match: str | None, what: str = "call") -> None:
    """Raises PreconditionFailed (412, with the current ETag) unless `if_match` is absent,
    `*`, or lists the record's current version (RFC 9110 §13.1.1: strong comparison, so
    a weak `W/` tag never matches)."""
    if if_match is None:
        return
    current = etag(record)
    listed = [tag.strip() for tag in if_match.split(",")]
    if "*" in listed or current in listed:
        return
    sent = if_match if len(if_match) <= 80 else if_match[:80] + "…"
    raise PreconditionFailed(
        f"If-Match {sent} does not match the current version {current}: the {what} changed "
        "since it was read; read it again and resend the change with its ETag",
        headers={"ETag": current},
    )
