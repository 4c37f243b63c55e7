"""The journal under faults of its process and disk: an answer is what the store holds, or
says it does not know.

- Out of file descriptors when the journal moves on to its next segment: the write whose
  record triggered the move was durable, so it is acknowledged (it was answered 500 and
  kept, and every later write failed); writes go on in the current segment, readiness
  says 503 meanwhile and 200 once descriptors are free again.
- A full disk: writes refused (503) are not kept, and readiness says 503 until a file can
  be written again.
- The segment a snapshot was written after, deleted: refused on open, naming it.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from calls_server.domain.errors import StoreUnavailable
from calls_server.domain.listing import CallQuery
from calls_server.storage import CorruptJournal, EmbeddedStore
from calls_server.storage.journal import (
    SEGMENT_GLOB,
    SNAPSHOT,
    JournalStorage,
    salvage,
    segment_name,
)
from tests.conftest import SEED_REQUEST, add_tenant, app_client, assert_error, create_call
from tests.store.test_store_integrity import a_call


def stored_ids(directory, organization_id: str = "org") -> set[str]:
    """The call ids a fresh open of `directory` holds."""
    store = EmbeddedStore(directory)
    try:
        query = CallQuery(
            page=0, limit=1000, sort_by="created_at", sort_order="ascending", filters={}
        )
        return {call["call_id"] for call in store.list_calls(organization_id, query)[0]}
    finally:
        store.close()


@contextmanager
def no_file_descriptor_left() -> Iterator[None]:
    """Every file descriptor this process may open taken, for real: the soft RLIMIT_NOFILE
    lowered to just above the highest one open and the free numbers below filled with
    /dev/null (the limit and the descriptors given back after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        with pytest.raises(OSError, match="Too many open files"):
            os.open(os.devnull, os.O_RDONLY)
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def segments(directory) -> list[str]:
    return sorted(path.name for path in directory.glob(SEGMENT_GLOB))


# -- out of file descriptors at rotation ----------------------------------------------------


def test_no_descriptor_for_the_next_segment_fails_no_write_and_loses_none(tmp_path):
    data = tmp_path / "data"
    store = EmbeddedStore(data, compact_every=5)
    acknowledged = []
    try:
        for n in range(3):
            store.add_call(a_call(n))
            acknowledged.append(f"c{n}")
        before = segments(data)
        with no_file_descriptor_left():
            # c4 is the fifth record: the journal tries to move on to a new segment there.
            for n in range(3, 12):
                store.add_call(a_call(n))  # was: c4 an OSError (500) yet kept, later EBADF
                acknowledged.append(f"c{n}")
            with pytest.raises(StoreUnavailable, match="Too many open files"):
                store.check_ready()
        assert segments(data) == before  # no new segment, none half made
        store.check_ready()  # descriptors free again: ready, and the rotation retried
        for n in range(12, 16):
            store.add_call(a_call(n))
            acknowledged.append(f"c{n}")
        store._journal.wait_for_compaction()
        assert (data / SNAPSHOT).exists()
        assert segments(data) != before
    finally:
        store.abandon()

    assert stored_ids(data) == set(acknowledged)


def test_a_failed_rotation_keeps_the_segment_and_is_retried(tmp_path, monkeypatch):
    storage = JournalStorage(tmp_path, compact_every=2)
    storage.commit([("t", "1", {"a": 1})])
    with no_file_descriptor_left():
        storage.commit([("t", "2", {"a": 2})])  # due for rotation: none possible
        storage.wait_durable()
        storage.commit([("t", "3", {"a": 3})])  # not retried within ROTATION_RETRY
        storage.wait_durable()
    assert segments(tmp_path) == [segment_name(1)]
    assert not storage.failed

    monkeypatch.setattr("calls_server.storage.journal.ROTATION_RETRY", 0.0)
    storage._rotation_retry_at = 0.0
    storage.read()["t"] = {str(n): {"a": n} for n in (1, 2, 3, 4)}
    storage.commit([("t", "4", {"a": 4})])
    storage.wait_for_compaction()

    assert segments(tmp_path) == [segment_name(5)]
    storage.abandon()
    reopened = JournalStorage(tmp_path)
    assert reopened.read() == {"t": {str(n): {"a": n} for n in (1, 2, 3, 4)}}
    reopened.close()


def test_over_http_no_descriptor_at_rotation_is_no_500_and_ready_says_so(tmp_path):
    data = tmp_path / "data"
    store = EmbeddedStore(data, compact_every=4)
    tenant = add_tenant(store, "org")
    try:
        with app_client(store) as client:
            call_id = create_call(client, tenant)["call_id"]
            with no_file_descriptor_left():
                # The first update is the fourth record: due to move on to a new segment.
                for n in range(8):
                    response = client.put(
                        f"/api/calls/{call_id}",
                        json={"metadata": {"update": n}},
                        headers=tenant.headers,
                    )
                    assert response.status_code == 200, response.text  # was: 500, yet kept
                assert_error(client.get("/api/ready"), 503, "Too many open files")
                assert client.get("/api/health").status_code == 200
            assert client.get("/api/ready").status_code == 200
    finally:
        store.abandon()

    reopened = EmbeddedStore(data)
    try:
        assert reopened.get_call("org", call_id)["metadata"]["update"] == 7
    finally:
        reopened.close()


# -- a full disk -----------------------------------------------------------------------------


def test_not_ready_while_a_full_disk_refuses_writes_and_ready_once_it_has_room(small_disk):
    data = small_disk / "data"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1_200_000)
    store = EmbeddedStore(data, compact_every=1_000_000)
    acknowledged, refused = [], []
    try:
        store.check_ready()
        for n in range(200):
            try:
                store.add_call(a_call(n, pad=20_000))
                acknowledged.append(f"c{n}")
            except StoreUnavailable as e:
                reason = e.error
                refused.append(f"c{n}")
                break
        assert refused, "the disk never filled up"
        assert "No space left on device" in reason
        with pytest.raises(StoreUnavailable, match="No space left on device"):
            store.check_ready()
        filler.unlink()
        store.check_ready()
        store.add_call(a_call(500, pad=20_000))
        acknowledged.append("c500")
    finally:
        store.abandon()

    kept = stored_ids(data)
    assert set(acknowledged) <= kept
    assert not kept & set(refused)


def test_over_http_ready_is_503_while_the_disk_is_full(small_disk):
    data = small_disk / "data"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1_500_000)
    store = EmbeddedStore(data, compact_every=1_000_000)
    tenant = add_tenant(store, "org")
    try:
        with app_client(store) as client:
            assert client.get("/api/ready").status_code == 200
            statuses = []
            for _ in range(100):
                response = client.post(
                    "/api/calls/create",
                    json={**SEED_REQUEST, "metadata": {"pad": "x" * 20_000}},
                    headers=tenant.headers,
                )
                statuses.append(response.status_code)
                if response.status_code != 200:
                    assert_error(response, 503, "No space left on device")
                    break
            assert statuses[-1] == 503, "the disk never filled up"
            assert_error(client.get("/api/ready"), 503, "No space left on device")
            filler.unlink()
            assert client.get("/api/ready").status_code == 200
    finally:
        store.abandon()


# -- the newest segment deleted --------------------------------------------------------------


def test_the_segment_after_the_snapshot_deleted_is_refused_naming_it(tmp_path):
    store = EmbeddedStore(tmp_path, compact_every=3)
    for n in range(8):
        store.add_call(a_call(n))
    store._journal.wait_for_compaction()
    store.abandon()
    newest = max(tmp_path.glob(SEGMENT_GLOB))
    assert newest.stat().st_size > 0
    newest.unlink()

    with pytest.raises(CorruptJournal, match=newest.name):
        EmbeddedStore(tmp_path)


def test_a_deleted_segment_after_the_snapshot_is_reported_by_salvage(tmp_path):
    data, target = tmp_path / "data", tmp_path / "recovered"
    store = EmbeddedStore(data, compact_every=3)
    for n in range(8):
        store.add_call(a_call(n))
    store._journal.wait_for_compaction()
    store.abandon()
    newest = max(data.glob(SEGMENT_GLOB))
    newest.unlink()

    report = salvage(data, target)

    assert report["problems"][0].startswith(f"{newest}: missing")
    assert stored_ids(target) <= {f"c{n}" for n in range(8)}  # the snapshot's calls open


def test_an_empty_newest_segment_just_made_is_no_damage(tmp_path):
    store = EmbeddedStore(tmp_path, compact_every=3)
    for n in range(6):
        store.add_call(a_call(n))
    store.close()  # a snapshot of everything, and an empty segment after it
    assert [(tmp_path / name).stat().st_size for name in segments(tmp_path)] == [0]

    assert stored_ids(tmp_path) == {f"c{n}" for n in range(6)}


def test_an_fsync_that_fails_at_rotation_fails_the_journal_not_the_process(tmp_path, monkeypatch):
    store = EmbeddedStore(tmp_path, compact_every=3)
    store.add_call(a_call(0))
    store.add_call(a_call(1))

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("calls_server.storage.journal.os.fsync", broken_fsync)
    with pytest.raises(StoreUnavailable, match="Input/output error"):
        store.add_call(a_call(2))  # the third record: due to rotate, whose fsync fails
    with pytest.raises(StoreUnavailable, match="Input/output error"):
        store.check_ready()
    monkeypatch.undo()
    store.abandon()
