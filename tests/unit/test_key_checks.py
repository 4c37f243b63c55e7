"""domain/key_checks.py: a request's key check, done once, by the read that carries it or by
a read of its own."""

from __future__ import annotations

import pytest

from calls_server.domain import key_checks
from calls_server.domain.errors import Unauthorized
from calls_server.domain.keys import ApiKey

RECORD: ApiKey = {"api_key_id": "k1", "organization_id": "acme", "status": "ACTIVE"}


class Recorded:
    """What a check was confirmed with, and the records read for it on their own."""

    def __init__(self, found: ApiKey | None = RECORD) -> None:
        self.found, self.confirmed, self.reads = found, [], []

    def check(self) -> key_checks.KeyCheck:
        return key_checks.KeyCheck("sk_1", self.confirmed.append, self.find)

    def find(self, api_key: str) -> ApiKey | None:
        self.reads.append(api_key)
        return self.found


def test_no_request_carries_a_check_outside_carrying():
    assert key_checks.current() is None


def test_carrying_is_the_current_requests_until_its_block_ends():
    with key_checks.carrying() as carried:
        assert key_checks.current() is carried
    assert key_checks.current() is None


def test_a_check_confirmed_by_a_read_is_not_read_again_when_settled():
    recorded = Recorded()
    with key_checks.carrying() as carried:
        carried.check = recorded.check()
        carried.confirmed(RECORD)
        carried.settle()

    assert recorded.confirmed == [RECORD]
    assert recorded.reads == []


def test_a_check_no_read_carried_is_read_on_its_own_when_settled():
    recorded = Recorded()
    with key_checks.carrying() as carried:
        carried.check = recorded.check()
        carried.settle()

    assert recorded.reads == ["sk_1"]
    assert recorded.confirmed == [RECORD]


def test_a_refused_check_is_done_once():
    reads: list[str] = []

    def refuse(found: ApiKey | None) -> None:
        raise Unauthorized("API key has been revoked")

    def find(api_key: str) -> ApiKey | None:
        reads.append(api_key)
        return RECORD

    with key_checks.carrying() as carried:
        carried.check = key_checks.KeyCheck("sk_1", refuse, find)
        with pytest.raises(Unauthorized):
            carried.confirmed(RECORD)
        carried.settle()

    assert reads == []


def test_settling_without_a_check_reads_nothing():
    with key_checks.carrying() as carried:
        carried.settle()

    assert carried.check is None


def test_a_check_whose_read_fails_is_still_owed():
    def find(api_key: str) -> ApiKey | None:
        raise OSError("the database went away")

    recorded = Recorded()
    with key_checks.carrying() as carried:
        carried.check = key_checks.KeyCheck("sk_1", recorded.confirmed.append, find)
        with pytest.raises(OSError, match="went away"):
            carried.settle()

    assert carried.check is not None
    assert recorded.confirmed == []


def test_a_store_about_to_write_settles_the_owed_check():
    recorded = Recorded()
    with key_checks.carrying() as carried:
        carried.check = recorded.check()
        key_checks.settle_before_writing()

    assert recorded.reads == ["sk_1"]
    assert recorded.confirmed == [RECORD]


def test_nothing_is_settled_for_a_store_while_the_pair_is_verified_on_the_event_loop():
    recorded = Recorded()
    with key_checks.carrying(on_loop=True) as carried:
        carried.check = recorded.check()
        key_checks.settle_before_writing()

    assert recorded.reads == []


def test_carrying_a_given_slot_makes_it_the_current_one():
    slot = key_checks.Carrying()
    with key_checks.carrying(slot=slot):
        assert key_checks.current() is slot
