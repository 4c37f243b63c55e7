"""Times as upstream writes them in its resources: ISO 8601 in UTC, with a `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(ms: int, milliseconds: bool = True) -> str:
    """A Unix time in milliseconds as `2026-11-24T16:58:00.646Z` (or, without
    `milliseconds`, `2026-11-24T16:58:00Z`)."""
    seconds = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{seconds}.{ms % 1000:03d}Z" if milliseconds else f"{seconds}Z"


def parse_utc(text: str) -> int:
    """The Unix time in milliseconds of a time written by `utc`."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(parsed.timestamp() * 1000)
