"""Handlers of the `sandbox` tag: what the sandbox dialer's calls leave behind."""

from __future__ import annotations

import contextlib
import hmac

from calls_server.domain.errors import CallNotFound, NotFound
from calls_server.handlers.scope import services
from calls_server.services.sandbox import recording, recording_token


def get_sandbox_recording(
    call_id: str, organization_id: str | None = None, token: str | None = None
) -> tuple[bytes, int, dict[str, str]]:
    """GET /api/sandbox/recordings/{call_id}: a generated WAV standing in for the recording,
    as long as the call.

    Served only for a call of `organization_id` whose `recording_url` carries `token`
    (compared in constant time): anything else is the same 404, so ids cannot be probed.
    A plain function, so it runs on a worker thread: the store may wait for a database, and
    the WAV takes milliseconds of pure Python to make (then it is cached)."""
    running = services()
    if running.sandbox is None:
        raise NotFound("The sandbox is off on this server (CALLS_SANDBOX)", message="Not found")
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
    }
    assert call is not None  # it holds the token
    # As long as the call: made at the first fetch (milliseconds), then kept a while.
    return recording(call_id, call["call_duration"] or 0), 200, headers
