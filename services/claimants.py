"""Whether the process that claimed a piece of work (a scheduled call's dial, a batch task)
has stopped serving the store, so that another may settle the claim.

A claimant not among the live processes (`Store.live_processes`) has stopped, but for one
this process has seen serving: that one is given `grace` seconds to serve again first.
After a database failover each process takes its presence again on the new primary, a
moment after the others may look: without the grace, a live process's dial under way
would be settled as interrupted (or a batch's call cut off) by another.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from calls_server.storage.interface import Processes


class Claimants:
    """The claimants seen serving, and since when each is missing (one per service, which
    looks at every pass, so that a process serving now is known before it goes missing)."""

    def __init__(
        self,
        store: Processes,
        grace: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.grace = grace
        self._monotonic = monotonic
        self._seen: set[str] = set()
        self._missing_since: dict[str, float] = {}

    def live(self) -> set[str]:
        """The processes serving the store now (`Store.live_processes`), noted."""
        live = self.store.live_processes()
        self._seen |= live
        for process in [p for p in self._missing_since if p in live]:
            del self._missing_since[process]
        return live

    def stopped(self, claimant: str, live: set[str]) -> bool:
        """Whether `claimant` has stopped serving, `live` being the processes that serve
        (the last `live()`)."""
        if claimant in live:
            return False
        if claimant not in self._seen:  # before this process looked: stopped for good
            return True
        since = self._missing_since.setdefault(claimant, self._monotonic())
        return self._monotonic() - since >= self.grace
