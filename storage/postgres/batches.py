"""Batch calls and their tasks (a batch is one of the organization's records: `_BATCHES`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from psycopg import sql

from calls_server.domain import batches, record_kinds
from calls_server.domain.batches import Batch, Task
from calls_server.domain.errors import TaskNotFound
from calls_server.storage.interface import TaskChange
from calls_server.storage.postgres.accounts import _require_organization
from calls_server.storage.postgres.documents import _copy, _json
from calls_server.storage.postgres.idempotency import _mark_claim
from calls_server.storage.postgres.pool import Connection
from calls_server.storage.postgres.records import RecordsMixin, _Kind, _locked

_BATCHES = _Kind("batches", "batch_call_id", record_kinds.BATCH)
# The key (with the organization's hash) of the advisory lock that serializes changes of an
# organization's batches: its concurrency cap counts calls across them.
BATCH_LOCK = 0x42415443  # "BATC"


class BatchesMixin(RecordsMixin):
    """`BatchRecords`: the tables batches and batch_tasks."""

    def add_batch(self, batch: Batch, tasks: list[Task]) -> None:
        """Store a new batch and its tasks, together (the tasks in one COPY)."""
        with self._transaction() as conn:
            _require_organization(conn, batch["organization_id"])
            inserted = conn.execute(
                "INSERT INTO batches (organization_id, batch_call_id, active, in_progress, doc)"
                " VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING RETURNING 1",
                (batch["organization_id"], batch["batch_call_id"], *_batch_values(batch)),
            ).fetchone()
            if inserted is None:
                raise _BATCHES.of.duplicate(batch["batch_call_id"])
            _insert_tasks(conn, tasks)
            _mark_claim(conn, record_kinds.BATCH.name, batch["batch_call_id"])

    def get_batch(self, organization_id: str, batch_id: str) -> Batch:
        with self._reading() as conn:
            return _locked(conn, _BATCHES, organization_id, batch_id, lock=False)

    def list_batches(self, organization_id: str) -> list[Batch]:
        return self._records(_BATCHES, organization_id)

    def change_batch(
        self,
        organization_id: str,
        batch_id: str,
        change: Callable[[Batch], Batch],
        each_task: Callable[[Batch, Task], tuple[Batch, Task]] | None = None,
    ) -> Batch:
        with self._transaction() as conn:
            _lock_batches(conn, organization_id)
            batch = change(_locked(conn, _BATCHES, organization_id, batch_id))
            if each_task is not None:
                for task in _tasks(conn, organization_id, batch_id, lock=True):
                    batch, changed = each_task(batch, _copy(task))
                    if changed != task:
                        _update_task(conn, changed)
            _update_batch(conn, batch)
        return batch

    def replace_batch(
        self,
        organization_id: str,
        batch_id: str,
        change: Callable[[Batch], tuple[Batch, list[Task]]],
    ) -> Batch:
        with self._transaction() as conn:
            batch, tasks = change(_locked(conn, _BATCHES, organization_id, batch_id))
            _update_batch(conn, batch)
            conn.execute(
                "DELETE FROM batch_tasks WHERE organization_id = %s AND batch_call_id = %s",
                (organization_id, batch_id),
            )
            _insert_tasks(conn, tasks)
        return batch

    def delete_batch(
        self, organization_id: str, batch_id: str, check: Callable[[Batch], None] | None = None
    ) -> Batch:
        with self._transaction() as conn:
            batch = _locked(conn, _BATCHES, organization_id, batch_id)
            if check is not None:
                check(_copy(batch))
            for table in ("batch_tasks", "batches"):
                conn.execute(
                    sql.SQL(
                        "DELETE FROM {} WHERE organization_id = %s AND batch_call_id = %s"
                    ).format(sql.Identifier(table)),
                    (organization_id, batch_id),
                )
        return batch

    def batch_tasks(
        self,
        organization_id: str,
        batch_id: str,
        status: str | None = None,
        due_by: int | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[Task], int]:
        where = "organization_id = %s AND batch_call_id = %s"
        params: list[Any] = [organization_id, batch_id]
        order = "position"
        if due_by is not None:
            where += " AND status = 'pending' AND next_attempt_at <= %s"
            params.append(due_by)
            order = "next_attempt_at, position"
        elif status is not None:
            where += " AND status = %s"
            params.append(status)
        with self._transaction(snapshot=True) as conn:
            _locked(conn, _BATCHES, organization_id, batch_id, lock=False)
            count = conn.execute(f"SELECT count(*) FROM batch_tasks WHERE {where}", params)
            total = int(count.fetchone()[0])  # type: ignore[index]
            rows = conn.execute(
                f"SELECT doc FROM batch_tasks WHERE {where} ORDER BY {order} LIMIT %s OFFSET %s",
                [*params, limit, offset],
            ).fetchall()
        return [cast(Task, row[0]) for row in rows], total

    def change_batch_task(
        self, organization_id: str, batch_id: str, task_id: str, change: TaskChange
    ) -> tuple[Batch, Task]:
        with self._transaction() as conn:
            calling = _lock_batches(conn, organization_id)
            batch = _locked(conn, _BATCHES, organization_id, batch_id)
            row = conn.execute(
                "SELECT doc FROM batch_tasks WHERE organization_id = %s AND batch_call_id = %s"
                " AND task_id = %s FOR UPDATE",
                (organization_id, batch_id, task_id),
            ).fetchone()
            if row is None:
                raise TaskNotFound(task_id)
            batch, task = change(batch, row[0], calling)
            _update_batch(conn, batch)
            _update_task(conn, task)
        return batch, task

    def active_batches(self) -> list[Batch]:
        with self._reading() as conn:
            rows = conn.execute("SELECT doc FROM batches WHERE active ORDER BY seq").fetchall()
        return [cast(Batch, row[0]) for row in rows]


def _batch_values(batch: Mapping[str, Any]) -> tuple[Any, ...]:
    return (batches.active(batch), batch["in_progress"], _json(batch))


def _update_batch(conn: Connection, batch: Batch) -> None:
    conn.execute(
        "UPDATE batches SET active = %s, in_progress = %s, doc = %s::jsonb"
        " WHERE organization_id = %s AND batch_call_id = %s",
        (*_batch_values(batch), batch["organization_id"], batch["batch_call_id"]),
    )


def _task_row(task: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        task["organization_id"],
        task["batch_call_id"],
        task["task_id"],
        task["index"],
        task["status"],
        task["next_attempt_at"],
        _json(task),
    )


_TASK_COLUMNS = (
    "organization_id",
    "batch_call_id",
    "task_id",
    "position",
    "status",
    "next_attempt_at",
    "doc",
)


def _insert_tasks(conn: Connection, tasks: list[Task]) -> None:
    columns = sql.SQL(", ").join(map(sql.Identifier, _TASK_COLUMNS))
    with conn.cursor().copy(sql.SQL("COPY batch_tasks ({}) FROM STDIN").format(columns)) as copy:
        for task in tasks:
            copy.write_row(_task_row(task))


def _update_task(conn: Connection, task: Task) -> None:
    conn.execute(
        "UPDATE batch_tasks SET status = %s, next_attempt_at = %s, doc = %s::jsonb"
        " WHERE organization_id = %s AND batch_call_id = %s AND task_id = %s",
        (
            task["status"],
            task["next_attempt_at"],
            _json(task),
            task["organization_id"],
            task["batch_call_id"],
            task["task_id"],
        ),
    )


def _tasks(conn: Connection, organization_id: str, batch_id: str, lock: bool) -> list[Task]:
    rows = conn.execute(
        "SELECT doc FROM batch_tasks WHERE organization_id = %s AND batch_call_id = %s"
        " ORDER BY position" + (" FOR UPDATE" if lock else ""),
        (organization_id, batch_id),
    ).fetchall()
    return [cast(Task, row[0]) for row in rows]


def _lock_batches(conn: Connection, organization_id: str) -> int:
    """Hold the organization's batch lock until the transaction ends; answer how many of
    its batch calls are under way."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (BATCH_LOCK, organization_id))
    row = conn.execute(
        "SELECT coalesce(sum(in_progress), 0) FROM batches WHERE organization_id = %s AND active",
        (organization_id,),
    ).fetchone()
    assert row is not None  # an aggregate always answers a row
    return int(row[0])
