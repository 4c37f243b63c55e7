"""The embedded default store: TinyDB over a journaled in-memory storage.

TinyDB as shipped rebuilds a whole table on every write and scans on every search. Here:

- `JournaledTable` (storage/tinydb_table.py) mutates the stored table in place (O(1) per
  write) and hands exactly the documents it touched to the storage's journal (should that
  fail, the in-memory change is rolled back); every write method then waits, outside the
  lock, until the journal has them on disk (group commit);
- a stored document is never mutated, only replaced (`JournaledTable.replace`), so that
  the journal can snapshot a shallow copy of the tables in the background;
- calls are kept encoded (`EncodedTable`, `call_index.stored`): each as its JSON bytes and
  the fields its indexes are built from, parsed when read; the snapshot holds those fields
  by column, so that opening parses no call (storage/journal.py, `Encoding`);
- every lookup and listing goes through in-memory indexes, rebuilt once on open: calls per
  organization (`storage.call_index`), API keys by key and per organization, webhooks and
  batch calls per organization, webhook events per (organization, webhook), batch tasks
  per (organization, batch call), scheduled calls by due time, kept idempotent answers by
  scope and key. No request reads another organization's records;
- the webhook events a change of a call owes (the outbox) are written in the same journal
  record as the change (`JournalStorage.transaction`): both are on disk, or neither;
- one lock serializes every write and every read that spans documents, since neither
  TinyDB nor its storages are thread-safe;
- when the data directory cannot be written, a write is refused with 503 and rolled back;
  should the journal no longer be known to match the disk, every request is refused with
  503 until a restart, so that nothing is ever answered that the disk may not hold.

The package is split along the roles of `storage.interface`: lock.py (the lock, reading
and writing, 503 when the journal failed), calls.py, accounts.py, records.py (agents,
phone numbers, webhooks: `_OrgRecords`), batches.py, outbox.py (webhook events),
idempotency.py, processes.py, export.py, state.py (an organization's records as a
whole), documents.py. `EmbeddedStore` is one object composed of each role's mixin; it
opens the tables and builds every index here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sortedcontainers import SortedList

# Aliased: `batches` here would be this package's own submodule once it is imported.
from calls_server.domain import batches as batch_rules
from calls_server.domain import record_kinds
from calls_server.domain.quotas import Quota
from calls_server.storage.call_index import AT, REPEATED, OrgCallIndex, StoredCall, stored
from calls_server.storage.embedded.accounts import AccountsMixin
from calls_server.storage.embedded.batches import BatchesMixin, _task_order
from calls_server.storage.embedded.calls import CallsMixin
from calls_server.storage.embedded.documents import _doc_order
from calls_server.storage.embedded.export import EXPORTED, ExportMixin
from calls_server.storage.embedded.idempotency import IdempotencyMixin
from calls_server.storage.embedded.lock import _unavailable_when_failed
from calls_server.storage.embedded.processes import ProcessesMixin
from calls_server.storage.embedded.records import OrgKey, RecordsMixin, _OrgRecords
from calls_server.storage.embedded.state import StateMixin
from calls_server.storage.interface import EventListener, EventSource
from calls_server.storage.journal import Encoding, JournalStorage, write_snapshot
from calls_server.storage.tinydb_table import EmbeddedTinyDB, EncodedTable, raw_documents

__all__ = ["EXPORTED", "FREEZE_AT", "EmbeddedStore", "write_data_directory"]


class EmbeddedStore(
    StateMixin,  # first: it builds on the calls', records' and batches' mixins
    CallsMixin,
    AccountsMixin,
    RecordsMixin,
    BatchesMixin,
    IdempotencyMixin,
    ProcessesMixin,
    ExportMixin,
):
    """The `storage.interface.Store` of a data directory on local disk: each role's methods
    in its module's mixin (the outbox's under the calls'), opening and closing here."""

    reads_wait = False  # reads are answered from memory

    def __init__(
        self,
        directory: str | os.PathLike[str],
        compact_every: int = 10_000,
        quota: Quota | None = None,
    ) -> None:
        with _collector_paused():
            self._open(directory, compact_every, quota)
            if sum(len(index) for index in self._call_index.values()) >= FREEZE_AT:
                # Every full collection would walk every stored call (pauses of a tenth of a
                # second in the middle of requests at 1M calls): what was loaded is left out
                # of them, frozen before the collector runs again (its first pass would walk
                # them all: seconds at 1M calls). Stored documents hold no reference cycles;
                # reference counting alone frees them once they are replaced or deleted.
                gc.freeze()
                _return_freed_memory()

    def _open(
        self, directory: str | os.PathLike[str], compact_every: int, quota: Quota | None
    ) -> None:
        self._lock = threading.RLock()
        self._closed = False  # then every request is refused, as by PostgresStore
        self._process_id = uuid.uuid4().hex
        self._write_observer: Callable[[float], None] | None = None
        self._db = EmbeddedTinyDB(
            directory,
            storage=JournalStorage,
            compact_every=compact_every,
            encodings=ENCODINGS,
        )
        self._journal = cast(JournalStorage, self._db.storage)
        self._quota = quota or Quota()
        self._calls = cast(EncodedTable, self._table("calls"))
        self._organizations = self._table("organizations")
        self._keys = self._table("api_keys")
        self._webhooks = _OrgRecords(self._table("webhooks"), record_kinds.WEBHOOK)
        self._events = self._table("webhook_events")
        self._agents = _OrgRecords(self._table("agents"), record_kinds.AGENT)
        self._numbers = _OrgRecords(self._table("phone_numbers"), record_kinds.PHONE_NUMBER)
        self._batches = _OrgRecords(self._table("batches"), record_kinds.BATCH)
        self._tasks = self._table("batch_tasks")
        # Keyed by (organization, batch id): task id -> doc id, in the batch's order; the
        # pending tasks as (next_attempt_at, index, task id), so that the due ones are a
        # range; the tasks with calls under way.
        self._batch_tasks: dict[OrgKey, dict[str, int]] = {}
        self._pending: dict[OrgKey, SortedList] = {}
        self._calling: dict[OrgKey, set[str]] = {}
        for doc_id, task in sorted(raw_documents(self._tasks).items(), key=_task_order):
            self._index_task(int(doc_id), None, task)
        # Batches the dispatcher has work in: (organization, batch id).
        self._active = {
            (batch["organization_id"], batch["batch_call_id"])
            for batch in raw_documents(self._batches.table).values()
            if batch_rules.active(batch)
        }
        self._event_source: EventSource | None = None
        self._event_listener: EventListener | None = None
        # Indexes: rebuilt here, kept up to date by every write below.
        by_org: dict[str, list[tuple[int, StoredCall]]] = {}
        organization = AT["organization_id"]
        for doc_id, call in raw_documents(self._calls).items():
            by_org.setdefault(call[organization], []).append((int(doc_id), call))
        self._call_index = {org: OrgCallIndex(found) for org, found in by_org.items()}
        # With a byte quota: the JSON size of each call, and their sum per organization.
        # (Measured only then: it costs a serialization of every call at start.)
        self._sizes: dict[int, int] = {}
        self._org_bytes: dict[str, int] = {}
        if self._quota.max_bytes:
            for org, found in by_org.items():
                self._sizes.update((doc_id, len(call[0])) for doc_id, call in found)
                self._org_bytes[org] = sum(self._sizes[doc_id] for doc_id, _ in found)
        # Scheduled calls of every organization by due time: (seconds, organization, call id).
        status, due, call_id = AT["call_status"], AT["scheduled_timestamp"], AT["call_id"]
        self._schedule = SortedList(
            (call[due], org, call[call_id])
            for org, found in by_org.items()
            for _, call in found
            if call[status] == "scheduled"
        )
        # Calls under way that the sandbox of another process plays, (organization, call
        # id) -> that process. One process serves a data directory: every other one has
        # stopped, and only calls stored before this open can be among them.
        # (As `_track_player` would make it, without a method call per call.)
        player = AT["player"]
        self._abandoned: dict[tuple[str, str], str] = {
            (org, call[call_id]): call[player]
            for org, found in by_org.items()
            for _, call in found
            if call[player] is not None and call[player] != self._process_id
        }
        self._org_ids = {doc["organization_id"]: doc.doc_id for doc in self._organizations.all()}
        self._key_ids: dict[str, int] = {}  # api_key -> doc id
        self._org_keys: dict[str, dict[str, int]] = {}  # organization -> api_key_id -> doc id
        for doc in self._keys.all():
            self._key_ids[doc["api_key"]] = doc.doc_id
            self._org_keys.setdefault(doc["organization_id"], {})[doc["api_key_id"]] = doc.doc_id
        # Idempotency keys: (scope, key) -> doc id, in the order kept (so oldest first).
        self._idempotency = self._table("idempotency_keys")
        self._kept: dict[tuple[str, str], int] = {}
        for doc_id, kept in sorted(raw_documents(self._idempotency).items(), key=_doc_order):
            self._kept[(kept["scope"], kept["key"])] = int(doc_id)
        # (organization, webhook id) -> event id -> doc id, in the order recorded
        self._hook_events: dict[OrgKey, dict[str, int]] = {}
        for doc_id, event in sorted(raw_documents(self._events).items(), key=_doc_order):
            hook = (event["organization_id"], event["webhook_id"])
            self._hook_events.setdefault(hook, {})[event["event_id"]] = int(doc_id)

    # -- durability ----------------------------------------------------------------------------
    def check_ready(self) -> None:
        # Not ready while the journal failed, or while the data directory, having refused
        # a write (no room, inode or file descriptor left), still refuses one.
        self._check_open()
        with _unavailable_when_failed():
            self._journal.check_ready()

    def wait_durable(self) -> None:
        with _unavailable_when_failed():
            self._journal.wait_durable()

    # -- for metrics ---------------------------------------------------------------------------
    def observe_writes(self, observer: Callable[[float], None] | None) -> None:
        """Tell `observer` the seconds each write took, from its start (the lock waited for
        included) until the journal had it on disk; refused writes are not told."""
        self._write_observer = observer

    def counts(self) -> dict[str, int]:
        """How many calls and organizations are stored (read without the lock: len() of a
        dict is atomic)."""
        return {"calls": len(raw_documents(self._calls)), "organizations": len(self._org_ids)}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    def abandon(self) -> None:
        """Let go of the data directory without a final snapshot, as a killed process would
        (for crash and recovery tests)."""
        with self._lock:
            self._journal.abandon()


# Calls are stored encoded: their JSON, and the fields their indexes are built from.
CALLS_ENCODED = Encoding(stored, REPEATED)
ENCODINGS = {"calls": CALLS_ENCODED}


def write_data_directory(
    directory: str | os.PathLike[str], tables: dict[str, dict[str, dict[str, Any]]]
) -> None:
    """Write `tables` (each table's documents by document id) as the snapshot of a new data
    directory, in the form a store opens fastest (its calls encoded): for tools that make
    one (bench/run.py's data sets)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    encoded = {
        name: {doc_id: ENCODINGS[name].encode(doc) for doc_id, doc in docs.items()}
        if name in ENCODINGS
        else docs
        for name, docs in tables.items()
    }
    write_snapshot(path, 0, encoded, encodings=ENCODINGS)


# Stores at least this large are frozen out of the cyclic garbage collector once loaded.
FREEZE_AT = 50_000


def _return_freed_memory() -> None:
    """Hand the C library's freed heap back to the system (glibc's `malloc_trim`; nothing
    elsewhere): loading a large snapshot frees as much as it keeps (the file read whole,
    its columns), and without this the process keeps it (1M calls: 80 MiB)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused: loading makes millions of objects and no
    garbage, yet every few hundred allocations the collector ran over an ever larger heap
    (parsing a 1M-call snapshot took 23 s)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
