"""The embedded default store: TinyDB over a journaled in-memory storage.

TinyDB as shipped rebuilds a whole table on every write and scans on every search. Here:

- `JournaledTable` mutates the stored table in place (O(1) per write) and hands exactly
  the documents it touched to the storage's journal, which fsyncs them before the call
  returns; should that fail, the in-memory change is rolled back;
- lookups go through in-memory indexes (organization + call_id -> document id,
  api_key -> document id), rebuilt once on open, so a read never scans;
- one lock serializes every access, since neither TinyDB nor its storages are thread-safe.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, cast

from tinydb import TinyDB
from tinydb.table import Table

from domain.calls import Call
from domain.errors import (
    ApiKeyNotFound,
    CallNotFound,
    DuplicateId,
    OrganizationNotFound,
)
from domain.keys import ApiKey, Organization
from domain.listing import CallQuery
from storage.journal import Change, JournalStorage

_MISSING = object()


class _RecordingView(MutableMapping[int, Any]):
    """The stored table (str keys) seen with int keys, remembering what was touched."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.originals: dict[str, Any] = {}

    def _touch(self, key: str) -> None:
        if key not in self.originals:
            # A deep copy: TinyDB's update() mutates the document it reads in place.
            self.originals[key] = copy.deepcopy(self.raw.get(key, _MISSING))

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


class EmbeddedTinyDB(TinyDB):
    table_class = JournaledTable


class EmbeddedStore:
    """The `storage.interface.Store` of a data directory on local disk."""

    def __init__(self, directory: str | os.PathLike[str], compact_every: int = 10_000) -> None:
        self._lock = threading.RLock()
        self._db = EmbeddedTinyDB(directory, storage=JournalStorage, compact_every=compact_every)
        self._calls = self._db.table("calls", cache_size=0)
        self._organizations = self._db.table("organizations", cache_size=0)
        self._keys = self._db.table("api_keys", cache_size=0)
        # Indexes: rebuilt here, kept up to date by every write below.
        self._call_ids: dict[tuple[str, str], int] = {}
        self._org_calls: dict[str, dict[int, None]] = {}  # insertion-ordered set
        self._org_ids: dict[str, int] = {}
        self._key_ids: dict[str, int] = {}
        for doc in self._calls.all():
            self._index_call(doc, doc.doc_id)
        for doc in self._organizations.all():
            self._org_ids[doc["organization_id"]] = doc.doc_id
        for doc in self._keys.all():
            self._key_ids[doc["api_key"]] = doc.doc_id

    # -- calls -----------------------------------------------------------------------------
    def add_call(self, call: Call) -> None:
        with self._lock:
            key = (call["organization_id"], call["call_id"])
            if key in self._call_ids:
                raise DuplicateId(
                    f"A call with ID '{call['call_id']}' already exists",
                    message="Call already exists",
                )
            doc_id = self._calls.insert(_copy(call))
            self._index_call(call, doc_id)

    def get_call(self, organization_id: str, call_id: str) -> Call:
        with self._lock:
            return _copy(_get(self._calls, self._call_doc_id(organization_id, call_id)))

    def change_call(
        self, organization_id: str, call_id: str, change: Callable[[Call], Call]
    ) -> Call:
        with self._lock:
            doc_id = self._call_doc_id(organization_id, call_id)
            changed = change(_copy(_get(self._calls, doc_id)))
            self._calls.update(_replace_with(changed), doc_ids=[doc_id])
            return changed

    def delete_call(self, organization_id: str, call_id: str) -> Call:
        with self._lock:
            doc_id = self._call_doc_id(organization_id, call_id)
            call = _copy(_get(self._calls, doc_id))
            self._calls.remove(doc_ids=[doc_id])
            del self._call_ids[(organization_id, call_id)]
            del self._org_calls[organization_id][doc_id]
            return call

    def list_calls(self, organization_id: str, query: CallQuery) -> tuple[list[Call], int]:
        with self._lock:
            table = cast(dict[str, Call], self._calls._read_table())
            doc_ids = self._org_calls.get(organization_id, {})
            matching = [call for call in (table[str(i)] for i in doc_ids) if query.matches(call)]
            matching.sort(key=query.sort_key, reverse=query.descending)
            page = matching[query.offset : query.offset + query.limit]
            return [_copy(call) for call in page], len(matching)

    def _call_doc_id(self, organization_id: str, call_id: str) -> int:
        try:
            return self._call_ids[(organization_id, call_id)]
        except KeyError:
            raise CallNotFound(call_id) from None

    def _index_call(self, call: Call, doc_id: int) -> None:
        self._call_ids[(call["organization_id"], call["call_id"])] = doc_id
        self._org_calls.setdefault(call["organization_id"], {})[doc_id] = None

    # -- organizations and API keys --------------------------------------------------------
    def add_organization(self, organization: Organization) -> None:
        with self._lock:
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
        with self._lock:
            self._org_doc_id(key["organization_id"])
            self._key_ids[key["api_key"]] = self._keys.insert(_copy(key))

    def find_api_key(self, api_key: str) -> ApiKey | None:
        with self._lock:
            doc_id = self._key_ids.get(api_key)
            return None if doc_id is None else _copy(_get(self._keys, doc_id))

    def list_api_keys(self, organization_id: str) -> list[ApiKey]:
        with self._lock:
            self._org_doc_id(organization_id)
            return [
                _copy(key) for key in self._keys.all() if key["organization_id"] == organization_id
            ]

    def change_api_key(
        self, organization_id: str, api_key_id: str, change: Callable[[ApiKey], ApiKey]
    ) -> ApiKey:
        with self._lock:
            self._org_doc_id(organization_id)
            found = [
                key
                for key in self._keys.all()
                if key["organization_id"] == organization_id and key["api_key_id"] == api_key_id
            ]
            if not found:
                raise ApiKeyNotFound(api_key_id)
            changed = change(_copy(found[0]))
            self._keys.update(_replace_with(changed), doc_ids=[found[0].doc_id])
            return changed

    def _org_doc_id(self, organization_id: str) -> int:
        try:
            return self._org_ids[organization_id]
        except KeyError:
            raise OrganizationNotFound(organization_id) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _get(table: Table, doc_id: int) -> dict[str, Any]:
    doc = table.get(doc_id=doc_id)
    assert doc is not None, "an index points at a missing document"
    return doc


def _copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A private deep copy (stored documents are plain JSON, so a JSON round trip is one)."""
    return dict(json.loads(json.dumps(doc)))


def _replace_with(new: dict[str, Any]) -> Callable[[MutableMapping[str, Any]], None]:
    def replace(doc: MutableMapping[str, Any]) -> None:
        doc.clear()
        doc.update(_copy(new))

    return replace
