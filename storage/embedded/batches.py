"""Batch calls (`_OrgRecords`) and their tasks, indexed per (organization, batch): in order,
the pending ones by due time, those calling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sortedcontainers import SortedList

from calls_server.domain import batches, record_kinds
from calls_server.domain.batches import Batch, Task
from calls_server.domain.errors import TaskNotFound
from calls_server.storage.embedded.documents import _MAX, _copy
from calls_server.storage.embedded.idempotency import IdempotencyMixin
from calls_server.storage.embedded.records import OrgKey, _OrgRecords
from calls_server.storage.interface import TaskChange
from calls_server.storage.tinydb_table import JournaledTable, raw_documents


class BatchesMixin(IdempotencyMixin):
    """`BatchRecords`: the tables batches and batch_tasks."""

    _batches: _OrgRecords
    _tasks: JournaledTable
    _batch_tasks: dict[OrgKey, dict[str, int]]
    _pending: dict[OrgKey, SortedList]
    _calling: dict[OrgKey, set[str]]
    _active: set[tuple[str, str]]

    def add_batch(self, batch: Batch, tasks: list[Task]) -> None:
        with self._writing():
            self._org_doc_id(batch["organization_id"])
            with self._journal.transaction():
                doc_id = self._batches.add(batch)
                self._insert_tasks(tasks)
                marked = self._mark_claim(record_kinds.BATCH.name, batch["batch_call_id"])
            self._batches.indexed(batch, doc_id)
            self._index_mark(marked)
            self._track_batch(batch)

    def get_batch(self, organization_id: str, batch_id: str) -> Batch:
        with self._reading():
            return _copy(self._batches.stored(organization_id, batch_id)[1])

    def list_batches(self, organization_id: str) -> list[Batch]:
        with self._reading():
            return self._batches.all(organization_id)

    def change_batch(
        self,
        organization_id: str,
        batch_id: str,
        change: Callable[[Batch], Batch],
        each_task: Callable[[Batch, Task], tuple[Batch, Task]] | None = None,
    ) -> Batch:
        with self._writing():
            doc_id, old = self._batches.stored(organization_id, batch_id)
            batch = change(_copy(old))
            changed: list[tuple[int, Task, Task]] = []
            if each_task is not None:
                table = raw_documents(self._tasks)
                for task_doc in self._batch_tasks.get((organization_id, batch_id), {}).values():
                    before = table[str(task_doc)]
                    batch, after = each_task(batch, _copy(before))
                    if after != before:
                        changed.append((task_doc, before, _copy(after)))
            with self._journal.transaction():
                self._batches.table.replace(doc_id, _copy(batch))
                for task_doc, _, after in changed:
                    self._tasks.replace(task_doc, after)
            for task_doc, before, after in changed:
                self._index_task(task_doc, before, after)
            self._track_batch(batch)
            return batch

    def replace_batch(
        self,
        organization_id: str,
        batch_id: str,
        change: Callable[[Batch], tuple[Batch, list[Task]]],
    ) -> Batch:
        with self._writing():
            doc_id, old = self._batches.stored(organization_id, batch_id)
            batch, tasks = change(_copy(old))
            with self._journal.transaction():
                self._batches.table.replace(doc_id, _copy(batch))
                self._remove_tasks((organization_id, batch_id))
                self._insert_tasks(tasks)
            self._track_batch(batch)
            return batch

    def delete_batch(
        self, organization_id: str, batch_id: str, check: Callable[[Batch], None] | None = None
    ) -> Batch:
        with self._writing():
            doc_id, old = self._batches.stored(organization_id, batch_id)
            if check is not None:
                check(_copy(old))
            with self._journal.transaction():
                self._batches.table.remove(doc_ids=[doc_id])
                self._remove_tasks((organization_id, batch_id))
            del self._batches.index[organization_id][batch_id]
            self._active.discard((organization_id, batch_id))
            return _copy(old)

    def batch_tasks(
        self,
        organization_id: str,
        batch_id: str,
        status: str | None = None,
        due_by: int | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[Task], int]:
        with self._reading():
            self._batches.stored(organization_id, batch_id)
            table = raw_documents(self._tasks)
            key = (organization_id, batch_id)
            ids = self._batch_tasks.get(key, {})
            end = None if limit is None else offset + limit
            if due_by is not None:  # a range of the pending ones, earliest due first
                pending = self._pending.get(key, SortedList())
                total = pending.bisect_right((due_by, _MAX_INT, _MAX))
                chosen = [
                    ids[task_id] for _, _, task_id in pending[offset : min(total, end or total)]
                ]
                return [_copy(table[str(doc)]) for doc in chosen], total
            if status == "calling":  # followed every pass: indexed
                docs = sorted(ids[task_id] for task_id in self._calling.get(key, ()))
                matching = [table[str(doc)] for doc in docs]
            else:
                documents = (table[str(task_doc)] for task_doc in ids.values())
                matching = [t for t in documents if status is None or t["status"] == status]
            return [_copy(task) for task in matching[offset:end]], len(matching)

    def change_batch_task(
        self, organization_id: str, batch_id: str, task_id: str, change: TaskChange
    ) -> tuple[Batch, Task]:
        with self._writing():
            doc_id, old_batch = self._batches.stored(organization_id, batch_id)
            task_doc = self._batch_tasks.get((organization_id, batch_id), {}).get(task_id)
            if task_doc is None:
                raise TaskNotFound(task_id)
            old_task = raw_documents(self._tasks)[str(task_doc)]
            calling = sum(
                raw_documents(self._batches.table)[str(d)]["in_progress"]
                for b, d in self._batches.index.get(organization_id, {}).items()
                if (organization_id, b) in self._active
            )
            batch, task = change(_copy(old_batch), _copy(old_task), calling)
            with self._journal.transaction():
                self._batches.table.replace(doc_id, _copy(batch))
                self._tasks.replace(task_doc, _copy(task))
            self._index_task(task_doc, old_task, task)
            self._track_batch(batch)
            return batch, task

    def active_batches(self) -> list[Batch]:
        with self._reading():
            oldest_first = sorted(self._active, key=lambda key: self._batches.index[key[0]][key[1]])
            return [self.get_batch(org, batch_id) for org, batch_id in oldest_first]

    def _insert_tasks(self, tasks: list[Task]) -> None:
        for task in tasks:
            self._index_task(self._tasks.insert(_copy(task)), None, task)

    def _remove_tasks(self, batch: OrgKey) -> None:
        """Remove the tasks of `batch`, (organization id, batch id), and unindex them."""
        gone = list(self._batch_tasks.pop(batch, {}).values())
        if gone:
            self._tasks.remove(doc_ids=gone)
        self._pending.pop(batch, None)
        self._calling.pop(batch, None)

    def _index_task(self, doc_id: int, old: Task | None, new: Task) -> None:
        batch = (new["organization_id"], new["batch_call_id"])
        self._batch_tasks.setdefault(batch, {})[new["task_id"]] = doc_id
        pending = self._pending.setdefault(batch, SortedList())
        for task, update in ((old, pending.discard), (new, pending.add)):
            if task is not None and task["status"] == "pending":
                update((task["next_attempt_at"], task["index"], task["task_id"]))
        calling = self._calling.setdefault(batch, set())
        if new["status"] == "calling":
            calling.add(new["task_id"])
        else:
            calling.discard(new["task_id"])

    def _track_batch(self, batch: Batch) -> None:
        key = (batch["organization_id"], batch["batch_call_id"])
        if batches.active(batch):
            self._active.add(key)
        else:
            self._active.discard(key)


def _task_order(item: tuple[str, Any]) -> tuple[int, int]:
    return (item[1]["index"], int(item[0]))


_MAX_INT = 2**63  # sorts after every index
