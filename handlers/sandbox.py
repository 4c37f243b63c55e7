"""Handlers of the `sandbox` tag: what the sandbox dialer's calls leave behind."""

from __future__ import annotations

import contextlib
import hmac

from calls_server.domain.errors import CallNotFound, NotFound, RangeNotSatisfiable
from calls_server.handlers.scope import sandbox_off, services
from calls_server.services.sandbox import recording, recording_token


def get_sandbox_recording(
    call_id: str,
    organization_id: str | None = None,
    token: str | None = None,
    range: str | None = None,  # the Range header, by its name (shadows the builtin here)
) -> tuple[bytes, int, dict[str, str]]:
    """GET /api/sandbox/recordings/{call_id}: a generated WAV standing in for the recording,
    as long as the call.

    Served only for a call of `organization_id` whose `recording_url` carries `token`
    (compared in constant time): anything else is the same 404, so ids cannot be probed.
    A plain function, so it runs on a worker thread: the store may wait for a database, and
    the WAV takes milliseconds of pure Python to make (then it is cached)."""
    running = services()
    if running.sandbox is None:
        raise sandbox_off()
    call = None
    if organization_id and token:
        with contextlib.suppress(CallNotFound):
            call = running.store.get_call(organization_id, call_id)
    kept = recording_token(call["recording_url"]) if call else None
    if kept is None or not hmac.compare_digest(kept.encode(), (token or "").encode()):
        raise NotFound(f"No recording of call '{call_id}' at this URL", message="Not found")
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'inline; filename="{call_id}.wav"',
        "Accept-Ranges": "bytes",
    }
    assert call is not None  # it holds the token
    # As long as the call: made at the first fetch (milliseconds), then kept a while.
    wav = recording(call_id, call["call_duration"] or 0)
    part = _byte_range(range, len(wav))
    if part is None:
        return wav, 200, headers
    first, last = part
    headers["Content-Range"] = f"bytes {first}-{last}/{len(wav)}"
    return wav[first : last + 1], 206, headers


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte a `Range` header asks of `size` bytes, or None for the whole
    (no header, several ranges, another unit, or a form that is not a range: RFC 9110 lets
    a server ignore those). RangeNotSatisfiable for a range starting past the end."""
    if header is None or not header.startswith("bytes=") or "," in header:
        return None
    first_text, dash, last_text = header.removeprefix("bytes=").strip().partition("-")
    if not dash or not (first_text + last_text).isdigit():
        return None
    if not first_text:  # the last N bytes
        count = int(last_text)
        return (max(0, size - count), size - 1) if count and size else None
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size:
        raise RangeNotSatisfiable(
            f"The recording has {size} bytes: {header} starts past its end",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return (first, last) if first <= last else None
