"""When a claim's process counts as stopped (services/claimants.py)."""

from __future__ import annotations

from calls_server.services.claimants import Claimants


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_live_claimant_has_not_stopped():
    claimants = Claimants(grace=10)
    claimants.looked({"a", "b"})

    assert not claimants.stopped("b", {"a", "b"})


def test_a_claimant_never_seen_serving_has_stopped_at_once():
    claimants = Claimants(grace=10)
    claimants.looked({"a"})

    assert claimants.stopped("before-a-restart", {"a"})


def test_a_claimant_seen_serving_counts_as_stopped_only_after_the_grace():
    ticks = Ticks()
    claimants = Claimants(grace=10, monotonic=ticks)
    claimants.looked({"a", "b"})

    claimants.looked({"a"})
    at_first = claimants.stopped("b", {"a"})
    ticks.now += 9.9
    within = claimants.stopped("b", {"a"})
    ticks.now += 0.1
    after = claimants.stopped("b", {"a"})

    assert (at_first, within, after) == (False, False, True)


def test_a_claimant_serving_again_within_the_grace_starts_a_new_one_if_it_goes_again():
    ticks = Ticks()
    claimants = Claimants(grace=10, monotonic=ticks)
    claimants.looked({"a", "b"})
    claimants.stopped("b", {"a"})
    ticks.now += 8
    claimants.looked({"a", "b"})  # back, as after a failover

    ticks.now += 8
    claimants.looked({"a"})

    assert not claimants.stopped("b", {"a"})
