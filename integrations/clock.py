"""The time, as everything outside the domain reads it: through a `Clock`, so that tests can
move time forward instead of waiting for it."""

from __future__ import annotations

import time
from collections.abc import Callable

# A clock answers the current Unix time in milliseconds.
Clock = Callable[[], int]


def wall_clock() -> int:
    """The system's current Unix time in milliseconds."""
    return time.time_ns() // 1_000_000
