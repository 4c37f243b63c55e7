"""The embedded store never lies: damage is detected and refused (or salvaged on request),
a full disk loses nothing acknowledged and keeps nothing refused, and data at rest is
readable by its owner only."""

from __future__ import annotations

import logging
import os
import stat
import time
import uuid
import zlib

import pytest

from calls_server.domain import calls
from calls_server.domain.errors import StoreUnavailable
from calls_server.storage import CorruptJournal, EmbeddedStore
from calls_server.storage.journal import (
    HEAD,
    SEGMENT_GLOB,
    SNAPSHOT,
    encode_record,
    read_head,
    salvage,
)


def a_call(n: int, pad: int = 0) -> calls.Call:
    return calls.new_call(
        organization_id="org",
        agent_id="agent",
        now=1_700_000_000_000 + n,
        call_type="web_call",
        call_id=f"c{n}",
        metadata={"n": n, "pad": "x" * pad},
    )


def fill(directory, count: int = 30, compact_every: int = 10) -> None:
    """A data directory with a snapshot and segments after it: records 1..count."""
    store = EmbeddedStore(directory, compact_every=compact_every)
    try:
        for n in range(count):
            store.add_call(a_call(n))
    finally:
        store.abandon()


def fill_until_the_head_says_durable(directory, count: int) -> None:
    """Records 1..count in one segment, left as a killed process leaves them once
    `journal.head` (updated every second) says the last one is durable."""
    store = EmbeddedStore(directory, compact_every=1000)
    try:
        for n in range(count):
            store.add_call(a_call(n))
        deadline = time.monotonic() + 10
        while (head := read_head(directory)) is None or head.durable < count:
            assert time.monotonic() < deadline, f"{HEAD} never reached record {count}"
            time.sleep(0.05)
    finally:
        store.abandon()


def segments(directory) -> list:
    return sorted(directory.glob(SEGMENT_GLOB))


def flip_digit(path, after: bytes) -> int:
    """Change one digit after the first occurrence of `after` in `path`; its offset."""
    data = bytearray(path.read_bytes())
    at = data.index(after) + len(after)
    while not chr(data[at]).isdigit():
        at += 1
    data[at] = ord("7") if data[at] != ord("7") else ord("8")
    path.write_bytes(bytes(data))
    return at


def line_start(path, offset: int) -> int:
    data = path.read_bytes()
    return data.rfind(b"\n", 0, offset) + 1


# -- damage is detected ----------------------------------------------------------------------


def test_a_changed_digit_in_the_snapshot_is_refused_naming_the_file(tmp_path):
    fill(tmp_path)
    flip_digit(tmp_path / SNAPSHOT, b'"n":')

    with pytest.raises(CorruptJournal, match=f"{tmp_path / SNAPSHOT}: its checksum"):
        EmbeddedStore(tmp_path)


def test_a_changed_digit_inside_a_journal_record_is_refused_naming_file_and_offset(tmp_path):
    fill(tmp_path)
    segment = segments(tmp_path)[-1]
    offset = line_start(segment, flip_digit(segment, b'"n":'))

    with pytest.raises(CorruptJournal) as refused:
        EmbeddedStore(tmp_path)

    assert f"{segment}: the record at byte {offset} is damaged" in str(refused.value)
    assert "calls-server --data-dir" in str(refused.value)  # and what to do


def test_a_complete_last_record_with_a_changed_byte_is_refused_not_cut(tmp_path):
    fill(tmp_path)
    segment = segments(tmp_path)[-1]
    data = segment.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    segment.write_bytes(data[:-5] + b"X" + data[-4:])  # newline-terminated, fsync'd, wrong

    with pytest.raises(CorruptJournal, match=f"the record at byte {last} is damaged"):
        EmbeddedStore(tmp_path)
    assert segment.stat().st_size == len(data)  # nothing cut


def test_a_deleted_snapshot_is_refused(tmp_path):
    fill(tmp_path)
    (tmp_path / SNAPSHOT).unlink()

    with pytest.raises(CorruptJournal, match=f"{SNAPSHOT} is missing"):
        EmbeddedStore(tmp_path)


def test_a_gap_in_the_sequence_is_refused(tmp_path):
    fill(tmp_path, count=8, compact_every=1000)  # one segment, records 1..8
    segment = segments(tmp_path)[0]
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:3] + lines[5:]))

    with pytest.raises(CorruptJournal, match="records 4 to 5 are missing"):
        EmbeddedStore(tmp_path)


def test_the_first_half_of_a_segment_deleted_is_refused(tmp_path):
    fill(tmp_path, count=8, compact_every=1000)
    segment = segments(tmp_path)[0]
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[4:]))

    with pytest.raises(CorruptJournal, match="begins with record 5, not 1"):
        EmbeddedStore(tmp_path)


def test_a_newest_segment_deleted_while_older_ones_remain_is_refused(tmp_path):
    fill(tmp_path, count=4, compact_every=1000)  # journal-1: records 1..4
    reopened = EmbeddedStore(tmp_path, compact_every=1000)  # journal-5: records 5..7
    for n in range(10, 13):
        reopened.add_call(a_call(n))
    reopened.abandon()
    older, newest = segments(tmp_path)
    newest.unlink()

    with pytest.raises(CorruptJournal, match=f"{newest}: missing, yet {HEAD} says it is the"):
        EmbeddedStore(tmp_path)
    assert older.exists()


def test_a_newest_segment_cut_at_a_record_boundary_is_refused(tmp_path):
    fill_until_the_head_says_durable(tmp_path, count=8)
    segment = segments(tmp_path)[0]
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:5]))  # whole lines: no torn tail to tell

    with pytest.raises(CorruptJournal, match="records 6 to 8 are lost"):
        EmbeddedStore(tmp_path)


def test_recover_reports_a_cut_newest_segment_and_salvages_the_rest(tmp_path):
    fill_until_the_head_says_durable(tmp_path / "data", count=8)
    segment = segments(tmp_path / "data")[0]
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:5]))

    report = salvage(tmp_path / "data", tmp_path / "saved")

    assert report["last_record"] == 5
    assert any("records 6 to 8 are lost" in problem for problem in report["problems"])
    saved = EmbeddedStore(tmp_path / "saved")
    assert saved.list_calls("org", calls_query()).total == 5
    saved.close()


def test_a_clean_close_and_reopen_is_not_taken_for_a_cut(tmp_path):
    fill_until_the_head_says_durable(tmp_path, count=3)
    store = EmbeddedStore(tmp_path)
    store.add_call(a_call(3))
    store.close()

    reopened = EmbeddedStore(tmp_path)
    assert reopened.list_calls("org", calls_query()).total == 4
    reopened.close()


def test_a_record_without_changes_is_a_clear_refusal_not_a_traceback(tmp_path):
    fill(tmp_path, count=2, compact_every=1000)
    segment = segments(tmp_path)[0]
    payload = b'{"seq":3}'
    with open(segment, "ab") as f:
        f.write(b"%08x %s\n" % (zlib.crc32(payload), payload))

    with pytest.raises(CorruptJournal, match="it has no changes"):
        EmbeddedStore(tmp_path)


def test_a_torn_tail_is_cut_off_and_logged(tmp_path, caplog):
    fill(tmp_path, count=2, compact_every=1000)
    segment = segments(tmp_path)[0]
    whole = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(encode_record(3, [("calls", "3", {"half": True})])[:20])

    with caplog.at_level(logging.WARNING, logger="calls_server.journal"):
        store = EmbeddedStore(tmp_path)
    store.add_call(a_call(99))  # the journal goes on from record 3
    store.abandon()
    reopened = EmbeddedStore(tmp_path)
    found = {c["call_id"] for c in reopened.list_calls("org", calls_query())[0]}
    reopened.close()

    assert f"cut off an incomplete last record at byte {whole}" in caplog.text
    assert found == {"c0", "c1", "c99"}


# -- recovery --------------------------------------------------------------------------------


def test_recover_refuses_to_write_into_a_directory_that_holds_data(tmp_path):
    fill(tmp_path / "data", count=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")

    with pytest.raises(FileExistsError):
        salvage(tmp_path / "data", tmp_path / "busy")


def calls_query():
    from calls_server.domain.listing import CallQuery

    return CallQuery(page=0, limit=100, sort_by="created_at", sort_order="ascending", filters={})


# -- data at rest ----------------------------------------------------------------------------


def test_the_data_directory_and_its_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        fill(tmp_path / "data", count=12, compact_every=5)
        EmbeddedStore(tmp_path / "data").close()
    finally:
        os.umask(old)

    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    for path in (tmp_path / "data").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


# -- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_loses_no_acknowledged_write_and_keeps_no_refused_one(small_disk):
    data = small_disk / "data"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 1_200_000)
    store = EmbeddedStore(data, compact_every=1_000_000)
    acknowledged, refused, reasons = [], [], set()
    try:
        for n in range(200):
            try:
                store.add_call(a_call(n, pad=20_000))
                acknowledged.append(f"c{n}")
            except StoreUnavailable as e:
                reasons.add(e.error)
                refused.append(f"c{n}")
                if len(refused) == 3:
                    break
        assert refused, "the disk never filled up"
        assert all("No space left on device" in reason for reason in reasons)
        filler.unlink()  # the cause goes away: the store goes on
        for n in range(500, 503):
            store.add_call(a_call(n, pad=20_000))
            acknowledged.append(f"c{n}")
    finally:
        store.abandon()

    reopened = EmbeddedStore(data)
    try:
        kept = {c["call_id"] for c in reopened.list_calls("org", calls_query())[0]}
    finally:
        reopened.close()
    assert set(acknowledged) <= kept
    assert not kept & set(refused)


def test_a_snapshot_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    from calls_server.storage import journal

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    fill(tmp_path, count=3, compact_every=1000)
    monkeypatch.setattr(journal.os, "fsync", no_room)
    with pytest.raises(OSError, match="No space"):
        journal.write_snapshot(tmp_path, 3, {"t": {"1": {"x": uuid.uuid4().hex}}})

    assert list(tmp_path.glob(".*.tmp")) == []
