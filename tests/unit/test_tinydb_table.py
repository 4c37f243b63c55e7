"""The overrides of TinyDB internals (storage/tinydb_table.py) still fit the installed
TinyDB: the private names they rely on exist, with the signatures they were written for."""

from __future__ import annotations

import inspect

import pytest
from tinydb import TinyDB
from tinydb.table import Table

from calls_server.storage.tinydb_table import EmbeddedTinyDB, JournaledTable

# tinydb 4.9.0: name -> parameters (names, kinds, defaults; not the annotations' spelling).
RELIED_ON = {
    "_update_table": "(self, updater)",  # overridden; insert and remove write through it
    "_read_table": "(self)",  # raw_documents reads through it
    "_get_next_id": "(self)",  # EncodedTable.insert_stored numbers documents with it
}


def parameters(function) -> str:
    signature = inspect.signature(function)
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=bare, return_annotation=inspect.Signature.empty))


@pytest.mark.parametrize("name", list(RELIED_ON))
def test_every_tinydb_internal_the_overrides_rely_on_is_unchanged(name):
    assert parameters(getattr(Table, name)) == RELIED_ON[name]


@pytest.mark.parametrize("method", ["insert", "remove"])
def test_the_writes_the_store_uses_still_go_through_update_table(method):
    assert "self._update_table(" in inspect.getsource(getattr(Table, method))


def test_the_database_still_keeps_its_tables_by_name_in_tables():
    # EmbeddedTinyDB.table puts an EncodedTable there before TinyDB's table() looks.
    source = inspect.getsource(TinyDB.table)
    assert "if name in self._tables:" in source
    assert "self._tables[name] = table" in source


def test_the_database_still_builds_its_tables_from_table_class():
    assert "self.table_class(" in inspect.getsource(TinyDB.table)
    assert EmbeddedTinyDB.table_class is JournaledTable
