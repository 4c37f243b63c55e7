"""Signatures of what this server sends (webhook deliveries, dialer jobs), and how a
receiver checks them.

`Calls-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>` signs the time
with the body, so a captured request cannot be replayed later: receivers reject a `t` older
than a few minutes (`verify` does) and deduplicate webhook events by `event_id`.
`X-Calls-Signature: sha256=<hex HMAC-SHA256 of the body>` is the earlier scheme, still sent
beside it while receivers move over (deprecated; it will be removed in version 2).
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Calls-Signature"
LEGACY_SIGNATURE_HEADER = "X-Calls-Signature"  # deprecated: body only, no timestamp
TOLERANCE_SECONDS = 300


def legacy_signature(secret: str, body: bytes) -> str:
    """The deprecated `X-Calls-Signature` value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The `Calls-Signature` value for `body` sent at `timestamp` (Unix seconds)."""
    signed = f"{timestamp}.".encode() + body
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


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
