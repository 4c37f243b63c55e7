"""Moving to another store: every record, by kind."""

from __future__ import annotations

from typing import Any

from calls_server.storage.call_index import parsed
from calls_server.storage.embedded.documents import _doc_order
from calls_server.storage.embedded.lock import Locked
from calls_server.storage.tinydb_table import raw_documents

# The kinds of records a store holds (its tables), as `export` answers them.
EXPORTED = (
    "organizations",
    "api_keys",
    "agents",
    "phone_numbers",
    "webhooks",
    "calls",
    "webhook_events",
    "idempotency_keys",
    "batches",
    "batch_tasks",
)


class ExportMixin(Locked):
    """`EmbeddedStore.export` (what `PostgresStore.copy_from` takes)."""

    def export(self) -> dict[str, list[dict[str, Any]]]:
        """Every record, by kind (the tables of `EXPORTED`), each kind in the order stored.
        The records are the store's own (the calls, parsed, excepted): read them, never
        change them."""
        with self._reading():
            tables = {name: self._table(name) for name in EXPORTED}
            exported = {
                name: [doc for _, doc in sorted(raw_documents(table).items(), key=_doc_order)]
                for name, table in tables.items()
            }
            exported["calls"] = [parsed(call) for call in exported["calls"]]
            return exported
