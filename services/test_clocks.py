"""Test clocks: an organization's time, frozen and moved by its tests (the sandbox's
`sandbox_clock` operations).

`Clocks` is the app's one clock. It answers the real time, except for an organization on a
test clock, whose time it answers instead: the organization a request authenticated as
(set by the app as each operation is entered), or that a service works for
(`working_for`). A service that works for every organization at once reads the real time
and leaves the organizations on test clocks alone (`frozen`): their due work is run by
`advance`, which moves a frozen clock forward step by step, to each time something falls
due (`DueWork.next_due` of each service), and runs it there (`DueWork.run_due`), so that
what results carries the times it would have had.

Test clocks live in the memory of the process, as the sandbox's play-out does: a restart
puts every organization back on the real time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from calls_server.domain.errors import BadRequest
from calls_server.integrations.clock import Clock, wall_clock

# The organization whose time the current request or service work reads (None: the real
# time).
ORGANIZATION: ContextVar[str | None] = ContextVar("clock_organization", default=None)
# An advance stops at most this many times on its way (each a time something fell due):
# beyond it, something keeps falling due without ever being done.
MAX_STEPS = 100_000
# How often what is due at one time is run again before the clock moves on (a call ended
# frees a batch's slot, whose next dial is due at once, ...).
MAX_ROUNDS = 50
# A clock never moves further at once (one year).
MAX_ADVANCE_MS = 366 * 86_400_000


class DueWork(Protocol):
    """A service whose work falls due at times on an organization's clock."""

    def next_due(self, organization_id: str) -> int | None:
        """When the organization's next piece of work falls due (Unix ms; None: none)."""

    def run_due(self, organization_id: str, now: int) -> int:
        """Run what of the organization's work is due at `now`; how many pieces ran."""

    def resumed(self, organization_id: str) -> None:
        """The organization is back on the real time: its waiting work is due as usual."""


class Clocks:
    """The real time (`wall`), except for the organizations on a test clock."""

    def __init__(self, wall: Clock = wall_clock) -> None:
        self.wall = wall
        self.works: list[DueWork] = []  # the services whose work falls due (the app's)
        self._frozen: dict[str, int] = {}  # organization -> its frozen time
        self._ahead: dict[str, int] = {}  # resumed ahead of the real time -> where
        self._lock = threading.Lock()
        self._advancing: dict[str, threading.Lock] = {}

    def __call__(self) -> int:
        """The current time (Unix ms) of the organization at work, or the real time."""
        organization_id = ORGANIZATION.get()
        if organization_id is None or not (self._frozen or self._ahead):
            return self.wall()
        return self.now(organization_id)

    def now(self, organization_id: str) -> int:
        """The organization's current time (Unix ms)."""
        frozen = self._frozen.get(organization_id)
        if frozen is not None:
            return frozen
        wall = self.wall()
        ahead = self._ahead.get(organization_id)
        return wall if ahead is None or wall >= ahead else ahead

    def frozen(self, organization_id: str) -> bool:
        """Whether the organization's clock is frozen (its due work waits for `advance`)."""
        return organization_id in self._frozen

    def freeze(self, organization_id: str, at: int | None = None) -> int:
        """Freeze the organization's clock at `at` (default: its current time); BadRequest
        for a time before its current one (a clock never runs backwards)."""
        with self._lock:
            now = self.now(organization_id)
            if at is not None and at < now:
                raise BadRequest(
                    f"The clock cannot move backwards: 'frozen_at' is before the "
                    f"organization's current time ({at} < {now} ms)"
                )
            self._frozen[organization_id] = now if at is None else at
            self._ahead.pop(organization_id, None)
            return self._frozen[organization_id]

    def resume(self, organization_id: str) -> int:
        """Put the organization back on the real time (staying where its clock is until the
        real time catches up, if it is ahead), its waiting work handed back to the
        services; its time now."""
        with self._lock:
            frozen = self._frozen.pop(organization_id, None)
            if frozen is not None and frozen > self.wall():
                self._ahead[organization_id] = frozen
        if frozen is not None:
            for work in self.works:
                work.resumed(organization_id)
        return self.now(organization_id)

    def forget(self, organization_id: str) -> None:
        """Put the organization back on the real time at once, even from ahead of it (its
        records are gone: a reset)."""
        self.resume(organization_id)
        with self._lock:
            self._ahead.pop(organization_id, None)

    def advance(self, organization_id: str, to: int) -> int:
        """Move the organization's frozen clock to `to`, stopping at each time something of
        the services' work falls due on the way and running it there; how many times it
        stopped.
        BadRequest for a clock that is not frozen or a `to` in its past or over a year
        ahead."""
        with self._lock:
            lock = self._advancing.setdefault(organization_id, threading.Lock())
        with lock, working_for(organization_id):
            start = self._frozen.get(organization_id)
            if start is None:
                raise BadRequest(
                    "The organization's clock is not frozen: freeze it first "
                    "(POST /sandbox/clock/freeze)"
                )
            if to < start:
                raise BadRequest(
                    f"The clock cannot move backwards: 'to' is before the organization's "
                    f"current time ({to} < {start} ms)"
                )
            if to - start > MAX_ADVANCE_MS:
                raise BadRequest("A clock moves at most a year at once")
            steps, now = 0, start
            while True:
                self._run_due(organization_id, now)
                # What is due already and did not run waits on something else (a call to
                # end, a slot to free): the next time of something strictly later.
                upcoming = [
                    when
                    for work in self.works
                    if (when := work.next_due(organization_id)) is not None and now < when <= to
                ]
                if not upcoming:
                    self._set(organization_id, to)
                    self._run_due(organization_id, to)  # what expires by then (events)
                    return steps
                now = min(upcoming)
                self._set(organization_id, now)
                steps += 1
                if steps > MAX_STEPS:
                    raise BadRequest(
                        f"The clock stopped {MAX_STEPS} times on its way and is at {now} ms: "
                        "advance it in smaller moves"
                    )

    def _run_due(self, organization_id: str, now: int) -> None:
        for _ in range(MAX_ROUNDS):
            if not sum(work.run_due(organization_id, now) for work in self.works):
                return

    def _set(self, organization_id: str, now: int) -> None:
        with self._lock:
            if organization_id in self._frozen:  # resumed meanwhile: left alone
                self._frozen[organization_id] = now


@contextmanager
def working_for(organization_id: str) -> Iterator[None]:
    """Read the organization's time in this block (a service's work for it)."""
    token = ORGANIZATION.set(organization_id)
    try:
        yield
    finally:
        ORGANIZATION.reset(token)


def frozen(clock: Clock, organization_id: str) -> bool:
    """Whether `clock` (the app's `Clocks`, or a plain clock) holds the organization's time
    frozen: then the services leave its due work to `Clocks.advance`."""
    return isinstance(clock, Clocks) and clock.frozen(organization_id)


def now_of(clock: Clock, organization_id: str) -> int:
    """The organization's time on `clock` (a plain clock: its time)."""
    return clock.now(organization_id) if isinstance(clock, Clocks) else clock()
