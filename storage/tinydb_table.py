"""Where the embedded store overrides TinyDB's internals, and why.

Written against tinydb==4.9.0 (pinned in pyproject.toml). TinyDB rebuilds a whole table
dict twice on every insert, update or remove (`Table._update_table`: O(stored documents)
per write, 3.4 s per insert at 100k documents on its JSON storage), has no notion of a
journal, and copies every document it hands out. TinyDB's maintainers point users at
subclassing `Table` and `Storage` for such needs (msiemens/tinydb discussion #526; no
locking either: #529, #537). The overrides:

- `JournaledTable._update_table`: mutates the stored table in place through a view that
  records which documents were touched, and hands exactly those to the storage's journal
  (`storage.journal.JournalStorage.commit`); on failure it restores them.
- `JournaledTable.update` is refused (TinyDB's mutates stored documents in place, which the
  background snapshot must never see); `replace` swaps in a new document instead.
- `EncodedTable` (the tables the storage keeps encoded, `JournalStorage.encodings`) stores
  each document as the storage's encoding of it (a tuple led by its JSON), built once on
  write: `insert_stored` and `replace_stored` take it ready-made.
- `raw_documents` reads the stored documents through `Table._read_table`, without the copy
  TinyDB makes per read (callers copy what they hand out).

tests/unit/test_tinydb_table.py records the signatures of the private names relied on here, so
that an upgrade that changes them fails a test instead of breaking silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, cast

from tinydb import TinyDB
from tinydb.table import Table

from calls_server.storage.journal import Change, JournalStorage

_MISSING = object()


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
        storage = cast(JournalStorage, self.storage)
        view = _RecordingView(storage.read().setdefault(self.name, {}))
        try:
            updater(view)
            changes: list[Change] = [(self.name, key, view.raw.get(key)) for key in view.originals]
            storage.commit(changes, undo=view.rollback)
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


class EncodedTable(JournaledTable):
    """A table whose documents are stored encoded (`storage.journal.Encoding`): read them
    through `raw_documents`, not TinyDB's reads (which expect dicts)."""

    def insert(self, document: Mapping[str, Any]) -> int:
        """Store `document`, encoded; its new document id."""
        return self.insert_stored(self._encode(document))

    def insert_stored(self, stored: tuple[Any, ...]) -> int:
        """Store a document already encoded; its new document id."""
        doc_id: int = self._get_next_id()  # type: ignore[no-untyped-call]

        def put(table: MutableMapping[int, Any]) -> None:
            table[doc_id] = stored

        self._update_table(put)
        return doc_id

    def replace(self, doc_id: int, doc: Mapping[str, Any]) -> None:
        """Store `doc`, encoded, in place of document `doc_id`."""
        self.replace_stored(doc_id, self._encode(doc))

    def replace_stored(self, doc_id: int, stored: tuple[Any, ...]) -> None:
        """Store a document already encoded in place of document `doc_id`."""

        def swap(table: MutableMapping[int, Any]) -> None:
            if doc_id not in table:
                raise KeyError(doc_id)
            table[doc_id] = stored

        self._update_table(swap)

    def _encode(self, document: Mapping[str, Any]) -> tuple[Any, ...]:
        encoding = cast(JournalStorage, self.storage).encodings[self.name]
        return encoding.encode(dict(document))


class EmbeddedTinyDB(TinyDB):
    table_class = JournaledTable

    def table(self, name: str, **kwargs: Any) -> Table:
        """The table `name`: an `EncodedTable` if the storage keeps it encoded."""
        if name not in self._tables and name in cast(JournalStorage, self.storage).encodings:
            self._tables[name] = EncodedTable(self.storage, name, **kwargs)
        return super().table(name, **kwargs)


def raw_documents(table: Table) -> dict[str, Any]:
    """The stored documents of `table` by id, without TinyDB's per-read copies."""
    return cast(dict[str, Any], table._read_table())
