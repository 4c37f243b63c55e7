"""Handlers of the `sandbox` tag: what the sandbox dialer's calls leave behind."""

from __future__ import annotations

from calls_server.domain.errors import NotFound
from calls_server.handlers.scope import services
from calls_server.integrations.sandbox import recording


async def get_sandbox_recording(call_id: str) -> tuple[bytes, int, dict[str, str]]:
    """GET /api/sandbox/recordings/{call_id}: a generated WAV standing in for the recording."""
    if services().sandbox is None:
        raise NotFound("The sandbox is off on this server (CALLS_SANDBOX)", message="Not found")
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'inline; filename="{call_id}.wav"',
    }
    return recording(call_id), 200, headers
