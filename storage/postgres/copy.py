"""Moving up from the embedded store: every record copied in one transaction (COPY)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import psycopg
from psycopg import sql

from calls_server.domain import webhooks
from calls_server.domain.calls import Call
from calls_server.domain.webhooks import WebhookEvent
from calls_server.storage.interface import DatabaseNotEmpty
from calls_server.storage.postgres.batches import _TASK_COLUMNS, _batch_values, _task_row
from calls_server.storage.postgres.calls import _CALL_COLUMNS, _call_json, _call_values
from calls_server.storage.postgres.documents import _json
from calls_server.storage.postgres.pool import Connection, Connections


class CopyMixin(Connections):
    """`PostgresStore.copy_from` and `record_counts`."""

    def copy_from(self, records: Mapping[str, Sequence[Mapping[str, Any]]], replace: bool) -> None:
        """Store `records` (by kind, as `EmbeddedStore.export` answers them, each kind in
        its order) in one transaction, verifying the count of each kind. Raises
        DatabaseNotEmpty if the database holds records, unless `replace`: then they are
        removed first. Nothing is written if anything fails."""
        with self._transaction(bounded=False) as conn:
            conn.execute("SET LOCAL statement_timeout = 0")  # a large copy may take long
            held = _record_counts(conn)
            if any(held.values()) and not replace:
                raise DatabaseNotEmpty(
                    "the database holds records already ("
                    + ", ".join(f"{count} {kind}" for kind, count in held.items() if count)
                    + "); pass --replace to remove them first"
                )
            conn.execute(
                sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
                    sql.SQL(", ").join(map(sql.Identifier, [*_COPIED, "organization_usage"]))
                )
            )
            for kind, (columns, row) in _COPIED.items():
                statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(kind), sql.SQL(", ").join(map(sql.Identifier, columns))
                )
                with conn.cursor().copy(statement) as copy:
                    for record in records.get(kind, ()):
                        copy.write_row(row(record))
            conn.execute(
                "INSERT INTO organization_usage (organization_id, calls, bytes)"
                " SELECT organization_id, count(*), sum(size) FROM calls GROUP BY organization_id"
            )
            copied = _record_counts(conn)
            expected = {kind: len(records.get(kind, ())) for kind in _COPIED}
            if copied != expected:
                raise RuntimeError(f"copied {copied}, expected {expected}: nothing was written")
        # Statistics for the planner, and the visibility map for index-only counts (what
        # autovacuum would do some time later), on a connection of its own: no time limit.
        with self._unavailable(), psycopg.connect(self._url, **self._connect_kwargs) as conn:
            conn.execute("SET statement_timeout = 0")
            conn.execute("VACUUM ANALYZE")

    def record_counts(self) -> dict[str, int]:
        """How many records of each kind the database holds."""
        with self._reading() as conn:
            return _record_counts(conn)


_SEARCH_COLUMNS = ("search_parts", "search_text")
# After the search columns: the process whose sandbox plays the call (calls.player).
_PLAYER_COLUMNS = ("played_by",)


def _call_row(call: Mapping[str, Any]) -> tuple[Any, ...]:
    data = _call_json(cast(Call, call))
    return (call["organization_id"], call["call_id"], *_call_values(cast(Call, call), data))


def _keyed_row(field: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    return lambda record: (record["organization_id"], record[field], _json(record))


# Each table a copy fills: its columns, and a record's row of them.
_COPIED: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, Any]], tuple[Any, ...]]]] = {
    "organizations": (
        ("organization_id", "doc"),
        lambda org: (org["organization_id"], _json(org)),
    ),
    "api_keys": (
        ("organization_id", "api_key_id", "api_key", "doc"),
        lambda key: (key["organization_id"], key["api_key_id"], key["api_key"], _json(key)),
    ),
    "agents": (("organization_id", "agent_id", "doc"), _keyed_row("agent_id")),
    "phone_numbers": (("organization_id", "phone_number", "doc"), _keyed_row("phone_number")),
    "webhooks": (("organization_id", "webhook_id", "doc"), _keyed_row("id")),
    "calls": (
        (
            "organization_id",
            "call_id",
            "doc",
            "size",
            *_CALL_COLUMNS,
            *_SEARCH_COLUMNS,
            *_PLAYER_COLUMNS,
        ),
        _call_row,
    ),
    "webhook_events": (
        ("organization_id", "webhook_id", "event_id", "status", "created_at", "settled_at", "doc"),
        lambda event: (
            event["organization_id"],
            event["webhook_id"],
            event["event_id"],
            event["status"],
            event["created_at"],
            webhooks.settled_at(cast(WebhookEvent, event)),
            _json(event),
        ),
    ),
    "idempotency_keys": (
        ("scope", "key", "expires_at", "doc"),
        lambda kept: (kept["scope"], kept["key"], kept["expires_at"], _json(kept)),
    ),
    "batches": (
        ("organization_id", "batch_call_id", "active", "in_progress", "doc"),
        lambda batch: (batch["organization_id"], batch["batch_call_id"], *_batch_values(batch)),
    ),
    "batch_tasks": (_TASK_COLUMNS, _task_row),
}


def _record_counts(conn: Connection) -> dict[str, int]:
    counted = sql.SQL(", ").join(
        sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(kind)) for kind in _COPIED
    )
    row = conn.execute(sql.SQL("SELECT {}").format(counted)).fetchone()
    assert row is not None
    return dict(zip(_COPIED, map(int, row), strict=True))
