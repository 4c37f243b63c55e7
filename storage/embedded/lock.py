"""The store's one lock and its journal: reads and writes under the lock (a write waited
for until the journal has it on disk), refused with 503 once the store is closed or the
journal failed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

from calls_server.domain.errors import OrganizationNotFound, StoreUnavailable
from calls_server.storage.journal import JournalFailed, JournalStorage
from calls_server.storage.tinydb_table import EmbeddedTinyDB, JournaledTable


class Locked:
    """The base of each role's part of `EmbeddedStore`: its lock, database and journal
    (set up by `EmbeddedStore._open`), and the organizations every record belongs to."""

    _lock: threading.RLock
    _closed: bool
    _db: EmbeddedTinyDB
    _journal: JournalStorage
    _write_observer: Callable[[float], None] | None
    _org_ids: dict[str, int]

    def _org_doc_id(self, organization_id: str) -> int:
        try:
            return self._org_ids[organization_id]
        except KeyError:
            raise OrganizationNotFound(organization_id) from None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("The store is closed")

    def _check_usable(self) -> None:
        self._check_open()
        with _unavailable_when_failed():
            self._journal.check_usable()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Hold the lock for a read, once the store is known to match the disk."""
        with self._lock:
            self._check_usable()
            yield

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the lock for a write; after it, wait until the write is on disk."""
        started = time.perf_counter()
        with _unavailable_when_failed():
            with self._lock:
                self._check_open()
                yield
            self._journal.wait_durable()
        if self._write_observer is not None:
            self._write_observer(time.perf_counter() - started)

    def _table(self, name: str) -> JournaledTable:
        return cast(JournaledTable, self._db.table(name, cache_size=0))


@contextmanager
def _unavailable_when_failed() -> Iterator[None]:
    """JournalFailed, as the API's 503."""
    try:
        yield
    except JournalFailed as e:
        raise StoreUnavailable(f"The store cannot take this request: {e}") from e
