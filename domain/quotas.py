"""How much one organization may hold: a number of calls and a number of bytes."""

from __future__ import annotations

from dataclasses import dataclass

from calls_server.domain.errors import QuotaExceeded


@dataclass(frozen=True)
class Quota:
    """Limits per organization; 0 means no limit."""

    max_calls: int = 0
    max_bytes: int = 0

    def check(self, calls: int, size: int) -> None:
        """Raise QuotaExceeded if an organization holding `calls` calls of `size` bytes in
        all (after the change asked for) would be over a limit."""
        if self.max_calls and calls > self.max_calls:
            raise QuotaExceeded(
                f"The organization already holds {self.max_calls} calls, its quota; "
                "delete calls it no longer needs"
            )
        if self.max_bytes and size > self.max_bytes:
            raise QuotaExceeded(
                f"The organization's calls would take {size} bytes, over its quota of "
                f"{self.max_bytes} bytes; delete calls it no longer needs"
            )
