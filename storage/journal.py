"""A TinyDB Storage kept in memory and made durable by an append-only journal.

The data directory holds three files:

- `snapshot.json`: the whole database as of journal record `seq`, written to a temporary
  file, fsync'd and atomically renamed into place, so it is always complete;
- `journal.jsonl`: one JSON line per committed write after that, fsync'd before the write
  is acknowledged; on open it is replayed over the snapshot, and a torn last line (a crash
  in the middle of an append) is dropped, since that write was never acknowledged;
- `lock`: held with `flock` while the directory is open, so a second process is refused
  instead of corrupting the data. The kernel drops the lock when the process dies.

TinyDB's `Storage.write(data)` only ever sees the whole database, so the journal records
are produced a layer up, by the table (`storage.embedded.JournaledTable`), and handed to
`commit`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from tinydb.storages import Storage

Tables = dict[str, dict[str, Any]]
# One change: (table name, document id, the document or None when it was removed).
Change = tuple[str, str, dict[str, Any] | None]

SNAPSHOT = "snapshot.json"
JOURNAL = "journal.jsonl"
LOCK = "lock"


class DataDirectoryLocked(RuntimeError):
    """Another process has the data directory open."""


class CorruptJournal(RuntimeError):
    """A journal record other than the last one cannot be read."""


class JournalStorage(Storage):
    """In-memory tables, a journal of every commit and a periodic snapshot."""

    def __init__(self, directory: str | os.PathLike[str], compact_every: int = 10_000) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.compact_every = compact_every
        self._lock_file = _lock(self.directory / LOCK)
        try:
            _remove_temporaries(self.directory)
            self._seq, self._tables = _load_snapshot(self.directory / SNAPSHOT)
            replayed = self._replay(self.directory / JOURNAL)
            self._journal = open(self.directory / JOURNAL, "ab")  # noqa: SIM115 (held open)
            self._records = replayed
            if replayed:
                self.compact()
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

    def close(self) -> None:
        """Write a final snapshot and release the directory."""
        if self._lock_file.closed:
            return
        try:
            self.compact()
        finally:
            self._journal.close()
            self._lock_file.close()

    # -- the journal ---------------------------------------------------------------------
    def commit(self, changes: list[Change]) -> None:
        """Make `changes` (already applied in memory) durable; one record, all or nothing."""
        if changes:
            self._append(changes)
            if self._records >= self.compact_every:
                self.compact()

    def compact(self) -> None:
        """Write the whole database as a new snapshot and start an empty journal."""
        snapshot = self.directory / SNAPSHOT
        temporary = self.directory / f".{SNAPSHOT}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump({"seq": self._seq, "tables": self._tables}, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, snapshot)
        _fsync_directory(self.directory)
        # Records up to `seq` are in the snapshot; should a crash come before the
        # truncation below, replay skips them by their seq.
        self._journal.truncate(0)
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self._records = 0

    def _append(self, changes: list[Change]) -> None:
        line = json.dumps({"seq": self._seq + 1, "changes": changes}, separators=(",", ":"))
        self._journal.write(line.encode("utf-8") + b"\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self._seq += 1
        self._records += 1

    def _replay(self, path: Path) -> int:
        if not path.exists():
            return 0
        lines = path.read_bytes().split(b"\n")
        replayed = 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if number == len(lines):  # torn last record: never acknowledged
                    break
                raise CorruptJournal(f"{path}: record on line {number} is unreadable") from None
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


def _lock(path: Path) -> Any:
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
