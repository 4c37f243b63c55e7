"""Quiet hours of batch calling: local wall-clock windows in which no call may start.

Every instant is a Unix time in milliseconds; the wall clock is that of an IANA time zone, so
windows follow daylight-saving changes (a skipped local time resolves to the instant the clock
jumps past it, a repeated one to its first occurrence still ahead).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from calls_server.domain.errors import BadRequest

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# ASCII digits only: `\d` would also accept other scripts' digits.
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; BadRequest naming it when there is no such zone."""
    try:
        return ZoneInfo(name)
    # ValueError: paths such as '../x' or '', and files that are not zones; TypeError: a
    # request may send any JSON value; OSError: a directory of the tzdata package's zones
    # ('America'), which it opens as a file where the system has none of that name.
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise BadRequest(f"Unknown time zone {name!r}", message="Validation error") from None


def local_time(text: str, field: str) -> time:
    """The local time written as 'HH:MM' (00:00 to 23:59, two digits each); BadRequest naming
    `field` and the value otherwise."""
    match = _HHMM.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise BadRequest(
            f"{field} must be a time as HH:MM (00:00 to 23:59), not {text!r}",
            message="Validation error",
        )
    return time(int(match[1]), int(match[2]))


@dataclass(frozen=True)
class QuietHours:
    """The local times `start` to `end` (end excluded) in `zone`, in which no call may start."""

    start: time
    end: time
    zone: ZoneInfo

    @classmethod
    def from_request(
        cls, quiet_hours: Mapping[str, Any] | None, batch_zone: str
    ) -> QuietHours | None:
        """The quiet hours a batch's `quiet_hours` object ({enabled, start_time, end_time,
        timezone}) asks for; None when it is absent or `enabled` is false. The zone is
        `timezone`, else the batch's `batch_zone`."""
        if quiet_hours is None or quiet_hours.get("enabled") is False:
            return None
        # Any JSON value may come: local_time and zone refuse what is not a string.
        start_time: Any = quiet_hours.get("start_time")
        end_time: Any = quiet_hours.get("end_time")
        start = local_time(start_time, "quiet_hours.start_time")
        end = local_time(end_time, "quiet_hours.end_time")
        if start == end:
            # Either reading (always quiet, never quiet) is surely not what was meant.
            raise BadRequest(
                f"quiet hours from {start:%H:%M} to {end:%H:%M} leave no calling time",
                message="Validation error",
            )
        name = quiet_hours.get("timezone")
        return cls(start, end, zone(batch_zone if name is None else name))

    def holds(self, at: int) -> bool:
        """Whether the instant `at` lies in the window: its local wall time is in [start, end);
        a start after the end wraps midnight (22:00 to 08:00)."""
        now = _wall(at, self.zone).time()
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def next_allowed(self, at: int) -> int:
        """`at` itself when outside the window, else the first instant after it that is: when
        the local clock next reads the end (or jumps past it, if a DST change skips it)."""
        while self.holds(at):
            end = next_local_time(at, self.end, self.zone)
            # A fall-back may turn the clock back out of the window before it reads the end (a
            # window starting in the repeated hour): stop at the change, go on if still inside.
            changes = _offset(at, self.zone) != _offset(end, self.zone)
            at = _jump(at, end, self.zone) if changes else end
        return at


def next_local_time(after: int, hhmm: time, zone: ZoneInfo) -> int:
    """The first instant strictly after `after` at which the local clock in `zone` reads `hhmm`
    (retries 'AT 13:00'); on a day that skips it, the instant the clock jumps past it."""
    today = _wall(after, zone).date()
    # The day before too: a fall-back across midnight repeats part of yesterday.
    days = (today + timedelta(days=n) for n in (-1, 0, 1))
    return min(t for day in days for t in _readings(day, hhmm, zone) if t > after)


def _readings(day: date, hhmm: time, zone: ZoneInfo) -> set[int]:
    """The instants at which the clock in `zone` reads `hhmm` on `day`: one, two when a
    fall-back repeats it, or (skipped by a spring-forward) the instant it jumps past it."""
    wall = datetime.combine(day, hhmm)
    # fold 0 and 1 read the wall time with the offsets before and after a change.
    both = [(wall.replace(tzinfo=zone, fold=fold) - _EPOCH) // _MS for fold in (0, 1)]
    found = {t for t in both if _wall(t, zone) == wall}
    # In a gap fold 1 (the later offset) gives the earlier instant; the jump lies between.
    return found or {_jump(min(both), max(both), zone)}


def _jump(before: int, after: int, zone: ZoneInfo) -> int:
    """The first instant in (before, after] with the UTC offset of `after` (the zone changes
    its offset once in between), found by bisection."""
    offset = _offset(after, zone)
    while after - before > 1:
        middle = (before + after) // 2
        if _offset(middle, zone) == offset:
            after = middle
        else:
            before = middle
    return after


def _wall(at: int, zone: ZoneInfo) -> datetime:
    """The local wall time (naive) in `zone` at the instant `at`."""
    return (_EPOCH + at * _MS).astimezone(zone).replace(tzinfo=None)


def _offset(at: int, zone: ZoneInfo) -> timedelta | None:
    return (_EPOCH + at * _MS).astimezone(zone).utcoffset()
