"""The journaled storage under the embedded store: durable, atomic, crash-tolerant."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from calls_server.storage import CorruptJournal, JournalFailed
from calls_server.storage.journal import (
    SNAPSHOT,
    JournalStorage,
    encode_record,
    segment_name,
    write_snapshot,
)


def journal_lines(directory) -> list[dict]:
    """The records of every segment (each line: a checksum, a space, the record)."""
    return [
        json.loads(line.split(" ", 1)[1])
        for path in sorted(directory.glob("journal-*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def snapshot_of(directory) -> dict:
    """The snapshot's first line (its last line is the checksum trailer; between them the
    documents of encoded tables, a line each)."""
    lines = (directory / SNAPSHOT).read_text().rstrip("\n").split("\n")
    assert lines[-1].startswith("#crc32=")
    return dict(json.loads(lines[0]))


def test_each_commit_is_one_journal_line(tmp_path):
    storage = JournalStorage(tmp_path)
    storage.read().setdefault("t", {})["1"] = {"a": 1}

    storage.commit([("t", "1", {"a": 1})])

    assert journal_lines(tmp_path) == [{"seq": 1, "changes": [["t", "1", {"a": 1}]]}]
    storage.close()


def test_the_commits_of_a_transaction_are_one_journal_line(tmp_path):
    storage = JournalStorage(tmp_path)

    with storage.transaction():
        storage.read().setdefault("calls", {})["1"] = {"a": 1}
        storage.commit([("calls", "1", {"a": 1})])
        storage.read().setdefault("events", {})["1"] = {"e": 1}
        storage.commit([("events", "1", {"e": 1})])
        assert journal_lines(tmp_path) == []  # nothing before the block ends

    assert journal_lines(tmp_path) == [
        {"seq": 1, "changes": [["calls", "1", {"a": 1}], ["events", "1", {"e": 1}]]}
    ]
    storage.close()


def test_a_transaction_that_raises_writes_nothing_and_undoes_every_change(tmp_path):
    storage = JournalStorage(tmp_path)
    undone = []

    def two_commits_then_a_failure() -> None:
        with storage.transaction():
            storage.commit([("calls", "1", {"a": 1})], undo=lambda: undone.append("calls"))
            storage.commit([("events", "1", {"e": 1})], undo=lambda: undone.append("events"))
            raise RuntimeError("the second half failed")

    with pytest.raises(RuntimeError):
        two_commits_then_a_failure()

    assert journal_lines(tmp_path) == []
    assert undone == ["events", "calls"]  # latest first
    storage.close()


def test_a_transaction_the_disk_refuses_undoes_every_change(tmp_path, monkeypatch):
    storage = JournalStorage(tmp_path)
    undone = []

    def full_disk(changes):
        raise JournalFailed("the record could not be written (No space left on device)")

    def two_commits() -> None:
        with storage.transaction():
            storage.commit([("calls", "1", {"a": 1})], undo=lambda: undone.append("calls"))
            storage.commit([("events", "1", {"e": 1})], undo=lambda: undone.append("events"))

    monkeypatch.setattr(storage, "_append", full_disk)
    with pytest.raises(JournalFailed):
        two_commits()

    assert undone == ["events", "calls"]
    monkeypatch.undo()
    storage.close()


def test_close_compacts_into_a_snapshot_and_drops_the_old_segments(tmp_path):
    storage = JournalStorage(tmp_path)
    storage.read()["t"] = {"1": {"a": 1}}
    storage.commit([("t", "1", {"a": 1})])

    storage.close()

    assert snapshot_of(tmp_path) == {
        "seq": 1,
        "format": 2,
        "tables": {"t": {"1": {"a": 1}}},
        "encoded": {},
    }
    assert journal_lines(tmp_path) == []
    assert [p.name for p in tmp_path.glob("journal-*")] == [segment_name(2)]


def test_compaction_runs_in_the_background_every_n_records(tmp_path):
    storage = JournalStorage(tmp_path, compact_every=3)
    for n in range(7):
        storage.read().setdefault("t", {})["1"] = {"n": n}
        storage.commit([("t", "1", {"n": n})])
        storage.wait_for_compaction()

    assert snapshot_of(tmp_path)["seq"] == 6
    assert [record["seq"] for record in journal_lines(tmp_path)] == [7]
    storage.close()


def test_a_larger_store_compacts_after_as_many_records_as_documents(tmp_path):
    storage = JournalStorage(tmp_path, compact_every=3)
    storage.read()["t"] = {str(n): {"n": n} for n in range(10)}
    for n in range(9):
        storage.commit([("t", str(n), {"n": n})])
    assert not (tmp_path / SNAPSHOT).exists()

    storage.commit([("t", "9", {"n": 9})])
    storage.wait_for_compaction()

    assert snapshot_of(tmp_path)["seq"] == 10
    storage.close()


def test_reopen_replays_the_segments_over_the_snapshot(tmp_path):
    storage = JournalStorage(tmp_path, compact_every=2)
    for n in range(5):
        storage.read().setdefault("t", {})[str(n)] = {"n": n}
        storage.commit([("t", str(n), {"n": n})])
        storage.wait_for_compaction()
    crash(storage)

    reopened = JournalStorage(tmp_path)

    assert reopened.read() == {"t": {str(n): {"n": n} for n in range(5)}}
    reopened.close()


def crash(storage: JournalStorage) -> None:
    """Let go of the files as a killed process would: no final snapshot."""
    storage.abandon()


def test_a_torn_last_record_is_dropped_and_cut_off_on_open(tmp_path):
    storage = JournalStorage(tmp_path)
    storage.commit([("t", "1", {"a": 1})])
    crash(storage)
    with open(tmp_path / segment_name(1), "ab") as f:
        f.write(encode_record(2, [("t", "2", {"a": 2})])[:-9])  # cut short, no newline

    reopened = JournalStorage(tmp_path)
    reopened.commit([("t", "3", {"a": 3})])
    crash(reopened)
    again = JournalStorage(tmp_path)

    assert again.read() == {"t": {"1": {"a": 1}, "3": {"a": 3}}}
    again.close()


def test_an_unreadable_record_before_the_last_is_refused(tmp_path):
    (tmp_path / segment_name(1)).write_bytes(b"garbage\n" + encode_record(1, []))

    with pytest.raises(CorruptJournal, match="byte 0"):
        JournalStorage(tmp_path)


def test_records_already_in_the_snapshot_are_not_replayed_twice(tmp_path):
    write_snapshot(tmp_path, 2, {"t": {"1": {"v": 2}}})
    (tmp_path / segment_name(1)).write_bytes(
        encode_record(1, [("t", "1", {"v": 1})])
        + encode_record(2, [("t", "1", {"v": 2})])
        + encode_record(3, [("t", "2", {"v": 3})])
    )

    storage = JournalStorage(tmp_path)

    assert storage.read() == {"t": {"1": {"v": 2}, "2": {"v": 3}}}
    storage.close()


def test_leftover_temporary_snapshots_are_removed_on_open(tmp_path):
    (tmp_path / f".{SNAPSHOT}.1.tmp").write_text("{half")

    JournalStorage(tmp_path).close()

    assert not (tmp_path / f".{SNAPSHOT}.1.tmp").exists()


def test_concurrent_commits_share_fsyncs(tmp_path, monkeypatch):
    storage = JournalStorage(tmp_path)
    fsyncs = []
    real_fsync = os.fsync

    def slow_fsync(fd):
        fsyncs.append(fd)
        time.sleep(0.005)
        real_fsync(fd)

    monkeypatch.setattr("calls_server.storage.journal.os.fsync", slow_fsync)
    caller_lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(20):
            with caller_lock:
                storage.read().setdefault("t", {})[f"{n}-{i}"] = {"i": i}
                storage.commit([("t", f"{n}-{i}", {"i": i})])
            storage.wait_durable()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(fsyncs) < 160 / 2
    monkeypatch.undo()
    storage.close()
    reopened = JournalStorage(tmp_path)
    assert len(reopened.read()["t"]) == 160
    reopened.close()


def test_a_failed_fsync_refuses_every_later_write(tmp_path, monkeypatch):
    storage = JournalStorage(tmp_path)

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("calls_server.storage.journal.os.fsync", broken_fsync)
    storage.commit([("t", "1", {"a": 1})])
    with pytest.raises(JournalFailed):
        storage.wait_durable()
    monkeypatch.undo()

    with pytest.raises(JournalFailed):
        storage.commit([("t", "2", {"a": 2})])
    crash(storage)
