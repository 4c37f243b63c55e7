"""The embedded store beyond the store contract (test_store_contract.py, which every backend
runs): what its files do. A data directory is served by one process at a time, and a
record refused as a duplicate leaves nothing behind in the tables its export carries.

Its journal has tests of its own (test_journal.py, test_journal_faults.py), as has the
integrity of its files (test_store_integrity.py)."""

from __future__ import annotations

import gc

import pytest

from calls_server.domain import calls, keys
from calls_server.domain.errors import DuplicateId
from calls_server.storage import DataDirectoryLocked, EmbeddedStore, embedded
from tests.store.test_store_contract import a_batch, a_phone_number, an_agent, an_api_key, webhook

pytestmark = pytest.mark.embedded_only


def test_a_second_open_of_the_same_directory_is_refused_with_a_clear_message(store, data_dir):
    with pytest.raises(DataDirectoryLocked, match="in use by another process"):
        EmbeddedStore(data_dir)


# Each kind of record an organization holds: (make one, add it).
RECORDS = {
    "agent": (an_agent, EmbeddedStore.add_agent),
    "phone number": (a_phone_number, EmbeddedStore.add_phone_number),
    "webhook": (webhook, EmbeddedStore.add_webhook),
    "batch call": (a_batch, lambda store, made: store.add_batch(*made)),
    "API key": (an_api_key, EmbeddedStore.add_api_key),
}


@pytest.mark.parametrize("kind", RECORDS)
def test_a_record_added_twice_leaves_no_orphan_in_the_export(store, kind):
    """What `export` carries (copy-to-postgres): one row of the record, none of the
    refused one (a batch call: its row and its task's)."""
    make, add = RECORDS[kind]
    store.add_organization(keys.new_organization(1, "acme"))
    record = make()
    add(store, record)

    with pytest.raises(DuplicateId, match="already exists"):
        add(store, record)

    counts = {table: len(rows) for table, rows in store.export().items()}
    assert max(counts.values()) <= 1, counts


def test_a_large_store_opens_frozen_out_of_the_cyclic_collector(tmp_path, monkeypatch):
    """Past FREEZE_AT calls the loaded objects are frozen (and the freed heap handed
    back to the system); the store serves as before."""
    store = EmbeddedStore(tmp_path)
    store.add_organization(keys.new_organization(1, "acme"))
    made = calls.new_call(
        organization_id="acme",
        agent_id="agent",
        now=1_700_000_000_000,
        call_type="phone_call",
        direction="outbound",
        from_number="+14155550100",
        to_number="+14155550101",
        metadata={},
    )
    store.add_call(made)
    store.close()
    monkeypatch.setattr(embedded, "FREEZE_AT", 1)
    try:
        reopened = EmbeddedStore(tmp_path)
        assert gc.get_freeze_count() > 0
        assert reopened.get_call("acme", made["call_id"]) == made
        reopened.close()
    finally:
        gc.unfreeze()
