"""An organization's records as a whole (`SandboxState`): exported, loaded in one journal
record, removed in one journal record; every index kept as the records' own writes keep it.

Webhook events and batch tasks are indexed by (organization, webhook or batch id), as
PostgreSQL keys them: the same fixture loads into two organizations, each then holding its
own webhooks and batch calls under the same ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from calls_server.domain import fixtures
from calls_server.domain.fixtures import Counts, Fixture
from calls_server.storage.call_index import OrgCallIndex, StoredCall, parsed
from calls_server.storage.embedded.batches import BatchesMixin
from calls_server.storage.embedded.calls import CallsMixin, _stored
from calls_server.storage.embedded.documents import _copy
from calls_server.storage.embedded.records import RecordsMixin, _OrgRecords
from calls_server.storage.tinydb_table import raw_documents


class StateMixin(CallsMixin, RecordsMixin, BatchesMixin):
    """`SandboxState`: reads and writes across the tables of one organization."""

    def export_organization(self, organization_id: str) -> Fixture:
        with self._reading():
            self._org_doc_id(organization_id)
            table = raw_documents(self._calls)
            index = self._call_index.get(organization_id)
            found = sorted(index.call_ids.values()) if index is not None else []
            tasks = raw_documents(self._tasks)
            batch_calls = []
            for batch in self._batches.documents(organization_id):
                ids = self._batch_tasks.get((organization_id, batch["batch_call_id"]), {}).values()
                ordered = sorted((tasks[str(doc_id)] for doc_id in ids), key=_task_index)
                batch_calls.append((_copy(batch), [_copy(task) for task in ordered]))
            return fixtures.exported(
                self._agents.all(organization_id),
                self._numbers.all(organization_id),
                self._webhooks.all(organization_id),
                [parsed(table[str(doc_id)]) for doc_id in found],
                batch_calls,
            )

    def load_organization(
        self,
        organization_id: str,
        fixture: Fixture,
        check: Callable[[Counts], None] | None = None,
    ) -> Counts:
        with self._writing():
            self._org_doc_id(organization_id)
            held = self._held(organization_id)
            records = fixtures.loadable(organization_id, fixture, held)
            stored = [_stored(call) for call in records.calls]
            index = self._call_index.get(organization_id)
            added_bytes = sum(size for _, size in stored)
            self._quota.check(
                len(index or ()) + len(stored),
                self._org_bytes.get(organization_id, 0) + added_bytes,
            )
            loaded = records.counts()
            if check is not None:
                check({kind: count + len(held[kind]) for kind, count in loaded.items()})
            with self._journal.transaction():
                agents = _inserted(self._agents, records.agents)
                numbers = _inserted(self._numbers, records.phone_numbers)
                hooks = _inserted(self._webhooks, records.webhooks)
                call_docs = [self._calls.insert_stored(call) for call, _ in stored]
                batches = _inserted(self._batches, [batch for batch, _ in records.batch_calls])
                task_docs = [
                    [self._tasks.insert(_copy(task)) for task in tasks]
                    for _, tasks in records.batch_calls
                ]
            # Indexes change only once the journal record is written.
            for records_of, added in ((self._agents, agents), (self._numbers, numbers)):
                for record, doc_id in added:
                    records_of.indexed(record, doc_id)
            for hook, doc_id in hooks:
                self._webhooks.indexed(hook, doc_id)
            if index is None and call_docs:
                index = self._call_index[organization_id] = OrgCallIndex()
            for doc_id, (call, size) in zip(call_docs, stored, strict=True):
                assert index is not None
                index.add(doc_id, call)
                if self._quota.max_bytes:
                    self._sizes[doc_id] = size
                self._track_schedule(None, call)
                self._track_player(None, call)
            if self._quota.max_bytes:
                self._org_bytes[organization_id] = (
                    self._org_bytes.get(organization_id, 0) + added_bytes
                )
            for (batch, doc_id), (_, tasks), docs in zip(
                batches, records.batch_calls, task_docs, strict=True
            ):
                self._batches.indexed(batch, doc_id)
                for task, task_doc in zip(tasks, docs, strict=True):
                    self._index_task(task_doc, None, task)
                self._track_batch(batch)
            return loaded

    def reset_organization(self, organization_id: str) -> Counts:
        with self._writing():
            self._org_doc_id(organization_id)
            org = organization_id
            by_kind = {
                "agents": self._agents.index.get(org, {}),
                "phone_numbers": self._numbers.index.get(org, {}),
                "webhooks": self._webhooks.index.get(org, {}),
                "batch_calls": self._batches.index.get(org, {}),
            }
            index = self._call_index.get(org)
            call_docs = list(index.call_ids.values()) if index is not None else []
            table = raw_documents(self._calls)
            removed_calls: list[StoredCall] = [table[str(doc_id)] for doc_id in call_docs]
            event_docs = [
                doc_id
                for webhook_id in by_kind["webhooks"]
                for doc_id in self._hook_events.get((org, webhook_id), {}).values()
            ]
            task_docs = [
                doc_id
                for batch_id in by_kind["batch_calls"]
                for doc_id in self._batch_tasks.get((org, batch_id), {}).values()
            ]
            kept = [slot for slot in self._kept if slot[0] == org]
            removals = [
                (self._agents.table, list(by_kind["agents"].values())),
                (self._numbers.table, list(by_kind["phone_numbers"].values())),
                (self._webhooks.table, list(by_kind["webhooks"].values())),
                (self._events, event_docs),
                (self._calls, call_docs),
                (self._batches.table, list(by_kind["batch_calls"].values())),
                (self._tasks, task_docs),
                (self._idempotency, [self._kept[slot] for slot in kept]),
            ]
            with self._journal.transaction():
                for records_table, doc_ids in removals:
                    if doc_ids:
                        records_table.remove(doc_ids=doc_ids)
            removed = {kind: len(ids) for kind, ids in by_kind.items()}
            removed["calls"] = len(call_docs)
            # Indexes change only once the journal record is written.
            for records_of in (self._agents, self._numbers, self._webhooks, self._batches):
                records_of.index.pop(org, None)
            for webhook_id in by_kind["webhooks"]:
                self._hook_events.pop((org, webhook_id), None)
            self._call_index.pop(org, None)
            self._org_bytes.pop(org, None)
            for doc_id, call in zip(call_docs, removed_calls, strict=True):
                self._sizes.pop(doc_id, None)
                self._track_schedule(call, None)
                self._track_player(call, None)
            for batch_id in by_kind["batch_calls"]:
                key = (org, batch_id)
                self._batch_tasks.pop(key, None)
                self._pending.pop(key, None)
                self._calling.pop(key, None)
                self._active.discard(key)
            for slot in kept:
                del self._kept[slot]
            return {kind: removed[kind] for kind in fixtures.KINDS}

    def _held(self, organization_id: str) -> dict[str, set[str]]:
        """The ids of the organization's records, by kind (`fixtures.KINDS`)."""
        index = self._call_index.get(organization_id)
        return {
            "agents": set(self._agents.index.get(organization_id, {})),
            "phone_numbers": set(self._numbers.index.get(organization_id, {})),
            "webhooks": set(self._webhooks.index.get(organization_id, {})),
            "calls": set(index.call_ids) if index is not None else set(),
            "batch_calls": set(self._batches.index.get(organization_id, {})),
        }


def _inserted(
    records_of: _OrgRecords, records: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], int]]:
    """Each of `records` inserted into its table (inside the caller's journal transaction),
    with its document id, to be indexed once the transaction is written."""
    return [(record, records_of.table.insert(_copy(record))) for record in records]


def _task_index(task: dict[str, Any]) -> int:
    index: int = task["index"]
    return index
