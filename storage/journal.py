"""A TinyDB Storage kept in memory and made durable by an append-only journal.

The data directory (0700, its files 0600, whatever the umask) holds:

- `snapshot.json`: the whole database as of journal record `seq`, followed by a trailer
  line `#crc32=<8 hex> bytes=<n>` over what precedes it, written to a temporary file,
  fsync'd and atomically renamed into place, so it is always complete. Its first line is a
  JSON document `{"seq", "format": 2, "tables", "encoded"}`: the tables, but for those kept
  encoded (see below), of which it holds the document ids and the values kept beside each
  document, by column (a column of repeated values as `{"values": [...], "codes": [...]}`,
  each value once, so that opening makes no object per document for them); their
  documents follow, one JSON line each, in that order. (A snapshot of format 1, one JSON
  document `{"seq", "tables"}`, is still read, and replaced by the next snapshot);
- `journal-<first seq>.jsonl` segments: one line per committed write,
  `<8 hex CRC-32 of the JSON> {"seq": n, "changes": [...]}`, on disk before the write is
  acknowledged;
- `journal.head`: the newest segment and the last record known durable (one checksummed
  line, replaced atomically): written when a segment begins and, while records are
  written, by a thread at most once a second (`HEAD_EVERY`), off every writer's path;
- `lock`: held with `flock` while the directory is open, so a second process is refused
  instead of corrupting the data. The kernel drops the lock when the process dies.

On open the snapshot is loaded and the segments replayed over it (records the snapshot
already holds are skipped by their seq). Every checksum is verified and the sequence
numbers must run on without a gap from the snapshot through the last segment. The only
damage repaired silently (and logged) is a torn tail: an incomplete last line of the last
segment, from a crash in the middle of an append, which was never acknowledged. Anything
else refuses to open with `CorruptJournal`, naming the file, the byte offset and what to do
(`calls-server recover`, see `salvage`).

Commits are grouped: a writer appends its record under the caller's lock, then waits
outside it (`wait_durable`) until an fsync covers the record; one fsync serves every
record written while the previous one ran. Until then other requests may already read the
change, but nobody has been told it is saved. Appends go straight to the file descriptor
(no user-space buffer): an append that fails (a full disk) is cut off again before the
error is reported, so the refused record never reaches the disk later, and the journal
goes on once there is room. Should the cut or an fsync fail, what the disk holds is
unknown: the journal refuses all further reads and writes (`JournalFailed`) until a
restart recovers from what is on disk.

Compaction runs in the background every `compact_every` records, or every as many records
as there are stored documents if that is more. The writer whose record triggers it waits
while the journal moves on to a new segment (an fsync) and the tables are copied
shallowly (stored documents are never mutated, only replaced); a thread then writes the
snapshot and deletes the segments it covers, and no writer waits for that part.

Moving on to a new segment happens after the triggering record is written, so it must
never be that record's failure: the current segment is fsync'd, the next one opened, and
only then is the current one closed. Should the next segment not open (no file descriptor
or inode left), nothing changes: appends go on in the current segment, the rotation (and
with it compaction) is retried a second later, and readiness says why meanwhile.

Readiness (`check_ready`): once an append, a rotation or a snapshot has failed for want of
room, inodes or file descriptors, the journal is not ready until a probe (a small file
created, written and removed in the data directory) succeeds again; a failed journal is
never ready. A healthy journal answers without touching the disk.

A snapshot written by compaction names, in its trailer, the segment that continues the
journal after it (created and fsync'd before the snapshot was written): if that segment is
missing on open, the newest records were deleted, and the directory is refused. The head
covers what no snapshot names yet: a newest segment deleted while older ones remain, or
cut (at a record boundary, which leaves no torn line) below a record it says was durable,
is refused too. Only the records acknowledged in the last `HEAD_EVERY` before a crash are
beyond its reach, as for any cut that a crash could also have made.

Encoded tables (`encodings`): their documents are kept in memory as their JSON (orjson
bytes) followed by a few values of the document (`Encoding.encode`, say the fields an
index needs), so that a large table costs a few objects per document instead of a dict of
dicts, and opens without parsing its documents: the snapshot holds those values beside
the JSON. The journal's records hold documents as JSON either way.

TinyDB's `Storage.write(data)` only ever sees the whole database, so the journal records
are produced a layer up, by the table (`storage.tinydb_table.JournaledTable`), and handed
to `commit`.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson
from tinydb.storages import Storage

Tables = dict[str, dict[str, Any]]
# One change: (table name, document id, the document or None when it was removed); the
# document of an encoded table as it is kept (its JSON first).
Change = tuple[str, str, Any]

SNAPSHOT = "snapshot.json"
HEAD = "journal.head"
LOCK = "lock"
SEGMENT_GLOB = "journal-*.jsonl"
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
# Seconds between attempts to open the next segment after one failed (each costs an fsync
# under the caller's lock).
ROTATION_RETRY = 1.0
# Seconds between updates of the head's last durable record (each costs two fsyncs).
HEAD_EVERY = 1.0
# Bytes the readiness probe writes once the data directory has refused something.
PROBE_BYTES = 64 * 1024
# Documents per orjson.dumps call in a snapshot: the encoder holds the GIL for a whole
# call, so one call for 100k calls would stall the server for most of a second.
SNAPSHOT_CHUNK = 500
# Values per orjson.dumps call in a snapshot's columns (ids and summaries).
COLUMN_CHUNK = 50_000
FORMAT = 2
RECOVERY_HINT = (
    "Nothing was changed. Keep a copy of the data directory, then run "
    "`calls-server --data-dir <this directory> recover --to <new directory>` to salvage "
    "everything readable, and start the server on the new directory."
)

log = logging.getLogger("calls_server.journal")


class DataDirectoryLocked(RuntimeError):
    """Another process has the data directory open."""


class CorruptJournal(RuntimeError):
    """The data on disk is damaged or incomplete in a way that is not a torn last append."""


class JournalFailed(RuntimeError):
    """A write was refused: it could not be written (nothing of it is kept; the journal goes
    on once there is room), or it could not be made durable or undone (`failed`: the store is
    unusable until a restart). Also what `check_ready` raises while the journal is not ready."""


@dataclass(frozen=True)
class Encoding:
    """How the documents of a table are kept: `encode(document)` gives a tuple of the
    document's JSON (orjson bytes) and the values kept beside it; `repeated` names the
    positions among those values that repeat across documents (each kept once on open)."""

    encode: Callable[[dict[str, Any]], tuple[Any, ...]]
    repeated: frozenset[int] = frozenset()


Encodings = Mapping[str, Encoding]


def segment_name(first_seq: int) -> str:
    """The file name of the journal segment whose first record is `first_seq`."""
    return f"journal-{first_seq:012d}.jsonl"


def encode_record(seq: int, changes: list[Change]) -> bytes:
    """One journal line: the record's CRC-32, a space, the record as JSON, a newline (an
    encoded document, a tuple, written as its JSON)."""
    plain = [
        (table, doc_id, orjson.Fragment(doc[0]) if isinstance(doc, tuple) else doc)
        for table, doc_id, doc in changes
    ]
    payload = orjson.dumps({"seq": seq, "changes": plain})
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def write_snapshot(
    directory: Path,
    seq: int,
    tables: Tables,
    next_segment: str | None = None,
    encodings: Encodings | None = None,
) -> None:
    """Atomically replace the snapshot in `directory` by `tables` as of record `seq`.

    `next_segment`: the file name of the segment that continues the journal after `seq`,
    which must exist already (compaction); a snapshot on its own (salvage) names none.
    `encodings`: how the tables kept encoded are (`Encoding`)."""

    def write(f: IO[bytes]) -> None:
        crc, size = 0, 0
        for data in _snapshot_pieces(seq, tables, encodings or {}):
            f.write(data)
            crc, size = zlib.crc32(data, crc), size + len(data)
        trailer = b"#crc32=%08x bytes=%d" % (crc, size)
        if next_segment is not None:
            trailer += b" next=" + next_segment.encode()
        f.write(b"\n" + trailer + b"\n")

    _replace(directory, SNAPSHOT, write)


def _replace(directory: Path, name: str, write: Callable[[IO[bytes]], object]) -> None:
    """Atomically replace the file `name` in `directory` by what `write` writes: into a
    temporary file, fsync'd, renamed into place, the directory fsync'd; nothing of it left
    behind if anything fails."""
    temporary = directory / f".{name}.{threading.get_ident()}.tmp"
    try:
        with _create(temporary) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, directory / name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()  # only still there if something failed
    _fsync_directory(directory)


def _snapshot_pieces(seq: int, tables: Tables, encodings: Encodings) -> Iterator[bytes]:
    coded = {name: docs for name, docs in tables.items() if name in encodings and docs}
    yield b'{"seq":%d,"format":%d,"tables":{' % (seq, FORMAT)
    plain = [(name, docs) for name, docs in tables.items() if name not in coded]
    for number, (name, documents) in enumerate(plain):
        yield (b"," if number else b"") + orjson.dumps(name) + b":{"
        items = list(documents.items())
        for start in range(0, len(items), SNAPSHOT_CHUNK):
            chunk = orjson.dumps(dict(items[start : start + SNAPSHOT_CHUNK]))
            yield (b"," if start else b"") + chunk[1:-1]
        yield b"}"
    yield b'},"encoded":{'
    for number, (name, documents) in enumerate(coded.items()):
        yield (b"," if number else b"") + orjson.dumps(name) + b':{"ids":'
        yield from _list_pieces(list(documents))
        yield b',"columns":['
        docs = list(documents.values())
        for column in range(1, len(docs[0])):
            yield b"," if column > 1 else b""
            if column - 1 in encodings[name].repeated:
                values = list(map(itemgetter(column), docs))
                distinct = list(dict.fromkeys(values))
                code = {value: number for number, value in enumerate(distinct)}
                yield b'{"values":' + orjson.dumps(distinct) + b',"codes":'
                yield from _list_pieces(values, code.__getitem__)
                yield b"}"
            else:
                yield from _list_pieces(docs, itemgetter(column))
        yield b"]}"
    yield b"}}"
    for documents in coded.values():
        docs_left = iter(documents.values())
        # The documents' JSON, a line each, joined by the chunk: one write per document
        # would cost a system call each.
        while lines := [doc[0] for doc in itertools.islice(docs_left, SNAPSHOT_CHUNK)]:
            yield b"\n" + b"\n".join(lines)


def _list_pieces(
    values: Sequence[Any], pick: Callable[[Any], Any] | None = None
) -> Iterator[bytes]:
    """`values` (or what `pick` picks of each) as a JSON array, in pieces of `COLUMN_CHUNK`
    values: the encoder holds the GIL for a whole call."""
    yield b"["
    for start in range(0, len(values), COLUMN_CHUNK):
        chunk = values[start : start + COLUMN_CHUNK]
        data = orjson.dumps(chunk if pick is None else list(map(pick, chunk)))
        yield (b"," if start else b"") + data[1:-1]
    yield b"]"


@dataclass(frozen=True)
class Head:
    """What `journal.head` says: the newest segment, and the last record known durable."""

    segment: str
    durable: int


def write_head(directory: Path, head: Head) -> None:
    """Atomically replace `journal.head` in `directory` by `head`."""
    payload = orjson.dumps({"segment": head.segment, "durable": head.durable})
    _replace(directory, HEAD, lambda f: f.write(b"%08x %s\n" % (zlib.crc32(payload), payload)))


def read_head(directory: Path) -> Head | None:
    """What `journal.head` in `directory` says (None: there is none); ValueError if it is
    damaged."""
    try:
        line = (directory / HEAD).read_bytes()
    except FileNotFoundError:
        return None
    crc, _, payload = line.rstrip(b"\n").partition(b" ")
    if not payload or f"{zlib.crc32(payload):08x}".encode() != crc:
        raise ValueError("its checksum does not match")
    try:
        fields = orjson.loads(payload)
        return Head(str(fields["segment"]), int(fields["durable"]))
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"it is not a head record ({e})") from e


@dataclass
class Replay:
    """What a data directory holds: its tables as of record `seq`, and what was wrong."""

    seq: int = 0
    tables: Tables = field(default_factory=dict)
    records: int = 0  # records applied from the segments
    problems: list[str] = field(default_factory=list)  # only when salvaging
    torn_tail: tuple[Path, int] | None = None  # (segment, offset) of an incomplete last line


def replay(directory: Path, salvage: bool = False, encodings: Encodings | None = None) -> Replay:
    """Load the snapshot and replay the segments of `directory`, verifying everything.

    The documents of the tables `encodings` names are kept encoded (`Encoding`); every
    other document as a dict (those of a snapshot's encoded tables too, parsed).

    Strict (the default): the first problem raises CorruptJournal. Salvaging: every
    readable record is applied in order and each problem is listed instead; records
    after a gap in the sequence are still applied (each carries whole documents), and
    the gap is reported.
    """
    state = Replay()

    def problem(message: str) -> None:
        if not salvage:
            raise CorruptJournal(f"{message}. {RECOVERY_HINT}")
        state.problems.append(message)

    snapshot = directory / SNAPSHOT
    if snapshot.exists():
        try:
            state.seq, state.tables, next_segment = _load_snapshot(snapshot, encodings or {})
        except ValueError as e:
            problem(f"{snapshot}: {e}")
        else:
            # The segment the snapshot was written after is gone (a newest segment cut or
            # deleted is found by the head: `_check_head`).
            if next_segment is not None and not (directory / next_segment).exists():
                problem(
                    f"{directory / next_segment}: missing, yet {SNAPSHOT} (record "
                    f"{state.seq}) says the journal continues in it: later records may be lost"
                )
    segments = sorted(directory.glob(SEGMENT_GLOB), key=_first_seq)
    for index, path in enumerate(segments):
        data = path.read_bytes()
        last_segment = index == len(segments) - 1
        offset = 0
        while offset < len(data):
            end = data.find(b"\n", offset)
            if end < 0:  # no newline: an append cut short
                if last_segment:
                    state.torn_tail = (path, offset)
                else:
                    problem(f"{path}: an incomplete record at byte {offset}")
                break
            try:
                seq, changes = _decode_record(data[offset:end])
            except ValueError as e:
                problem(f"{path}: the record at byte {offset} is damaged: {e}")
                offset = end + 1
                continue
            if offset == 0 and seq != _first_seq(path):
                problem(f"{path}: begins with record {seq}, not {_first_seq(path)} as named")
            if seq <= state.seq:
                offset = end + 1
                continue  # already in the snapshot
            if seq != state.seq + 1:
                if state.seq == 0 and not snapshot.exists():
                    cause = f"{SNAPSHOT} is missing"
                elif seq - 1 == state.seq + 1:
                    cause = f"record {seq - 1} is missing"
                else:
                    cause = f"records {state.seq + 1} to {seq - 1} are missing"
                problem(
                    f"{path}: record {seq} at byte {offset} does not follow record "
                    f"{state.seq}: {cause}"
                )
            for table, doc_id, doc in changes:
                _apply(state.tables, table, doc_id, doc, encodings or {})
            state.seq = seq
            state.records += 1
            offset = end + 1
    _check_head(directory, state, segments, problem)
    return state


def _check_head(
    directory: Path, state: Replay, segments: list[Path], problem: Callable[[str], None]
) -> None:
    """Report what `journal.head` says was written and is gone: the newest segment (none
    newer remains), or records made durable past the last one replayed."""
    try:
        head = read_head(directory)
    except ValueError as e:
        problem(f"{directory / HEAD}: {e}")
        return
    if head is None:
        return
    newest = _first_seq(Path(head.segment))
    if not (directory / head.segment).exists() and all(_first_seq(p) < newest for p in segments):
        problem(
            f"{directory / head.segment}: missing, yet {HEAD} says it is the newest segment:"
            f" records from {newest} on are lost"
        )
    elif state.seq < head.durable:
        last = segments[-1] if segments else directory / head.segment
        problem(
            f"{last}: ends at record {state.seq}, yet {HEAD} says record {head.durable} was"
            f" written durably: records {state.seq + 1} to {head.durable} are lost (the"
            " segment was cut)"
        )


def salvage(source: Path, target: Path) -> dict[str, Any]:
    """Copy everything readable of data directory `source` into a new directory `target`
    (a snapshot, no segments) and report what could not be read."""
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty; name a new directory")
    with _lock(source / LOCK):  # no server may write while it is read
        state = replay(source, salvage=True)
    problems = list(state.problems)
    if state.torn_tail is not None:
        path, offset = state.torn_tail
        problems.append(f"{path}: an incomplete last record at byte {offset} (never acknowledged)")
    _make_directory(target)
    write_snapshot(target, state.seq, state.tables)
    return {
        "source": str(source),
        "target": str(target),
        "last_record": state.seq,
        "records_replayed": state.records,
        "documents": {name: len(docs) for name, docs in state.tables.items()},
        "problems": problems,
    }


class JournalStorage(Storage):
    """In-memory tables, a journal of every commit and snapshots made in the background."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        compact_every: int = 10_000,
        encodings: Encodings | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.encodings: Encodings = encodings or {}
        _make_directory(self.directory)
        self.compact_every = compact_every
        self._lock_file = _lock(self.directory / LOCK)
        self._compaction: threading.Thread | None = None
        # Group commit: records up to `_written` are in the OS, up to `_durable` on disk.
        self._sync = threading.Condition()
        self._syncing = False
        self._failed: OSError | None = None
        # The last failure to write to the directory short of `_failed` (a full disk, no
        # file descriptor left): not ready until a probe succeeds (`check_ready`).
        self._trouble: OSError | None = None
        self._rotation_retry_at = 0.0  # time.monotonic() before which no rotation is tried
        self._transaction: _Transaction | None = None
        self._head: Head | None = None  # what journal.head says, as last written
        self._head_lock = threading.Lock()
        self._head_stop = threading.Event()
        try:
            _remove_temporaries(self.directory)
            state = replay(self.directory, encodings=self.encodings)
            if state.torn_tail is not None:
                _cut_torn_tail(*state.torn_tail)
            self._seq, self._tables, self._records = state.seq, state.tables, state.records
            self._written = self._durable = self._seq
            self._segment_first = self._seq + 1
            self._segment = self._open_segment(self._segment_first)
            self._update_head()
        except BaseException:
            self._lock_file.close()
            raise
        self._head_keeper = threading.Thread(
            target=self._keep_head, name="journal-head", daemon=True
        )
        self._head_keeper.start()

    # -- tinydb.storages.Storage -------------------------------------------------------
    def read(self) -> Tables:
        return self._tables

    def write(self, data: Tables) -> None:
        # The table mutates `read()`'s dict in place and journals through `commit`; a
        # TinyDB method that replaces whole tables (drop_tables) lands here.
        self._tables = data
        plain = {
            name: {key: orjson.Fragment(doc[0]) for key, doc in documents.items()}
            if name in self.encodings
            else documents
            for name, documents in data.items()
        }
        self._append([("*", "*", plain)])
        self.wait_durable()

    def close(self) -> None:
        """Finish any compaction, write a final snapshot and release the directory."""
        if self._lock_file.closed:
            return
        self._head_stop.set()
        self._head_keeper.join()  # no head written by this process once it let go
        try:
            self.wait_for_compaction()
            # Without a new segment no snapshot: the journal already holds everything.
            if self._failed is None and self._rotate():
                self._compact(self._seq, self._copy_tables(), self._segment_first)
        finally:
            os.close(self._segment)
            self._lock_file.close()

    # -- the journal ---------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        """Whether a write could not be made durable or undone (nothing works until a restart)."""
        return self._failed is not None

    def check_usable(self) -> None:
        """Raise JournalFailed if the journal can no longer be trusted to match the disk."""
        if self._failed is not None:
            raise JournalFailed(
                f"the data directory cannot be written ({self._failed.strerror}); "
                "restart the server once the cause is fixed"
            )

    def check_ready(self) -> None:
        """Raise JournalFailed while the journal cannot serve: it failed, or the data
        directory refused a write and still refuses a probe. Quick while all is well."""
        self.check_usable()
        trouble = self._trouble
        if trouble is None:
            return
        try:
            _probe(self.directory)
        except OSError as e:
            raise JournalFailed(f"the data directory cannot be written ({e.strerror})") from e
        with self._sync:
            if self._trouble is trouble:  # not a newer failure meanwhile
                self._trouble = None
                self._rotation_retry_at = 0.0
        log.warning("the data directory can be written again (it could not: %s)", trouble)

    def _note_trouble(self, error: OSError) -> None:
        with self._sync:
            self._trouble = error

    def commit(self, changes: list[Change], undo: Callable[[], None] | None = None) -> None:
        """Write `changes` (already applied in memory) to the journal as one record.

        The caller serializes commits (and the in-memory changes they describe), then
        calls `wait_durable` without its lock before acknowledging them. If this raises,
        nothing was written and the caller undoes its in-memory change. Inside
        `transaction`, the changes join the transaction's record instead, and `undo` is
        what undoes them should the transaction not be written.
        """
        if self._transaction is not None:
            self._transaction.changes.extend(changes)
            if undo is not None:
                self._transaction.undos.append(undo)
            return
        if not changes:
            return
        self._append(changes)
        # The record is written: nothing from here on may make it a refused write.
        if (
            self._records >= self._compaction_due()
            and not self._compacting()
            and time.monotonic() >= self._rotation_retry_at
        ):
            self.compact_in_background()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every commit inside one record, written when the block ends: all of them or
        none. Should the block raise, or the record not be written, every in-memory change
        made inside is undone (latest first). Nested blocks join the outermost one; the
        caller holds its lock throughout, as for `commit`."""
        if self._transaction is not None:
            yield
            return
        self._transaction = transaction = _Transaction()
        try:
            yield
            self._transaction = None
            self.commit(transaction.changes)
        except BaseException:
            self._transaction = None
            for undo in reversed(transaction.undos):
                undo()
            raise

    def _compaction_due(self) -> int:
        # A snapshot costs O(stored documents), so take one only after as many records:
        # the cost per write stays constant however large the store grows.
        return max(self.compact_every, sum(len(table) for table in self._tables.values()))

    def wait_durable(self) -> None:
        """Return once every record written so far is on disk; one fsync serves many."""
        with self._sync:
            target = self._written
            while self._durable < target:
                self.check_usable()
                if self._syncing:  # another writer's fsync is running: it may cover us
                    self._sync.wait()
                    continue
                self._syncing = True
                goal, segment = self._written, self._segment
                self._sync.release()
                try:
                    os.fsync(segment)
                except OSError as e:
                    log.critical("fsync of the journal failed, refusing reads and writes: %s", e)
                    self._failed = e
                finally:
                    self._sync.acquire()
                    self._syncing = False
                    self._sync.notify_all()
                if self._failed is None:
                    self._durable = max(self._durable, goal)
            self.check_usable()

    def compact_in_background(self) -> None:
        """Start a new segment and snapshot everything before it on another thread (neither
        if no new segment could be opened: see `_rotate`)."""
        if not self._rotate():
            return
        self._compaction = threading.Thread(
            target=self._compact,
            args=(self._seq, self._copy_tables(), self._segment_first),
            name="journal-compaction",
            daemon=True,
        )
        self._compaction.start()

    def _append(self, changes: list[Change]) -> None:
        self.check_usable()
        line = encode_record(self._seq + 1, changes)
        size = os.lseek(self._segment, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(line):
                written += os.write(self._segment, line[written:])
        except OSError as e:
            # No part of a refused record may stay in front of the next one.
            try:
                os.ftruncate(self._segment, size)
            except OSError as undo:
                log.critical("could not cut a failed append off the journal: %s", undo)
                self._failed = undo
            else:
                self._note_trouble(e)
            raise JournalFailed(f"the record could not be written ({e.strerror})") from e
        self._seq += 1
        self._records += 1
        self._written = self._seq

    def _keep_head(self) -> None:
        """Bring `journal.head` up to the last durable record every HEAD_EVERY seconds,
        until the journal is closed. A failed write is retried the next time round."""
        failing = False
        while not self._head_stop.wait(HEAD_EVERY):
            try:
                self._update_head()
            except OSError as e:
                if not failing:
                    log.warning("cannot update %s (retrying every %g s): %s", HEAD, HEAD_EVERY, e)
                failing = True
            else:
                failing = False

    def _update_head(self) -> None:
        """Write `journal.head` if the newest segment or the last durable record changed."""
        with self._head_lock:
            with self._sync:
                head = Head(segment_name(self._segment_first), self._durable)
            if head != self._head:
                write_head(self.directory, head)
                self._head = head

    def _rotate(self) -> bool:
        """Continue the journal in a new segment and say so in `journal.head`; False if
        it could not (nothing changed).

        Called after a record was appended (whose writer has been told nothing yet), so the
        order matters: the current segment is made durable, then the next one is opened,
        and only then is the current one closed. A next segment that cannot be opened (no
        file descriptor, inode or room) is not a failure of the records written: they stay
        in the current segment, which appends go on using, and the rotation is retried
        `ROTATION_RETRY` seconds later; `check_ready` says not ready meanwhile. Only an
        fsync that fails fails the journal (`failed`), as in `wait_durable`. A head that
        cannot be written is left naming the previous segment: the check on open finds
        the newer one, and compaction, which deletes the previous one, still runs.
        """
        if not self._next_segment():
            return False
        try:
            self._update_head()
        except OSError as e:
            log.warning("cannot update %s after a new segment began: %s", HEAD, e)
        return True

    def _next_segment(self) -> bool:
        with self._sync:
            while self._syncing:
                self._sync.wait()
            try:
                if self._durable < self._written:
                    try:
                        os.fsync(self._segment)
                    except OSError as e:
                        log.critical(
                            "fsync of the journal failed, refusing reads and writes: %s", e
                        )
                        self._failed = e
                        return False
                    self._durable = self._written
                first = self._seq + 1
                if first == self._segment_first:
                    return True  # nothing written since the segment began: it is the new one
                try:
                    segment = self._open_segment(first)
                except OSError as e:
                    log.error(
                        "cannot start journal segment %s (%s): writes go on in %s and "
                        "compaction waits; retrying in %g s",
                        segment_name(first),
                        e,
                        segment_name(self._segment_first),
                        ROTATION_RETRY,
                    )
                    self._trouble = e
                    self._rotation_retry_at = time.monotonic() + ROTATION_RETRY
                    return False
                with contextlib.suppress(OSError):  # durable above; the fd is freed anyway
                    os.close(self._segment)
                self._segment, self._segment_first = segment, first
                self._records = 0
                return True
            finally:
                self._sync.notify_all()

    def _open_segment(self, first_seq: int) -> int:
        """A new segment whose first record will be `first_seq`, durable in the directory;
        OSError (and no new file left behind) if it cannot be made."""
        path = self.directory / segment_name(first_seq)
        segment = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        try:
            os.fchmod(segment, FILE_MODE)
            _fsync_directory(self.directory)
        except OSError:
            empty = os.fstat(segment).st_size == 0
            os.close(segment)
            if empty:  # only ever a file just made: an empty segment holds nothing
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return segment

    def _copy_tables(self) -> Tables:
        return {name: dict(table) for name, table in self._tables.items()}

    def _compact(self, seq: int, tables: Tables, keep_from: int) -> None:
        try:
            write_snapshot(
                self.directory,
                seq,
                tables,
                next_segment=segment_name(keep_from),
                encodings=self.encodings,
            )
        except OSError as e:
            log.exception("snapshot failed; the journal keeps every record until the next one")
            self._note_trouble(e)
            return
        for path in sorted(self.directory.glob(SEGMENT_GLOB), key=_first_seq):
            if _first_seq(path) < keep_from:
                path.unlink()

    def _compacting(self) -> bool:
        return self._compaction is not None and self._compaction.is_alive()

    def wait_for_compaction(self) -> None:
        """Return once the snapshot under way, if any, is written."""
        if self._compaction is not None:
            self._compaction.join()

    def abandon(self) -> None:
        """Let go of the directory without a final snapshot, as a killed process would."""
        self._head_stop.set()
        self._head_keeper.join()  # no head written by this process once it let go
        self.wait_for_compaction()
        os.close(self._segment)
        self._lock_file.close()


@dataclass
class _Transaction:
    changes: list[Change] = field(default_factory=list)
    undos: list[Callable[[], None]] = field(default_factory=list)


def _decode_record(line: bytes) -> tuple[int, list[Change]]:
    """The seq and changes of a journal line (without its newline); ValueError if damaged."""
    checksum, _, payload = line.partition(b" ")
    if len(checksum) != 8 or int(checksum, 16) != zlib.crc32(payload):
        raise ValueError("its checksum does not match")
    record = orjson.loads(payload)
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        raise ValueError("it has no sequence number")
    if not isinstance(record.get("changes"), list):
        raise ValueError("it has no changes")
    return record["seq"], record["changes"]


def _load_snapshot(path: Path, encodings: Encodings) -> tuple[int, Tables, str | None]:
    """The seq, tables and next segment's name (if the trailer names one) of a snapshot."""
    data = path.read_bytes()
    # The trailer sliced off, not split: splitting would copy the whole snapshot (a
    # gigabyte at a million calls) once more.
    end = len(data)
    while end and data[end - 1] == 0x0A:
        end -= 1
    newline = data.rfind(b"\n", 0, end)
    document, trailer = memoryview(data)[: max(newline, 0)], data[newline + 1 : end]
    try:
        fields = dict(part.split(b"=", 1) for part in trailer.lstrip(b"#").split())
        expected_crc, expected_size = int(fields[b"crc32"], 16), int(fields[b"bytes"])
        next_segment = fields[b"next"].decode() if b"next" in fields else None
    except (ValueError, KeyError):
        raise ValueError("its checksum trailer is missing or damaged") from None
    if len(document) != expected_size or zlib.crc32(document) != expected_crc:
        raise ValueError(f"its checksum does not match (damaged within its {len(data)} bytes)")
    header_end = data.find(b"\n", 0, len(document))
    coded: dict[str, Any] = {}  # the encoded tables' columns
    if header_end < 0:  # format 1: one JSON document, every table in it
        snapshot = orjson.loads(document)
        del document, data
        seq, tables = snapshot["seq"], snapshot["tables"]
        del snapshot
    else:
        del document  # the memoryview would keep `data` from being cut into lines
        # The documents' lines become the documents kept; the trailer and the newlines
        # after it are left off.
        lines = data.split(b"\n")
        del lines[len(lines) - (len(data) - end) - 1 :]
        del data
        seq, tables, coded = _format_2(lines, encodings)
    if next_segment is not None and next_segment != segment_name(seq + 1):
        raise ValueError(f"its trailer names {next_segment}, not the segment after it")
    plain = [name for name in encodings if name in tables and name not in coded]
    if plain:
        # Tables to be kept encoded that were written plain (format 1): encoded, then
        # read back as format 2 from memory, so that nothing the parse made stays alive
        # (what the encoded documents kept of it would hold on to the parse's memory:
        # 10 GiB at a million calls, where 2 GiB are needed).
        for name in plain:
            documents, tables[name] = tables[name], {}
            for doc_id in list(documents):  # each dict freed once encoded
                tables[name][doc_id] = encodings[name].encode(documents.pop(doc_id))
        lines = b"".join(_snapshot_pieces(seq, tables, encodings)).split(b"\n")
        del tables
        seq, tables, coded = _format_2(lines, encodings)
    return seq, tables, next_segment


def _format_2(lines: list[bytes], encodings: Encodings) -> tuple[int, Tables, dict[str, Any]]:
    """The seq, tables and encoded tables' columns of a snapshot of format 2, cut into
    `lines` (its trailer left off)."""
    snapshot = orjson.loads(lines[0])
    if snapshot.get("format") != FORMAT:
        raise ValueError(f"its format {snapshot.get('format')!r} is not {FORMAT}")
    seq, tables, coded = snapshot["seq"], snapshot["tables"], snapshot["encoded"]
    first = 1
    for name, columns in coded.items():
        ids = columns["ids"]
        docs = lines[first : first + len(ids)]
        first += len(ids)
        if len(docs) != len(ids):
            raise ValueError(f"table {name} lacks documents")
        encoding = encodings.get(name)
        if encoding is None:
            tables[name] = {
                doc_id: orjson.loads(doc) for doc_id, doc in zip(ids, docs, strict=True)
            }
            continue
        values = [
            list(map(column["values"].__getitem__, column["codes"]))
            if isinstance(column, dict)
            else column
            for column in columns["columns"]
        ]
        tables[name] = dict(zip(ids, zip(docs, *values, strict=True), strict=True))
    if first != len(lines):
        raise ValueError("it holds more documents than it names")
    return seq, tables, coded


def _apply(
    tables: Tables, table: str, doc_id: str, doc: dict[str, Any] | None, encodings: Encodings
) -> None:
    if table == "*":
        tables.clear()
        for name, documents in (doc or {}).items():
            encoding = encodings.get(name)
            tables[name] = (
                documents
                if encoding is None
                else {key: encoding.encode(value) for key, value in documents.items()}
            )
    elif doc is None:
        tables.get(table, {}).pop(doc_id, None)
    else:
        encoding = encodings.get(table)
        tables.setdefault(table, {})[doc_id] = doc if encoding is None else encoding.encode(doc)


def _cut_torn_tail(path: Path, offset: int) -> None:
    log.warning(
        "%s: cut off an incomplete last record at byte %d (a crash mid-append; it was never "
        "acknowledged)",
        path,
        offset,
    )
    with open(path, "r+b") as f:
        f.truncate(offset)
        os.fsync(f.fileno())


def _first_seq(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def _make_directory(directory: Path) -> None:
    directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    directory.chmod(DIRECTORY_MODE)  # mkdir's mode is filtered by the umask
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(FILE_MODE)


def _create(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "wb")


def _lock(path: Path) -> IO[str]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    lock_file = os.fdopen(fd, "a+")  # held open for the lifetime of the storage
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


def _remove_temporaries(directory: Path) -> None:
    for leftover in directory.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _probe(directory: Path) -> None:
    """Create, write (`PROBE_BYTES`) and remove a file in `directory`: OSError if it cannot
    take one (no file descriptor, inode or room left). Not fsync'd: what is asked is
    whether a write would be accepted, and a leftover is removed on open with the other
    temporary files."""
    path = directory / f".probe.{threading.get_ident()}.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        data, written = bytes(PROBE_BYTES), 0
        while written < len(data):
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
