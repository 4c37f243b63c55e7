"""A TinyDB Storage kept in memory and made durable by an append-only journal.

The data directory holds:

- `snapshot.json`: the whole database as of journal record `seq`, written to a temporary
  file, fsync'd and atomically renamed into place, so it is always complete;
- `journal-<first seq>.jsonl` segments: one JSON line per committed write, on disk before
  the write is acknowledged. On open they are replayed over the snapshot (records the
  snapshot already holds are skipped by their seq); a torn last line, from a crash in the
  middle of an append, is dropped, since that write was never acknowledged;
- `lock`: held with `flock` while the directory is open, so a second process is refused
  instead of corrupting the data. The kernel drops the lock when the process dies.

Commits are grouped: a writer appends its record under the caller's lock, then waits
outside it (`wait_durable`) until an fsync covers the record; one fsync serves every
record written while the previous one ran. Until then other requests may already read the
change, but nobody has been told it is saved. Should an fsync fail, what the OS holds is
unknown: the journal refuses all further writes (`JournalFailed`) until a restart
recovers from what is on disk.

Compaction runs in the background every `compact_every` records, or every as many records
as there are stored documents if that is more: the journal moves on to a new segment, the
tables are copied shallowly (stored documents are never mutated, only replaced) and a
thread writes the snapshot, then deletes the segments it covers. Writers wait for none
of it.

TinyDB's `Storage.write(data)` only ever sees the whole database, so the journal records
are produced a layer up, by the table (`storage.embedded.JournaledTable`), and handed to
`commit`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

from tinydb.storages import Storage

Tables = dict[str, dict[str, Any]]
# One change: (table name, document id, the document or None when it was removed).
Change = tuple[str, str, dict[str, Any] | None]

SNAPSHOT = "snapshot.json"
LOCK = "lock"
SEGMENT_GLOB = "journal-*.jsonl"
# Documents per json.dumps call in a snapshot: the C encoder holds the GIL for a whole
# call, so one call for 100k calls would stall the server for most of a second.
SNAPSHOT_CHUNK = 500

log = logging.getLogger("calls_server.journal")


class DataDirectoryLocked(RuntimeError):
    """Another process has the data directory open."""


class CorruptJournal(RuntimeError):
    """A journal record other than the very last one cannot be read."""


class JournalFailed(RuntimeError):
    """An fsync failed: no write can be made durable any more until a restart."""


def segment_name(first_seq: int) -> str:
    """The file name of the journal segment whose first record is `first_seq`."""
    return f"journal-{first_seq:012d}.jsonl"


def write_snapshot(directory: Path, seq: int, tables: Tables) -> None:
    """Atomically replace the snapshot in `directory` by `tables` as of record `seq`."""
    snapshot = directory / SNAPSHOT
    temporary = directory / f".{SNAPSHOT}.{threading.get_ident()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(f'{{"seq":{seq},"tables":{{')
        for number, (name, documents) in enumerate(tables.items()):
            f.write(("," if number else "") + json.dumps(name) + ":{")
            items = list(documents.items())
            for start in range(0, len(items), SNAPSHOT_CHUNK):
                chunk = json.dumps(
                    dict(items[start : start + SNAPSHOT_CHUNK]), separators=(",", ":")
                )
                f.write(("," if start else "") + chunk[1:-1])
            f.write("}")
        f.write("}}")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, snapshot)
    _fsync_directory(directory)


class JournalStorage(Storage):
    """In-memory tables, a journal of every commit and snapshots made in the background."""

    def __init__(self, directory: str | os.PathLike[str], compact_every: int = 10_000) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.compact_every = compact_every
        self._lock_file = _lock(self.directory / LOCK)
        self._compaction: threading.Thread | None = None
        # Group commit: records up to `_written` are in the OS, up to `_durable` on disk.
        self._sync = threading.Condition()
        self._syncing = False
        self._failed: OSError | None = None
        try:
            _remove_temporaries(self.directory)
            self._seq, self._tables = _load_snapshot(self.directory / SNAPSHOT)
            self._records = self._replay()
            self._written = self._durable = self._seq
            self._segment = self._open_segment()
        except BaseException:
            self._lock_file.close()
            raise

    # -- tinydb.storages.Storage -------------------------------------------------------
    def read(self) -> Tables:
        return self._tables

    def write(self, data: Tables) -> None:
        # The table mutates `read()`'s dict in place and journals through `commit`; a
        # TinyDB method that replaces whole tables (drop_tables) lands here.
        self._tables = data
        self._append([("*", "*", data)])
        self.wait_durable()

    def close(self) -> None:
        """Finish any compaction, write a final snapshot and release the directory."""
        if self._lock_file.closed:
            return
        try:
            self._wait_for_compaction()
            self._rotate()
            self._compact(self._seq, self._copy_tables(), self._segment_first)
        finally:
            self._segment.close()
            self._lock_file.close()

    # -- the journal ---------------------------------------------------------------------
    def commit(self, changes: list[Change]) -> None:
        """Write `changes` (already applied in memory) to the journal as one record.

        The caller serializes commits (and the in-memory changes they describe), then
        calls `wait_durable` without its lock before acknowledging them. If this raises,
        nothing was written and the caller undoes its in-memory change.
        """
        if not changes:
            return
        self._append(changes)
        if self._records >= self._compaction_due() and not self._compacting():
            self.compact_in_background()

    def _compaction_due(self) -> int:
        # A snapshot costs O(stored documents), so take one only after as many records:
        # the cost per write stays constant however large the store grows.
        return max(self.compact_every, sum(len(table) for table in self._tables.values()))

    def wait_durable(self) -> None:
        """Return once every record written so far is on disk; one fsync serves many."""
        with self._sync:
            target = self._written
            while self._durable < target:
                if self._failed is not None:
                    raise JournalFailed("the journal could not be synced to disk") from None
                if self._syncing:  # another writer's fsync is running: it may cover us
                    self._sync.wait()
                    continue
                self._syncing = True
                goal, segment = self._written, self._segment
                self._sync.release()
                try:
                    os.fsync(segment.fileno())
                except OSError as e:
                    log.critical("fsync of the journal failed, refusing further writes: %s", e)
                    self._failed = e
                finally:
                    self._sync.acquire()
                    self._syncing = False
                    self._sync.notify_all()
                if self._failed is None:
                    self._durable = max(self._durable, goal)

    def compact_in_background(self) -> None:
        """Start a new segment and snapshot everything before it on another thread."""
        self._rotate()
        self._compaction = threading.Thread(
            target=self._compact,
            args=(self._seq, self._copy_tables(), self._segment_first),
            name="journal-compaction",
            daemon=True,
        )
        self._compaction.start()

    def _append(self, changes: list[Change]) -> None:
        if self._failed is not None:
            raise JournalFailed("the journal could not be synced to disk; restart the server")
        line = json.dumps({"seq": self._seq + 1, "changes": changes}, separators=(",", ":"))
        size = self._segment.tell()
        try:
            self._segment.write(line.encode("utf-8") + b"\n")
            self._segment.flush()
        except OSError:
            # No half record may stay in front of the next one (disk full, say).
            self._segment.truncate(size)
            raise
        self._seq += 1
        self._records += 1
        self._written = self._seq

    def _rotate(self) -> None:
        """Close the current segment, durable, and continue in a new one."""
        with self._sync:
            while self._syncing:
                self._sync.wait()
            os.fsync(self._segment.fileno())
            self._durable = self._written
            self._segment.close()
            self._segment = self._open_segment()
            self._records = 0
            self._sync.notify_all()

    def _open_segment(self) -> IO[bytes]:
        self._segment_first = self._seq + 1
        segment = open(self.directory / segment_name(self._segment_first), "ab")  # noqa: SIM115
        _fsync_directory(self.directory)
        return segment

    def _copy_tables(self) -> Tables:
        return {name: dict(table) for name, table in self._tables.items()}

    def _compact(self, seq: int, tables: Tables, keep_from: int) -> None:
        try:
            write_snapshot(self.directory, seq, tables)
        except OSError:
            log.exception("snapshot failed; the journal keeps every record until the next one")
            return
        for path in self._segments():
            if _first_seq(path) < keep_from:
                path.unlink()

    def _compacting(self) -> bool:
        return self._compaction is not None and self._compaction.is_alive()

    def _wait_for_compaction(self) -> None:
        if self._compaction is not None:
            self._compaction.join()

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob(SEGMENT_GLOB), key=_first_seq)

    def _replay(self) -> int:
        segments = self._segments()
        replayed = 0
        for index, path in enumerate(segments):
            data = path.read_bytes()
            good_end = 0
            for line in data.split(b"\n"):
                end = good_end + len(line) + 1
                if not line.strip():
                    good_end = min(end, len(data))
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    if index == len(segments) - 1 and end >= len(data):
                        # A torn last record: never acknowledged. Cut it off, so that
                        # it does not end up in the middle of the journal.
                        with open(path, "r+b") as f:
                            f.truncate(good_end)
                            os.fsync(f.fileno())
                        break
                    raise CorruptJournal(
                        f"{path}: a record at byte {good_end} is unreadable"
                    ) from None
                good_end = min(end, len(data))
                if record["seq"] <= self._seq:
                    continue
                for table, doc_id, doc in record["changes"]:
                    _apply(self._tables, table, doc_id, doc)
                self._seq = record["seq"]
                replayed += 1
        return replayed


def _apply(tables: Tables, table: str, doc_id: str, doc: dict[str, Any] | None) -> None:
    if table == "*":
        tables.clear()
        tables.update(doc or {})
    elif doc is None:
        tables.get(table, {}).pop(doc_id, None)
    else:
        tables.setdefault(table, {})[doc_id] = doc


def _first_seq(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def _lock(path: Path) -> IO[str]:
    lock_file = open(path, "a+")  # noqa: SIM115 (held open for the lifetime of the storage)
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        raise DataDirectoryLocked(
            f"The data directory {path.parent} is in use by another process (pid {holder}); "
            "stop that server first, or give this one its own --data-dir."
        ) from None
    lock_file.truncate(0)
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file


def _load_snapshot(path: Path) -> tuple[int, Tables]:
    if not path.exists():
        return 0, {}
    with open(path, encoding="utf-8") as f:
        snapshot = json.load(f)
    return snapshot["seq"], snapshot["tables"]


def _remove_temporaries(directory: Path) -> None:
    for leftover in directory.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
