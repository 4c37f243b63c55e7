"""Handler of the `health` tag."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

from calls_server.domain.envelope import Envelope, success
from calls_server.handlers.scope import reads, services


def _running_version() -> str:
    # The package's metadata is a file: a process out of file descriptors is still alive
    # and must say so (then without its version, until it can read it once).
    try:
        return _package_version()
    except OSError:
        return "unknown"


@cache
def _package_version() -> str:
    try:
        return version("calls-server")
    except PackageNotFoundError:
        return "unknown"


async def get_health() -> tuple[Envelope, int]:
    """GET /api/health: the process is up and serving (answered on the event loop, so a
    busy worker pool does not make a live server look dead; no file is opened)."""
    return success("OK", {"status": "ok", "version": _running_version()}), 200


@reads
def get_readiness() -> tuple[Envelope, int]:
    """GET /api/ready: the store can serve requests (StoreUnavailable, a 503, otherwise: a
    failed journal, or a data directory that refused a write and still refuses one)."""
    services().store.check_ready()
    return success("Ready", {"status": "ready", "checks": {"store": "ok"}}), 200
