"""An organization's records as a whole (`SandboxState`): exported from one snapshot,
loaded (COPY, as `copy_from` does) and removed each in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import psycopg
from psycopg import sql

from calls_server.domain import fixtures
from calls_server.domain.batches import Task
from calls_server.domain.calls import Call
from calls_server.domain.errors import BadRequest
from calls_server.domain.fixtures import Counts, Fixture
from calls_server.domain.quotas import Quota
from calls_server.storage.postgres.accounts import _require_organization
from calls_server.storage.postgres.calls import _call_json, _use
from calls_server.storage.postgres.copy import _COPIED
from calls_server.storage.postgres.pool import Connection, Connections
from calls_server.storage.postgres.records import WEBHOOK_LOCK

# Each kind's table and id column (`fixtures.KINDS`).
_TABLES = {
    "agents": ("agents", "agent_id"),
    "phone_numbers": ("phone_numbers", "phone_number"),
    "webhooks": ("webhooks", "webhook_id"),
    "calls": ("calls", "call_id"),
    "batch_calls": ("batches", "batch_call_id"),
}
# The tables of what belongs to those records, emptied with them by a reset.
_DEPENDENT = ("webhook_events", "batch_tasks", "organization_usage")


class StateMixin(Connections):
    """`SandboxState`: reads and writes across the tables of one organization."""

    _quota: Quota
    _limited: bool

    def export_organization(self, organization_id: str) -> Fixture:
        with self._transaction(snapshot=True) as conn:
            _require_organization(conn, organization_id)
            found = {
                kind: _documents(
                    conn,
                    sql.SQL("SELECT doc FROM {} WHERE organization_id = %s ORDER BY seq").format(
                        sql.Identifier(table)
                    ),
                    organization_id,
                )
                for kind, (table, _) in _TABLES.items()
            }
            tasks = _documents(
                conn,
                sql.SQL(
                    "SELECT doc FROM batch_tasks WHERE organization_id = %s"
                    " ORDER BY batch_call_id, position"
                ),
                organization_id,
            )
        of_batch: dict[str, list[Task]] = {}
        for task in tasks:
            of_batch.setdefault(task["batch_call_id"], []).append(task)
        return fixtures.exported(
            found["agents"],
            found["phone_numbers"],
            found["webhooks"],
            cast(list[Call], found["calls"]),
            [(batch, of_batch.get(batch["batch_call_id"], [])) for batch in found["batch_calls"]],
        )

    def load_organization(
        self,
        organization_id: str,
        fixture: Fixture,
        check: Callable[[Counts], None] | None = None,
    ) -> Counts:
        with self._transaction() as conn:
            _require_organization(conn, organization_id)
            # Webhooks are counted against a cap where they are added: held still until the
            # commit, as every add of the organization's webhooks holds it.
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (WEBHOOK_LOCK, organization_id)
            )
            held = {kind: _ids(conn, kind, organization_id) for kind in fixtures.KINDS}
            records = fixtures.loadable(organization_id, fixture, held)
            loaded = records.counts()
            if check is not None:
                check({kind: count + len(held[kind]) for kind, count in loaded.items()})
            batches = [batch for batch, _ in records.batch_calls]
            tasks = [task for _, of_batch in records.batch_calls for task in of_batch]
            try:
                _copy_rows(conn, "agents", records.agents)
                _copy_rows(conn, "phone_numbers", records.phone_numbers)
                _copy_rows(conn, "webhooks", records.webhooks)
                _copy_rows(conn, "calls", records.calls)
                _copy_rows(conn, "batches", batches)
                _copy_rows(conn, "batch_tasks", tasks)
            except psycopg.errors.UniqueViolation as e:
                # Added by a request since the ids were read: rolled back with the rest.
                raise BadRequest(
                    "A record of the fixture was added to the organization while it was being"
                    f" loaded ({e.diag.message_detail}): nothing was loaded",
                    message="Validation error",
                ) from None
            size = sum(len(_call_json(call)) for call in records.calls)
            if records.calls:
                usage = _use(conn, organization_id, len(records.calls), size, exact=self._limited)
                if usage is not None:
                    self._quota.check(*usage)
        return loaded

    def reset_organization(self, organization_id: str) -> Counts:
        with self._transaction() as conn:
            _require_organization(conn, organization_id)
            removed: Counts = {}
            for kind, (table, _) in _TABLES.items():
                row = conn.execute(
                    sql.SQL(
                        "WITH gone AS (DELETE FROM {} WHERE organization_id = %s RETURNING 1)"
                        " SELECT count(*) FROM gone"
                    ).format(sql.Identifier(table)),
                    (organization_id,),
                ).fetchone()
                assert row is not None  # an aggregate always answers a row
                removed[kind] = int(row[0])
            for table in _DEPENDENT:
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE organization_id = %s").format(
                        sql.Identifier(table)
                    ),
                    (organization_id,),
                )
            # An organization's kept answers and claims are those of its scope.
            conn.execute("DELETE FROM idempotency_keys WHERE scope = %s", (organization_id,))
        return removed


def _documents(conn: Connection, query: sql.Composed | sql.SQL, organization_id: str) -> list[Any]:
    return [row[0] for row in conn.execute(query, (organization_id,)).fetchall()]


def _ids(conn: Connection, kind: str, organization_id: str) -> set[str]:
    """The ids of the organization's records of `kind`."""
    table, column = _TABLES[kind]
    rows = conn.execute(
        sql.SQL("SELECT {} FROM {} WHERE organization_id = %s").format(
            sql.Identifier(column), sql.Identifier(table)
        ),
        (organization_id,),
    ).fetchall()
    return {str(row[0]) for row in rows}


def _copy_rows(conn: Connection, table: str, records: Sequence[Mapping[str, Any]]) -> None:
    """`records` into `table` in one COPY, their rows made as `copy_from` makes them."""
    if not records:
        return
    columns, row = _COPIED[table]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor().copy(statement) as copy:
        for record in records:
            copy.write_row(row(record))
