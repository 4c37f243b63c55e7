"""Times as upstream writes them in its resources: ISO 8601 in UTC, with a `Z`, to the second
(`2024-01-15T10:30:00Z`, as every upstream page shows them)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(ms: int) -> str:
    """A Unix time in milliseconds as `2026-11-24T16:58:00Z` (the milliseconds dropped)."""
    return datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> int:
    """The Unix time in milliseconds of a time written by `utc`."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(parsed.timestamp() * 1000)
