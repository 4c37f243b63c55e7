"""The embedded default store: TinyDB over a journaled in-memory storage.

TinyDB as shipped rebuilds a whole table on every write and scans on every search. Here:

- `JournaledTable` mutates the stored table in place (O(1) per write) and hands exactly
  the documents it touched to the storage's journal (should that fail, the in-memory
  change is rolled back); every write method then waits, outside the lock, until the
  journal has them on disk (group commit);
- a stored document is never mutated, only replaced (`JournaledTable.replace`), so that
  the journal can snapshot a shallow copy of the tables in the background;
- lookups and listings go through in-memory indexes (`storage.call_index` per
  organization, api_key -> document id), rebuilt once on open, so nothing scans;
- one lock serializes every write and every read that spans documents, since neither
  TinyDB nor its storages are thread-safe.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, cast

from sortedcontainers import SortedList
from tinydb import TinyDB
from tinydb.table import Table

from calls_server.domain.calls import Call
from calls_server.domain.errors import (
    ApiKeyNotFound,
    CallNotFound,
    DuplicateId,
    OrganizationNotFound,
    WebhookNotFound,
)
from calls_server.domain.keys import ApiKey, Organization
from calls_server.domain.listing import CallQuery
from calls_server.domain.webhooks import Webhook
from calls_server.storage.call_index import OrgCallIndex
from calls_server.storage.interface import CallListener
from calls_server.storage.journal import Change, JournalStorage

_MISSING = object()
_MAX = "\U0010ffff"  # sorts after every organization and call id


class _RecordingView(MutableMapping[int, Any]):
    """The stored table (str keys) seen with int keys, remembering what was touched."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.originals: dict[str, Any] = {}

    def _touch(self, key: str) -> None:
        # A reference is enough: stored documents are replaced, never mutated.
        self.originals.setdefault(key, self.raw.get(key, _MISSING))

    def __getitem__(self, doc_id: int) -> Any:
        key = str(doc_id)
        self._touch(key)
        return self.raw[key]

    def __setitem__(self, doc_id: int, doc: Any) -> None:
        key = str(doc_id)
        self._touch(key)
        self.raw[key] = doc

    def __delitem__(self, doc_id: int) -> None:
        key = str(doc_id)
        self._touch(key)
        del self.raw[key]

    def __contains__(self, doc_id: object) -> bool:
        return str(doc_id) in self.raw

    def __iter__(self) -> Iterator[int]:
        return (int(key) for key in self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def rollback(self) -> None:
        for key, original in self.originals.items():
            if original is _MISSING:
                self.raw.pop(key, None)
            else:
                self.raw[key] = original


class JournaledTable(Table):
    """A TinyDB table whose writes cost O(1) and are journaled before they return."""

    def _update_table(self, updater: Callable[[Any], None]) -> None:
        storage = cast(JournalStorage, self._storage)
        view = _RecordingView(storage.read().setdefault(self.name, {}))
        try:
            updater(view)
            changes: list[Change] = [(self.name, key, view.raw.get(key)) for key in view.originals]
            storage.commit(changes)
        except BaseException:
            view.rollback()
            raise
        finally:
            self.clear_cache()

    def update(self, *args: Any, **kwargs: Any) -> list[int]:
        """Refused: TinyDB's update mutates stored documents in place; use `replace`."""
        raise NotImplementedError("stored documents are never mutated: use replace()")

    def replace(self, doc_id: int, doc: Mapping[str, Any]) -> None:
        """Store `doc` in place of document `doc_id` (a new object: stored ones never change)."""

        def swap(table: MutableMapping[int, Any]) -> None:
            if doc_id not in table:
                raise KeyError(doc_id)
            table[doc_id] = dict(doc)

        self._update_table(swap)


class EmbeddedTinyDB(TinyDB):
    table_class = JournaledTable


class EmbeddedStore:
    """The `storage.interface.Store` of a data directory on local disk."""

    def __init__(self, directory: str | os.PathLike[str], compact_every: int = 10_000) -> None:
        self._lock = threading.RLock()
        self._db = EmbeddedTinyDB(directory, storage=JournalStorage, compact_every=compact_every)
        self._journal = cast(JournalStorage, self._db.storage)
        self._calls = self._table("calls")
        self._organizations = self._table("organizations")
        self._keys = self._table("api_keys")
        self._webhooks = self._table("webhooks")
        self._listeners: list[CallListener] = []
        # Indexes: rebuilt here, kept up to date by every write below.
        by_org: dict[str, list[tuple[int, Call]]] = {}
        for doc_id, call in _raw(self._calls).items():
            by_org.setdefault(call["organization_id"], []).append((int(doc_id), call))
        self._call_index = {org: OrgCallIndex(found) for org, found in by_org.items()}
        # Scheduled calls of every organization by due time: (seconds, organization, call id).
        self._schedule = SortedList(
            (call["scheduled_timestamp"], org, call["call_id"])
            for org, found in by_org.items()
            for _, call in found
            if call["call_status"] == "scheduled"
        )
        self._org_ids: dict[str, int] = {}
        self._key_ids: dict[str, int] = {}
        for doc in self._organizations.all():
            self._org_ids[doc["organization_id"]] = doc.doc_id
        for doc in self._keys.all():
            self._key_ids[doc["api_key"]] = doc.doc_id

    # -- calls -----------------------------------------------------------------------------
    def add_call(self, call: Call) -> None:
        with self._writing():
            index = self._call_index.setdefault(call["organization_id"], OrgCallIndex())
            if call["call_id"] in index.call_ids:
                raise DuplicateId(
                    f"A call with ID '{call['call_id']}' already exists",
                    message="Call already exists",
                )
            stored = _copy(call)
            index.add(self._calls.insert(stored), stored)
            self._track_schedule(None, stored)
            self._notify(None, stored)

    def get_call(self, organization_id: str, call_id: str) -> Call:
        with self._lock:
            return _copy(self._stored_call(organization_id, call_id)[1])

    def change_call(
        self, organization_id: str, call_id: str, change: Callable[[Call], Call]
    ) -> Call:
        with self._writing():
            doc_id, old = self._stored_call(organization_id, call_id)
            changed = change(_copy(old))
            new = _copy(changed)
            self._calls.replace(doc_id, new)
            self._call_index[organization_id].replace(doc_id, old, new)
            self._track_schedule(old, new)
            self._notify(old, new)
            return changed

    def delete_call(self, organization_id: str, call_id: str) -> Call:
        with self._writing():
            doc_id, old = self._stored_call(organization_id, call_id)
            self._calls.remove(doc_ids=[doc_id])
            self._call_index[organization_id].remove(doc_id, old)
            self._track_schedule(old, None)
            self._notify(old, None)
            return _copy(old)

    def list_calls(self, organization_id: str, query: CallQuery) -> tuple[list[Call], int]:
        with self._lock:
            index = self._call_index.get(organization_id)
            if index is None:
                return [], 0
            table = _raw(self._calls)
            page, total = index.select(query, table)
            return [_copy(table[str(doc_id)]) for doc_id in page], total

    def scheduled_calls(self, due_by: int) -> list[Call]:
        with self._lock:
            table = _raw(self._calls)
            return [
                _copy(table[str(self._call_index[org].call_ids[call_id])])
                for _, org, call_id in self._schedule.irange(maximum=(due_by, _MAX, _MAX))
            ]

    def _track_schedule(self, old: Call | None, new: Call | None) -> None:
        for call, update in ((old, self._schedule.discard), (new, self._schedule.add)):
            if call is not None and call["call_status"] == "scheduled":
                update((call["scheduled_timestamp"], call["organization_id"], call["call_id"]))

    def _stored_call(self, organization_id: str, call_id: str) -> tuple[int, Call]:
        """The document id and the stored call (to be copied, never mutated)."""
        index = self._call_index.get(organization_id)
        doc_id = None if index is None else index.call_ids.get(call_id)
        if doc_id is None:
            raise CallNotFound(call_id)
        return doc_id, _raw(self._calls)[str(doc_id)]

    # -- organizations and API keys --------------------------------------------------------
    def add_organization(self, organization: Organization) -> None:
        with self._writing():
            organization_id = organization["organization_id"]
            if organization_id in self._org_ids:
                raise DuplicateId(
                    f"An organization with ID '{organization_id}' already exists",
                    message="Organization already exists",
                )
            self._org_ids[organization_id] = self._organizations.insert(_copy(organization))

    def get_organization(self, organization_id: str) -> Organization:
        with self._lock:
            return _copy(_get(self._organizations, self._org_doc_id(organization_id)))

    def add_api_key(self, key: ApiKey) -> None:
        with self._writing():
            self._org_doc_id(key["organization_id"])
            self._key_ids[key["api_key"]] = self._keys.insert(_copy(key))

    def find_api_key(self, api_key: str) -> ApiKey | None:
        # Called on the event loop for every request, so it takes no lock (a writer may
        # hold it through an fsync): dict reads are atomic, and a stored document is
        # replaced, never mutated, so this sees the old or the new key, whole.
        doc_id = self._key_ids.get(api_key)
        if doc_id is None:
            return None
        return dict(_raw(self._keys)[str(doc_id)])

    def list_api_keys(self, organization_id: str) -> list[ApiKey]:
        with self._lock:
            self._org_doc_id(organization_id)
            return [
                _copy(key) for key in self._keys.all() if key["organization_id"] == organization_id
            ]

    def change_api_key(
        self, organization_id: str, api_key_id: str, change: Callable[[ApiKey], ApiKey]
    ) -> ApiKey:
        with self._writing():
            self._org_doc_id(organization_id)
            found = [
                key
                for key in self._keys.all()
                if key["organization_id"] == organization_id and key["api_key_id"] == api_key_id
            ]
            if not found:
                raise ApiKeyNotFound(api_key_id)
            changed = change(_copy(found[0]))
            self._keys.replace(found[0].doc_id, _copy(changed))
            return changed

    # -- webhooks --------------------------------------------------------------------------
    def add_webhook(self, webhook: Webhook) -> None:
        with self._writing():
            self._org_doc_id(webhook["organization_id"])
            self._webhooks.insert(_copy(webhook))

    def webhooks(self, organization_id: str) -> list[Webhook]:
        with self._lock:
            return [
                _copy(hook)
                for hook in _raw(self._webhooks).values()
                if hook["organization_id"] == organization_id
            ]

    def get_webhook(self, organization_id: str, webhook_id: str) -> Webhook:
        with self._lock:
            return _copy(self._stored_webhook(organization_id, webhook_id)[1])

    def change_webhook(
        self, organization_id: str, webhook_id: str, change: Callable[[Webhook], Webhook]
    ) -> Webhook:
        with self._writing():
            doc_id, old = self._stored_webhook(organization_id, webhook_id)
            changed = change(_copy(old))
            self._webhooks.replace(doc_id, _copy(changed))
            return changed

    def delete_webhook(self, organization_id: str, webhook_id: str) -> Webhook:
        with self._writing():
            doc_id, old = self._stored_webhook(organization_id, webhook_id)
            self._webhooks.remove(doc_ids=[doc_id])
            return _copy(old)

    def _stored_webhook(self, organization_id: str, webhook_id: str) -> tuple[int, Webhook]:
        for doc_id, hook in _raw(self._webhooks).items():
            if hook["organization_id"] == organization_id and hook["id"] == webhook_id:
                return int(doc_id), hook
        raise WebhookNotFound(webhook_id)

    # -- listening ---------------------------------------------------------------------------
    def on_call_change(self, listener: CallListener) -> None:
        self._listeners.append(listener)

    def wait_durable(self) -> None:
        self._journal.wait_durable()

    def _notify(self, old: Call | None, new: Call | None) -> None:
        for listener in self._listeners:
            listener(old, new)

    def _org_doc_id(self, organization_id: str) -> int:
        try:
            return self._org_ids[organization_id]
        except KeyError:
            raise OrganizationNotFound(organization_id) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the lock for a write; after it, wait until the write is on disk."""
        with self._lock:
            yield
        self._journal.wait_durable()

    def _table(self, name: str) -> JournaledTable:
        return cast(JournaledTable, self._db.table(name, cache_size=0))


def _raw(table: Table) -> dict[str, Call]:
    """The stored documents of `table` by id, without TinyDB's per-read copies."""
    return cast(dict[str, Call], table._read_table())


def _get(table: Table, doc_id: int) -> dict[str, Any]:
    doc = table.get(doc_id=doc_id)
    assert doc is not None, "an index points at a missing document"
    return doc


def _copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A private deep copy (stored documents are plain JSON, so a JSON round trip is one)."""
    return dict(json.loads(json.dumps(doc)))
