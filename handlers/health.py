"""Handler of the `health` tag."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from calls_server.domain.envelope import Envelope, success
from calls_server.handlers.scope import reads, services


async def get_health() -> tuple[Envelope, int]:
    """GET /api/health: the process is up and serving (answered on the event loop, so a
    busy worker pool does not make a live server look dead)."""
    try:
        running = version("calls-server")
    except PackageNotFoundError:
        running = "unknown"
    return success("OK", {"status": "ok", "version": running}), 200


@reads
def get_readiness() -> tuple[Envelope, int]:
    """GET /api/ready: the store can serve requests (StoreUnavailable, a 503, otherwise)."""
    services().store.check_ready()
    return success("Ready", {"status": "ready", "checks": {"store": "ok"}}), 200
