"""Signatures of what this server sends (webhook deliveries, dialer jobs), and how a
receiver checks them.

`Calls-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>` signs the time
with the body, so a captured request cannot be replayed later: receivers reject a `t` older
than a few minutes (`verify` does) and deduplicate webhook events by `event_id`.
`X-Calls-Signature: sha256=<hex HMAC-SHA256 of the body>` is the earlier scheme, still sent
beside it while receivers move over (deprecated; it will be removed in version 2).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from typing import Any

SIGNATURE_HEADER = "Calls-Signature"
LEGACY_SIGNATURE_HEADER = "X-Calls-Signature"  # deprecated: body only, no timestamp
TOLERANCE_SECONDS = 300


_BLOCK = 64  # bytes: SHA-256's block, HMAC's key length (RFC 2104)
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


@functools.lru_cache(maxsize=4096)
def _keyed(secret: str) -> tuple[Any, Any]:
    """HMAC-SHA256's inner and outer hashes with `secret`'s padded key already in them (RFC
    2104), kept per secret: each signature then copies them instead of keying two hashes
    anew (half the CPU of `hmac.new` per delivery, which signs twice)."""
    key = secret.encode()
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_INNER_PAD)), hashlib.sha256(key.translate(_OUTER_PAD))


def _hmac_hex(secret: str, *parts: bytes) -> str:
    """The hex HMAC-SHA256 of the concatenated `parts` with `secret` (as `hmac.new`'s)."""
    inner_keyed, outer_keyed = _keyed(secret)
    inner = inner_keyed.copy()
    for part in parts:
        inner.update(part)
    outer = outer_keyed.copy()
    outer.update(inner.digest())
    return str(outer.hexdigest())


def legacy_signature(secret: str, body: bytes) -> str:
    """The deprecated `X-Calls-Signature` value for `body`."""
    return "sha256=" + _hmac_hex(secret, body)


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The `Calls-Signature` value for `body` sent at `timestamp` (Unix seconds)."""
    return f"t={timestamp},v1={_hmac_hex(secret, f'{timestamp}.'.encode(), body)}"


def signature_headers(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Both signature headers of a request carrying `body`."""
    return {
        SIGNATURE_HEADER: signature(secret, body, timestamp),
        LEGACY_SIGNATURE_HEADER: legacy_signature(secret, body),
    }


def verify(
    secret: str,
    body: bytes,
    header: str,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> bool:
    """Whether `header` (a `Calls-Signature` value) signs `body` with `secret` and was made
    within `tolerance` seconds of `now` (default: the current time). For receivers."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))
