"""The embedded default store: TinyDB over a journaled in-memory storage.

TinyDB as shipped rebuilds a whole table on every write and scans on every search. Here:

- `JournaledTable` (storage/tinydb_table.py) mutates the stored table in place (O(1) per
  write) and hands exactly the documents it touched to the storage's journal (should that
  fail, the in-memory change is rolled back); every write method then waits, outside the
  lock, until the journal has them on disk (group commit);
- a stored document is never mutated, only replaced (`JournaledTable.replace`), so that
  the journal can snapshot a shallow copy of the tables in the background;
- every lookup and listing goes through in-memory indexes, rebuilt once on open: calls per
  organization (`storage.call_index`), API keys by key and per organization, webhooks per
  organization, webhook events per webhook, scheduled calls by due time, kept idempotent
  answers by scope and key. No request reads another organization's records;
- the webhook events a change of a call owes (the outbox) are written in the same journal
  record as the change (`JournalStorage.transaction`): both are on disk, or neither;
- one lock serializes every write and every read that spans documents, since neither
  TinyDB nor its storages are thread-safe;
- when the data directory cannot be written, a write is refused with 503 and rolled back;
  should the journal no longer be known to match the disk, every request is refused with
  503 until a restart, so that nothing is ever answered that the disk may not hold.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import orjson
from sortedcontainers import SortedList

from calls_server.domain import agents, batches, calls, webhooks
from calls_server.domain.agents import Agent
from calls_server.domain.batches import Batch, Task
from calls_server.domain.calls import Call
from calls_server.domain.errors import (
    AgentNotFound,
    ApiKeyNotFound,
    BatchNotFound,
    CallNotFound,
    DuplicateId,
    OrganizationNotFound,
    PhoneNumberNotFound,
    StoreUnavailable,
    TaskNotFound,
    WebhookEventNotFound,
    WebhookNotFound,
)
from calls_server.domain.idempotency import IdempotentAnswer
from calls_server.domain.keys import ApiKey, Organization
from calls_server.domain.listing import CallPage, CallQuery
from calls_server.domain.phone_numbers import PhoneNumber
from calls_server.domain.quotas import Quota
from calls_server.domain.webhooks import Webhook, WebhookEvent
from calls_server.storage.call_index import OrgCallIndex
from calls_server.storage.interface import EventListener, EventSource, TaskChange
from calls_server.storage.journal import JournalFailed, JournalStorage
from calls_server.storage.tinydb_table import EmbeddedTinyDB, JournaledTable, raw_documents

_MAX = "\U0010ffff"  # sorts after every organization and call id
# The fields of a webhook event its listener is told of.
_EVENT_SUMMARY = (
    "event_id",
    "webhook_id",
    "organization_id",
    "call_id",
    "status",
    "next_attempt_at",
)


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


class EmbeddedStore:
    """The `storage.interface.Store` of a data directory on local disk."""

    reads_wait = False  # reads are answered from memory

    def __init__(
        self,
        directory: str | os.PathLike[str],
        compact_every: int = 10_000,
        quota: Quota | None = None,
    ) -> None:
        with _collector_paused():
            self._open(directory, compact_every, quota)
        if sum(len(index) for index in self._call_index.values()) >= FREEZE_AT:
            # Every full collection would walk every stored call (pauses of a tenth of a
            # second in the middle of requests at 1M calls): what was loaded is left out
            # of them. Stored documents hold no reference cycles; reference counting alone
            # frees them once they are replaced or deleted.
            gc.freeze()

    def _open(
        self, directory: str | os.PathLike[str], compact_every: int, quota: Quota | None
    ) -> None:
        self._lock = threading.RLock()
        self._closed = False  # then every request is refused, as by PostgresStore
        self._process_id = uuid.uuid4().hex
        self._write_observer: Callable[[float], None] | None = None
        self._db = EmbeddedTinyDB(directory, storage=JournalStorage, compact_every=compact_every)
        self._journal = cast(JournalStorage, self._db.storage)
        self._quota = quota or Quota()
        self._calls = self._table("calls")
        self._organizations = self._table("organizations")
        self._keys = self._table("api_keys")
        self._webhooks = _OrgRecords(
            self._table("webhooks"),
            "id",
            lambda _, key: WebhookNotFound(key),
            lambda key: DuplicateId(f"A webhook with ID '{key}' already exists"),
        )
        self._events = self._table("webhook_events")
        self._agents = _OrgRecords(
            self._table("agents"),
            "agent_id",
            lambda org, key: AgentNotFound(key, org),
            lambda key: DuplicateId(f"An agent with ID '{key}' already exists"),
        )
        self._numbers = _OrgRecords(
            self._table("phone_numbers"),
            "phone_number",
            lambda _, key: PhoneNumberNotFound(key),
            lambda key: DuplicateId(
                f"Phone number '{key}' already exists", message="Phone number already exists"
            ),
        )
        self._batches = _OrgRecords(
            self._table("batches"),
            "batch_call_id",
            lambda _, key: BatchNotFound(key),
            lambda key: DuplicateId(f"A batch call with ID '{key}' already exists"),
        )
        self._tasks = self._table("batch_tasks")
        # batch -> task id -> doc id, in the batch's order; and batch -> its pending tasks
        # as (next_attempt_at, index, task id), so that the due ones are a range.
        self._batch_tasks: dict[str, dict[str, int]] = {}
        self._pending: dict[str, SortedList] = {}
        self._calling: dict[str, set[str]] = {}  # batch -> its tasks with calls under way
        for doc_id, task in sorted(raw_documents(self._tasks).items(), key=_task_order):
            self._index_task(int(doc_id), None, task)
        # Batches the dispatcher has work in: (organization, batch id).
        self._active = {
            (batch["organization_id"], batch["batch_call_id"])
            for batch in raw_documents(self._batches.table).values()
            if batches.active(batch)
        }
        self._event_source: EventSource | None = None
        self._event_listener: EventListener | None = None
        # Indexes: rebuilt here, kept up to date by every write below.
        by_org: dict[str, list[tuple[int, Call]]] = {}
        for doc_id, call in raw_documents(self._calls).items():
            by_org.setdefault(call["organization_id"], []).append((int(doc_id), call))
        self._call_index = {org: OrgCallIndex(found) for org, found in by_org.items()}
        # With a byte quota: the JSON size of each call, and their sum per organization.
        # (Measured only then: it costs a serialization of every call at start.)
        self._sizes: dict[int, int] = {}
        self._org_bytes: dict[str, int] = {}
        if self._quota.max_bytes:
            for org, found in by_org.items():
                self._sizes.update((doc_id, _size(call)) for doc_id, call in found)
                self._org_bytes[org] = sum(self._sizes[doc_id] for doc_id, _ in found)
        # Scheduled calls of every organization by due time: (seconds, organization, call id).
        self._schedule = SortedList(
            (call["scheduled_timestamp"], org, call["call_id"])
            for org, found in by_org.items()
            for _, call in found
            if call["call_status"] == "scheduled"
        )
        # Calls under way that the sandbox of another process plays, (organization, call
        # id) -> that process. One process serves a data directory: every other one has
        # stopped, and only calls stored before this open can be among them.
        self._abandoned: dict[tuple[str, str], str] = {}
        for found in by_org.values():
            for _, call in found:
                self._track_player(None, call)
        self._org_ids = {doc["organization_id"]: doc.doc_id for doc in self._organizations.all()}
        self._key_ids: dict[str, int] = {}  # api_key -> doc id
        self._org_keys: dict[str, dict[str, int]] = {}  # organization -> api_key_id -> doc id
        for doc in self._keys.all():
            self._key_ids[doc["api_key"]] = doc.doc_id
            self._org_keys.setdefault(doc["organization_id"], {})[doc["api_key_id"]] = doc.doc_id
        # Idempotency keys: (scope, key) -> doc id, in the order kept (so oldest first).
        self._idempotency = self._table("idempotency_keys")
        self._kept: dict[tuple[str, str], int] = {}
        for doc_id, kept in sorted(raw_documents(self._idempotency).items(), key=_doc_order):
            self._kept[(kept["scope"], kept["key"])] = int(doc_id)
        # webhook -> event id -> doc id, in the order recorded
        self._hook_events: dict[str, dict[str, int]] = {}
        for doc_id, event in sorted(raw_documents(self._events).items(), key=_doc_order):
            self._hook_events.setdefault(event["webhook_id"], {})[event["event_id"]] = int(doc_id)

    # -- calls -----------------------------------------------------------------------------
    def add_call(self, call: Call) -> None:
        with self._writing():
            org = call["organization_id"]
            index = self._call_index.get(org)
            if index is not None and call["call_id"] in index.call_ids:
                raise DuplicateId(
                    f"A call with ID '{call['call_id']}' already exists",
                    message="Call already exists",
                )
            stored, size = _stored(call)
            self._quota.check(len(index or ()) + 1, self._org_bytes.get(org, 0) + size)
            with self._journal.transaction():
                doc_id = self._calls.insert(stored)
                events = self._record_events(None, stored)
            if index is None:
                index = self._call_index[org] = OrgCallIndex()
            index.add(doc_id, stored)
            if self._quota.max_bytes:
                self._sizes[doc_id] = size
                self._org_bytes[org] = self._org_bytes.get(org, 0) + size
            self._track_schedule(None, stored)
            self._track_player(None, stored)
            self._index_events(events)

    def get_call(self, organization_id: str, call_id: str) -> Call:
        with self._reading():
            return _copy(self._stored_call(organization_id, call_id)[1])

    def change_call(
        self, organization_id: str, call_id: str, change: Callable[[Call], Call]
    ) -> Call:
        with self._writing():
            doc_id, old = self._stored_call(organization_id, call_id)
            changed = change(_copy(old))
            new, size = _stored(changed)
            if self._quota.max_bytes:
                grown = self._org_bytes[organization_id] - self._sizes[doc_id] + size
                if size > self._sizes[doc_id]:
                    self._quota.check(len(self._call_index[organization_id]), grown)
            with self._journal.transaction():
                self._calls.replace(doc_id, new)
                events = self._record_events(old, new)
            self._call_index[organization_id].replace(doc_id, old, new)
            if self._quota.max_bytes:
                self._sizes[doc_id], self._org_bytes[organization_id] = size, grown
            self._track_schedule(old, new)
            self._track_player(old, new)
            self._index_events(events)
            return changed

    def delete_call(
        self, organization_id: str, call_id: str, check: Callable[[Call], None] | None = None
    ) -> Call:
        with self._writing():
            doc_id, old = self._stored_call(organization_id, call_id)
            if check is not None:
                check(_copy(old))
            with self._journal.transaction():
                self._calls.remove(doc_ids=[doc_id])
                events = self._record_events(old, None)
            self._call_index[organization_id].remove(doc_id, old)
            if self._quota.max_bytes:
                self._org_bytes[organization_id] -= self._sizes.pop(doc_id)
            self._track_schedule(old, None)
            self._track_player(old, None)
            self._index_events(events)
            return _copy(old)

    def list_calls(self, organization_id: str, query: CallQuery) -> CallPage:
        with self._reading():
            index = self._call_index.get(organization_id)
            if index is None:
                query.position()  # a bad cursor is a bad cursor, calls or not
                return CallPage([], 0, None)
            table = raw_documents(self._calls)
            page, total, position = index.select(query, table)
            return CallPage([_copy(table[str(doc_id)]) for doc_id in page], total, position)

    def call_statuses(self, organization_id: str, call_ids: list[str]) -> dict[str, str]:
        with self._reading():
            index = self._call_index.get(organization_id)
            table = raw_documents(self._calls)
            found = {} if index is None else index.call_ids
            return {c: table[str(found[c])]["call_status"] for c in call_ids if c in found}

    def scheduled_calls(self, due_by: int) -> list[Call]:
        with self._reading():
            table = raw_documents(self._calls)
            return [
                _copy(table[str(self._call_index[org].call_ids[call_id])])
                for _, org, call_id in self._schedule.irange(maximum=(due_by, _MAX, _MAX))
            ]

    def abandoned_sandbox_calls(self) -> list[tuple[str, str, str]]:
        with self._reading():
            return sorted(
                (org, call_id, process) for (org, call_id), process in self._abandoned.items()
            )

    def _track_player(self, old: Call | None, new: Call | None) -> None:
        if old is not None:
            self._abandoned.pop((old["organization_id"], old["call_id"]), None)
        process = None if new is None else calls.player(new)
        if new is not None and process not in (None, self._process_id):
            self._abandoned[(new["organization_id"], new["call_id"])] = process

    def _track_schedule(self, old: Call | None, new: Call | None) -> None:
        for call, update in ((old, self._schedule.discard), (new, self._schedule.add)):
            if call is not None and call["call_status"] == "scheduled":
                update((call["scheduled_timestamp"], call["organization_id"], call["call_id"]))

    def _stored_call(self, organization_id: str, call_id: str) -> tuple[int, Call]:
        """The document id and the stored call (to be copied, never mutated)."""
        index = self._call_index.get(organization_id)
        doc_id = None if index is None else index.call_ids.get(call_id)
        if doc_id is None:
            raise CallNotFound(call_id)
        return doc_id, raw_documents(self._calls)[str(doc_id)]

    # -- organizations and API keys --------------------------------------------------------
    def add_organization(self, organization: Organization) -> None:
        with self._writing():
            organization_id = organization["organization_id"]
            if organization_id in self._org_ids:
                raise DuplicateId(
                    f"An organization with ID '{organization_id}' already exists",
                    message="Organization already exists",
                )
            self._org_ids[organization_id] = self._organizations.insert(_copy(organization))

    def get_organization(self, organization_id: str) -> Organization:
        with self._reading():
            doc_id = self._org_doc_id(organization_id)
            return _copy(raw_documents(self._organizations)[str(doc_id)])

    def add_api_key(self, key: ApiKey) -> None:
        with self._writing():
            self._org_doc_id(key["organization_id"])
            mine = self._org_keys.get(key["organization_id"], {})
            if key["api_key"] in self._key_ids or key["api_key_id"] in mine:
                raise DuplicateId(f"An API key with ID '{key['api_key_id']}' already exists")
            doc_id = self._keys.insert(_copy(key))
            self._key_ids[key["api_key"]] = doc_id
            self._org_keys.setdefault(key["organization_id"], {})[key["api_key_id"]] = doc_id

    def find_api_key(self, api_key: str) -> ApiKey | None:
        # Called on the event loop for every request, so it takes no lock (a writer may
        # hold it through an fsync): dict reads are atomic, and a stored document is
        # replaced, never mutated, so this sees the old or the new key, whole.
        self._check_usable()
        doc_id = self._key_ids.get(api_key)
        if doc_id is None:
            return None
        return dict(raw_documents(self._keys)[str(doc_id)])

    def list_api_keys(self, organization_id: str) -> list[ApiKey]:
        with self._reading():
            self._org_doc_id(organization_id)
            table = raw_documents(self._keys)
            ids = self._org_keys.get(organization_id, {}).values()
            return [_copy(table[str(doc_id)]) for doc_id in sorted(ids)]

    def change_api_key(
        self, organization_id: str, api_key_id: str, change: Callable[[ApiKey], ApiKey]
    ) -> ApiKey:
        with self._writing():
            self._org_doc_id(organization_id)
            doc_id = self._org_keys.get(organization_id, {}).get(api_key_id)
            if doc_id is None:
                raise ApiKeyNotFound(api_key_id)
            changed = change(_copy(raw_documents(self._keys)[str(doc_id)]))
            self._keys.replace(doc_id, _copy(changed))
            return changed

    # -- agents ------------------------------------------------------------------------------
    def add_agent(self, agent: Agent) -> None:
        with self._writing():
            self._org_doc_id(agent["organization_id"])
            self._agents.add(agent)

    def agents(self, organization_id: str) -> list[Agent]:
        with self._reading():
            return self._agents.all(organization_id)

    def get_agent(self, organization_id: str, agent_id: str) -> Agent:
        with self._reading():
            return _copy(self._agents.stored(organization_id, agent_id)[1])

    def change_agent(
        self, organization_id: str, agent_id: str, change: Callable[[Agent], Agent]
    ) -> Agent:
        with self._writing():
            return self._agents.change(organization_id, agent_id, change)

    def delete_agent(self, organization_id: str, agent_id: str) -> Agent:
        with self._writing():
            return self._agents.remove(organization_id, agent_id)

    # -- phone numbers -----------------------------------------------------------------------
    def add_phone_number(self, number: PhoneNumber) -> None:
        with self._writing():
            self._org_doc_id(number["organization_id"])
            self._numbers.add(number)

    def phone_numbers(self, organization_id: str) -> list[PhoneNumber]:
        with self._reading():
            return self._numbers.all(organization_id)

    def get_phone_number(self, organization_id: str, phone_number: str) -> PhoneNumber:
        with self._reading():
            return _copy(self._numbers.stored(organization_id, phone_number)[1])

    def change_phone_number(
        self,
        organization_id: str,
        phone_number: str,
        change: Callable[[PhoneNumber], PhoneNumber],
    ) -> PhoneNumber:
        with self._writing():
            return self._numbers.change(organization_id, phone_number, change)

    def delete_phone_number(self, organization_id: str, phone_number: str) -> PhoneNumber:
        with self._writing():
            return self._numbers.remove(organization_id, phone_number)

    # -- webhooks --------------------------------------------------------------------------
    def add_webhook(self, webhook: Webhook, check: Callable[[int], None] | None = None) -> None:
        organization_id = webhook["organization_id"]
        with self._writing():
            self._org_doc_id(organization_id)
            if check is not None:
                check(len(self._webhooks.index.get(organization_id, {})))
            self._webhooks.add(webhook)

    def webhooks(self, organization_id: str) -> list[Webhook]:
        with self._reading():
            return self._webhooks.all(organization_id)

    def get_webhook(self, organization_id: str, webhook_id: str) -> Webhook:
        with self._reading():
            return _copy(self._webhooks.stored(organization_id, webhook_id)[1])

    def change_webhook(
        self, organization_id: str, webhook_id: str, change: Callable[[Webhook], Webhook]
    ) -> Webhook:
        with self._writing():
            return self._webhooks.change(organization_id, webhook_id, change)

    def delete_webhook(
        self,
        organization_id: str,
        webhook_id: str,
        check: Callable[[Webhook], None] | None = None,
    ) -> Webhook:
        with self._writing():
            doc_id, old = self._webhooks.stored(organization_id, webhook_id)
            if check is not None:
                check(_copy(old))
            events = self._hook_events.get(webhook_id, {})
            with self._journal.transaction():
                self._webhooks.table.remove(doc_ids=[doc_id])
                if events:
                    self._events.remove(doc_ids=list(events.values()))
                for agent in self._agents.all(organization_id):
                    if webhook_id in agents.webhook_ids(agent):
                        self._agents.change(
                            organization_id,
                            agent["agent_id"],
                            lambda a: agents.unassigned(a, [webhook_id]),
                        )
            # Indexes change only once the transaction is written.
            del self._webhooks.index[organization_id][webhook_id]
            self._hook_events.pop(webhook_id, None)
            return _copy(old)

    # -- batch calls ---------------------------------------------------------------------------
    def add_batch(self, batch: Batch, tasks: list[Task]) -> None:
        with self._writing():
            self._org_doc_id(batch["organization_id"])
            with self._journal.transaction():
                self._batches.add(batch)
                self._insert_tasks(tasks)
            self._track_batch(batch)

    def get_batch(self, organization_id: str, batch_id: str) -> Batch:
        with self._reading():
            return _copy(self._batches.stored(organization_id, batch_id)[1])

    def batches(self, organization_id: str) -> list[Batch]:
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
                for task_doc in self._batch_tasks.get(batch_id, {}).values():
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
                self._remove_tasks(batch_id)
                self._insert_tasks(tasks)
            self._track_batch(batch)
            return batch

    def delete_batch(
        self, organization_id: str, batch_id: str, check: Callable[[Batch], None]
    ) -> Batch:
        with self._writing():
            doc_id, old = self._batches.stored(organization_id, batch_id)
            check(_copy(old))
            with self._journal.transaction():
                self._batches.table.remove(doc_ids=[doc_id])
                self._remove_tasks(batch_id)
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
            ids = self._batch_tasks.get(batch_id, {})
            end = None if limit is None else offset + limit
            if due_by is not None:  # a range of the pending ones, earliest due first
                pending = self._pending.get(batch_id, SortedList())
                total = pending.bisect_right((due_by, _MAX_INT, _MAX))
                chosen = [
                    ids[task_id] for _, _, task_id in pending[offset : min(total, end or total)]
                ]
                return [_copy(table[str(doc)]) for doc in chosen], total
            if status == "calling":  # followed every pass: indexed
                docs = sorted(ids[task_id] for task_id in self._calling.get(batch_id, ()))
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
            task_doc = self._batch_tasks.get(batch_id, {}).get(task_id)
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

    def _remove_tasks(self, batch_id: str) -> None:
        gone = list(self._batch_tasks.pop(batch_id, {}).values())
        if gone:
            self._tasks.remove(doc_ids=gone)
        self._pending.pop(batch_id, None)
        self._calling.pop(batch_id, None)

    def _index_task(self, doc_id: int, old: Task | None, new: Task) -> None:
        batch_id = new["batch_call_id"]
        self._batch_tasks.setdefault(batch_id, {})[new["task_id"]] = doc_id
        pending = self._pending.setdefault(batch_id, SortedList())
        for task, update in ((old, pending.discard), (new, pending.add)):
            if task is not None and task["status"] == "pending":
                update((task["next_attempt_at"], task["index"], task["task_id"]))
        calling = self._calling.setdefault(batch_id, set())
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

    # -- webhook events (the outbox) ---------------------------------------------------------
    def record_webhook_events(
        self,
        source: EventSource,
        listener: EventListener,
        forget: Callable[[], None] = lambda: None,
    ) -> None:
        """The only process delivers: it is told of every pending event now, then of each
        as it becomes pending, and never has to forget."""
        with self._lock:
            self._event_source, self._event_listener = source, listener
            pending = self.pending_webhook_events()
            if pending:
                self._tell(pending)

    def pending_webhook_events(self) -> list[WebhookEvent]:
        with self._reading():
            table = raw_documents(self._events)
            pending = sorted(
                doc_id
                for events in self._hook_events.values()
                for doc_id in events.values()
                if table[str(doc_id)]["status"] == "pending"
            )
            return [_copy(table[str(doc_id)]) for doc_id in pending]

    def list_webhook_events(
        self,
        organization_id: str,
        webhook_id: str,
        status: str | None = None,
        since: int | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[WebhookEvent], int]:
        with self._reading():
            self._webhooks.stored(organization_id, webhook_id)
            table = raw_documents(self._events)
            newest_first = reversed(self._hook_events.get(webhook_id, {}).values())
            matching = [
                event
                for event in (table[str(doc_id)] for doc_id in newest_first)
                if (status is None or event["status"] == status)
                and (since is None or event["created_at"] >= since)
            ]
            chosen = matching[offset : offset + limit] if limit else matching[offset:]
            return [_copy(event) for event in chosen], len(matching)

    def get_webhook_event(
        self, organization_id: str, webhook_id: str, event_id: str
    ) -> WebhookEvent:
        with self._reading():
            return _copy(self._stored_event(organization_id, webhook_id, event_id)[1])

    def change_webhook_event(
        self,
        organization_id: str,
        webhook_id: str,
        event_id: str,
        change: Callable[[WebhookEvent], WebhookEvent],
    ) -> WebhookEvent:
        with self._writing():
            doc_id, old = self._stored_event(organization_id, webhook_id, event_id)
            changed = change(_copy(old))
            self._events.replace(doc_id, _copy(changed))
            if changed["status"] == "pending" and (
                old["status"] != "pending" or changed["next_attempt_at"] < old["next_attempt_at"]
            ):
                self._tell([changed])  # queued again, or due sooner
            return changed

    def prune_webhook_events(self, settled_before: int) -> int:
        # Looked for under the read lock first: a pass with nothing to prune (the usual one)
        # is no write (none waited for, none counted in the write metrics).
        with self._reading():
            if not self._settled_events(settled_before):
                return 0
        with self._writing():
            done = self._settled_events(settled_before)
            if done:
                self._events.remove(doc_ids=[doc_id for _, _, doc_id in done])
            for webhook_id, event_id, _ in done:
                del self._hook_events[webhook_id][event_id]
            return len(done)

    def _settled_events(self, settled_before: int) -> list[tuple[str, str, int]]:
        """(webhook id, event id, doc id) of the events settled before `settled_before`."""
        table = raw_documents(self._events)
        return [
            (webhook_id, event_id, doc_id)
            for webhook_id, events in self._hook_events.items()
            for event_id, doc_id in events.items()
            if (settled := webhooks.settled_at(table[str(doc_id)])) is not None
            and settled < settled_before
        ]

    def _record_events(self, old: Call | None, new: Call | None) -> list[tuple[int, WebhookEvent]]:
        """Insert the events a change of a call owes (inside its transaction)."""
        if self._event_source is None:
            return []
        organization_id = (new or old or {})["organization_id"]
        hooks = self._webhooks.documents(organization_id)
        call: Call = new or old  # type: ignore[assignment]
        try:
            agent: Agent | None = self._agents.stored(organization_id, call["agent_id"])[1]
        except AgentNotFound:
            agent = None
        owed = self._event_source(old, new, hooks, agents.webhook_ids(agent))
        return [(self._events.insert(event), event) for event in owed]

    def _index_events(self, recorded: list[tuple[int, WebhookEvent]]) -> None:
        """Index events once their transaction is written, and tell the listener."""
        for doc_id, event in recorded:
            self._hook_events.setdefault(event["webhook_id"], {})[event["event_id"]] = doc_id
        if recorded:
            self._tell([event for _, event in recorded])

    def _tell(self, events: list[WebhookEvent]) -> None:
        if self._event_listener is not None:
            # What the listener needs to queue them, without copying their payloads.
            self._event_listener([{k: event[k] for k in _EVENT_SUMMARY} for event in events])

    def _stored_event(
        self, organization_id: str, webhook_id: str, event_id: str
    ) -> tuple[int, WebhookEvent]:
        self._webhooks.stored(organization_id, webhook_id)
        doc_id = self._hook_events.get(webhook_id, {}).get(event_id)
        if doc_id is None:
            raise WebhookEventNotFound(event_id)
        return doc_id, raw_documents(self._events)[str(doc_id)]

    # -- idempotency keys ----------------------------------------------------------------------
    def find_idempotent(self, scope: str, key: str) -> IdempotentAnswer | None:
        # Called on the event loop for every keyed create: no lock, as in find_api_key
        # (dict reads are atomic; an answer pruned meanwhile is an answer not found).
        self._check_usable()
        doc_id = self._kept.get((scope, key))
        found = None if doc_id is None else raw_documents(self._idempotency).get(str(doc_id))
        return None if found is None else cast(IdempotentAnswer, _copy(found))

    def claim_idempotent(self, claim: IdempotentAnswer, now: int) -> IdempotentAnswer | None:
        """None: one process serves a data directory, and it knows what it runs."""
        return None

    def release_idempotent(self, claim: IdempotentAnswer) -> None:
        """Nothing to release: no claim was written."""

    def keep_idempotent(self, answer: IdempotentAnswer) -> None:
        # Written to the journal (the kernel has it: a killed process loses nothing), not
        # waited for: the next write's fsync covers it. The create it answers was made
        # durable before; a second fsync per create would cost a third of their rate.
        with _unavailable_when_failed(), self._lock:
            now = answer["created_at"]
            expired = []
            for slot, doc_id in self._kept.items():  # oldest first: stop at the first live one
                if raw_documents(self._idempotency)[str(doc_id)]["expires_at"] > now:
                    break
                expired.append((slot, doc_id))
            slot = (answer["scope"], answer["key"])
            replaced = self._kept.get(slot)
            with self._journal.transaction():
                gone = [doc_id for _, doc_id in expired]
                if replaced is not None and replaced not in gone:
                    gone.append(replaced)
                if gone:
                    self._idempotency.remove(doc_ids=gone)
                # A shallow copy: the answer is built for keeping, its body never changed.
                doc_id = self._idempotency.insert(dict(answer))
            for expired_slot, _ in expired:
                del self._kept[expired_slot]
            self._kept.pop(slot, None)
            self._kept[slot] = doc_id

    # -- moving to another store --------------------------------------------------------------
    def export(self) -> dict[str, list[dict[str, Any]]]:
        """Every record, by kind (the tables of `EXPORTED`), each kind in the order stored.
        The records are the store's own: read them, never change them."""
        with self._reading():
            tables = {name: self._table(name) for name in EXPORTED}
            return {
                name: [doc for _, doc in sorted(raw_documents(table).items(), key=_doc_order)]
                for name, table in tables.items()
            }

    # -- the processes that serve the store ---------------------------------------------------
    @property
    def process_id(self) -> str:
        """This process's id: new at each open (the directory's lock keeps others out)."""
        return self._process_id

    def live_processes(self) -> set[str]:
        """Only this one: a data directory is served by one process at a time."""
        return {self._process_id}

    # -- durability ----------------------------------------------------------------------------
    def check_ready(self) -> None:
        # Not ready while the journal failed, or while the data directory, having refused
        # a write (no room, inode or file descriptor left), still refuses one.
        self._check_open()
        with _unavailable_when_failed():
            self._journal.check_ready()

    def wait_durable(self) -> None:
        with _unavailable_when_failed():
            self._journal.wait_durable()

    # -- for metrics ---------------------------------------------------------------------------
    def observe_writes(self, observer: Callable[[float], None] | None) -> None:
        """Tell `observer` the seconds each write took, from its start (the lock waited for
        included) until the journal had it on disk; refused writes are not told."""
        self._write_observer = observer

    def counts(self) -> dict[str, int]:
        """How many calls and organizations are stored (read without the lock: len() of a
        dict is atomic)."""
        return {"calls": len(raw_documents(self._calls)), "organizations": len(self._org_ids)}

    def _org_doc_id(self, organization_id: str) -> int:
        try:
            return self._org_ids[organization_id]
        except KeyError:
            raise OrganizationNotFound(organization_id) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable("The store is closed")

    def abandon(self) -> None:
        """Let go of the data directory without a final snapshot, as a killed process would
        (for crash and recovery tests)."""
        with self._lock:
            self._journal.abandon()

    def _check_usable(self) -> None:
        self._check_open()
        with _unavailable_when_failed():
            self._journal.check_usable()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Hold the lock for a read, once the store is known to match the disk."""
        with self._lock:
            self._check_usable()
            yield

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the lock for a write; after it, wait until the write is on disk."""
        started = time.perf_counter()
        with _unavailable_when_failed():
            with self._lock:
                self._check_open()
                yield
            self._journal.wait_durable()
        if self._write_observer is not None:
            self._write_observer(time.perf_counter() - started)

    def _table(self, name: str) -> JournaledTable:
        return cast(JournaledTable, self._db.table(name, cache_size=0))


class _OrgRecords:
    """A table of records that each belong to one organization and are found by an id of
    their own (`key`), with its index. The store's lock is held by the caller."""

    def __init__(
        self,
        table: JournaledTable,
        key: str,
        not_found: Callable[[str, str], Exception],
        duplicate: Callable[[str], Exception],
    ) -> None:
        self.table, self.key = table, key
        self.not_found, self.duplicate = not_found, duplicate
        self.index: dict[str, dict[str, int]] = {}  # organization -> record id -> doc id
        for doc in table.all():
            self.index.setdefault(doc["organization_id"], {})[doc[key]] = doc.doc_id

    def add(self, record: Mapping[str, Any]) -> None:
        """Insert `record`; `duplicate(key)` if its organization has one with its key."""
        if self.exists(record["organization_id"], record[self.key]):
            raise self.duplicate(record[self.key])
        doc_id = self.table.insert(_copy(record))
        self.index.setdefault(record["organization_id"], {})[record[self.key]] = doc_id

    def exists(self, organization_id: str, key: str) -> bool:
        return key in self.index.get(organization_id, {})

    def documents(self, organization_id: str) -> list[dict[str, Any]]:
        """The organization's stored records, oldest first (to be copied, never mutated)."""
        table = raw_documents(self.table)
        return [
            table[str(doc_id)] for doc_id in sorted(self.index.get(organization_id, {}).values())
        ]

    def all(self, organization_id: str) -> list[dict[str, Any]]:
        return [_copy(record) for record in self.documents(organization_id)]

    def stored(self, organization_id: str, key: str) -> tuple[int, dict[str, Any]]:
        doc_id = self.index.get(organization_id, {}).get(key)
        if doc_id is None:
            raise self.not_found(organization_id, key)
        return doc_id, raw_documents(self.table)[str(doc_id)]

    def change(
        self, organization_id: str, key: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        doc_id, old = self.stored(organization_id, key)
        changed = change(_copy(old))
        self.table.replace(doc_id, _copy(changed))
        return changed

    def remove(self, organization_id: str, key: str) -> dict[str, Any]:
        doc_id, old = self.stored(organization_id, key)
        self.table.remove(doc_ids=[doc_id])
        del self.index[organization_id][key]
        return _copy(old)


# Stores at least this large are frozen out of the cyclic garbage collector once loaded.
FREEZE_AT = 50_000


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused: loading makes millions of objects and no
    garbage, yet every few hundred allocations the collector ran over an ever larger heap
    (parsing a 1M-call snapshot took 23 s)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _unavailable_when_failed() -> Iterator[None]:
    """JournalFailed, as the API's 503."""
    try:
        yield
    except JournalFailed as e:
        raise StoreUnavailable(f"The store cannot take this request: {e}") from e


def _stored(call: Call) -> tuple[Call, int]:
    """A private copy of `call` to store, and its JSON size; refused if it is too large."""
    data = orjson.dumps(call)
    calls.check_size(call["call_id"], len(data))
    return dict(orjson.loads(data)), len(data)


def _doc_order(item: tuple[str, Any]) -> int:
    return int(item[0])


def _task_order(item: tuple[str, Any]) -> tuple[int, int]:
    return (item[1]["index"], int(item[0]))


_MAX_INT = 2**63  # sorts after every index


def _size(call: Mapping[str, Any]) -> int:
    return len(orjson.dumps(call))


def _copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A private deep copy (stored documents are plain JSON, so a JSON round trip is one;
    orjson's is several times faster than copy.deepcopy or the json module's)."""
    return dict(orjson.loads(orjson.dumps(doc)))
