"""When a claim's process counts as stopped (services/claimants.py)."""

from __future__ import annotations

from calls_server.services.claimants import Claimants


class Serving:
    """The processes serving a store, as `Store.live_processes` tells them."""

    def __init__(self, *processes: str) -> None:
        self.processes = set(processes)

    def live_processes(self) -> set[str]:
        return set(self.processes)


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_live_claimant_has_not_stopped():
    claimants = Claimants(Serving("a", "b"), grace=10)

    assert not claimants.stopped("b", claimants.live())


def test_a_claimant_never_seen_serving_has_stopped_at_once():
    claimants = Claimants(Serving("a"), grace=10)

    assert claimants.stopped("before-a-restart", claimants.live())


def test_a_claimant_seen_serving_counts_as_stopped_only_after_the_grace():
    serving, ticks = Serving("a", "b"), Ticks()
    claimants = Claimants(serving, grace=10, monotonic=ticks)
    claimants.live()
    serving.processes.discard("b")

    at_first = claimants.stopped("b", claimants.live())
    ticks.now += 9.9
    within = claimants.stopped("b", claimants.live())
    ticks.now += 0.1
    after = claimants.stopped("b", claimants.live())

    assert (at_first, within, after) == (False, False, True)


def test_a_claimant_back_within_the_grace_gets_a_new_one_if_it_goes_again():
    serving, ticks = Serving("a", "b"), Ticks()
    claimants = Claimants(serving, grace=10, monotonic=ticks)
    claimants.live()
    serving.processes.discard("b")
    claimants.stopped("b", claimants.live())
    ticks.now += 8
    serving.processes.add("b")  # back, as after a failover
    claimants.live()

    ticks.now += 8
    serving.processes.discard("b")

    assert not claimants.stopped("b", claimants.live())
