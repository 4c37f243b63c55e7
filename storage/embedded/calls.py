"""Calls: each organization's in its index (storage/call_index.py), the scheduled ones by
due time, those another process's sandbox played, and the organization's bytes when a
quota counts them.

Calls are stored encoded (`call_index.stored`: the call's JSON and the fields the indexes
read), parsed when read: a read copies a call as it did before, with one parse instead of
a serialization and a parse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sortedcontainers import SortedList

from calls_server.domain import calls, record_kinds
from calls_server.domain.calls import Call
from calls_server.domain.errors import CallNotFound
from calls_server.domain.listing import CallPage, CallQuery
from calls_server.domain.quotas import Quota
from calls_server.storage.call_index import AT, OrgCallIndex, StoredCall, parsed, stored
from calls_server.storage.embedded.documents import _MAX
from calls_server.storage.embedded.idempotency import IdempotencyMixin
from calls_server.storage.embedded.outbox import OutboxMixin
from calls_server.storage.tinydb_table import EncodedTable, raw_documents

_ORG, _CALL_ID, _STATUS = AT["organization_id"], AT["call_id"], AT["call_status"]
_SCHEDULED, _PLAYER = AT["scheduled_timestamp"], AT["player"]


class CallsMixin(OutboxMixin, IdempotencyMixin):
    """`CallRecords`, `ScheduledCalls`, `SandboxPlayers`: the table calls (a change of a
    call records the events it owes: the outbox's)."""

    _process_id: str
    _quota: Quota
    _calls: EncodedTable
    _call_index: dict[str, OrgCallIndex]
    _sizes: dict[int, int]
    _org_bytes: dict[str, int]
    _schedule: SortedList
    _abandoned: dict[tuple[str, str], str]

    def add_call(self, call: Call) -> None:
        with self._writing():
            org = call["organization_id"]
            index = self._call_index.get(org)
            if index is not None and call["call_id"] in index.call_ids:
                raise record_kinds.CALL.duplicate(call["call_id"])
            new, size = _stored(call)
            self._quota.check(len(index or ()) + 1, self._org_bytes.get(org, 0) + size)
            with self._journal.transaction():
                doc_id = self._calls.insert_stored(new)
                events = self._events_owed(None, new)
                marked = self._mark_claim(record_kinds.CALL.name, call["call_id"])
            if index is None:
                index = self._call_index[org] = OrgCallIndex()
            index.add(doc_id, new)
            if self._quota.max_bytes:
                self._sizes[doc_id] = size
                self._org_bytes[org] = self._org_bytes.get(org, 0) + size
            self._track_schedule(None, new)
            self._track_player(None, new)
            self._index_events(events)
            self._index_mark(marked)

    def get_call(self, organization_id: str, call_id: str) -> Call:
        with self._reading():
            return parsed(self._stored_call(organization_id, call_id)[1])

    def change_call(
        self, organization_id: str, call_id: str, change: Callable[[Call], Call]
    ) -> Call:
        with self._writing():
            doc_id, old = self._stored_call(organization_id, call_id)
            changed = change(parsed(old))
            new, size = _stored(changed)
            if self._quota.max_bytes:
                grown = self._org_bytes[organization_id] - self._sizes[doc_id] + size
                if size > self._sizes[doc_id]:
                    self._quota.check(len(self._call_index[organization_id]), grown)
            with self._journal.transaction():
                self._calls.replace_stored(doc_id, new)
                events = self._events_owed(old, new)
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
                check(parsed(old))
            with self._journal.transaction():
                self._calls.remove(doc_ids=[doc_id])
                events = self._events_owed(old, None)
            self._call_index[organization_id].remove(doc_id, old)
            if self._quota.max_bytes:
                self._org_bytes[organization_id] -= self._sizes.pop(doc_id)
            self._track_schedule(old, None)
            self._track_player(old, None)
            self._index_events(events)
            return parsed(old)

    def list_calls(self, organization_id: str, query: CallQuery) -> CallPage:
        with self._reading():
            index = self._call_index.get(organization_id)
            if index is None:
                query.position()  # a bad cursor is a bad cursor, calls or not
                return CallPage([], 0, None)
            table = raw_documents(self._calls)
            page, total, position = index.select(query, table)
            return CallPage([parsed(table[str(doc_id)]) for doc_id in page], total, position)

    def call_statuses(self, organization_id: str, call_ids: list[str]) -> dict[str, str]:
        with self._reading():
            index = self._call_index.get(organization_id)
            table = raw_documents(self._calls)
            found = {} if index is None else index.call_ids
            return {c: table[str(found[c])][_STATUS] for c in call_ids if c in found}

    def scheduled_calls(self, due_by: int) -> list[Call]:
        with self._reading():
            table = raw_documents(self._calls)
            return [
                parsed(table[str(self._call_index[org].call_ids[call_id])])
                for _, org, call_id in self._schedule.irange(maximum=(due_by, _MAX, _MAX))
            ]

    def abandoned_sandbox_calls(self) -> list[tuple[str, str, str]]:
        with self._reading():
            return sorted(
                (org, call_id, process) for (org, call_id), process in self._abandoned.items()
            )

    def _events_owed(self, old: StoredCall | None, new: StoredCall | None) -> list[Any]:
        """The webhook events a change of a call owes (`_record_events`), told the calls
        parsed; none to parse when no event source is set."""
        if self._event_source is None:
            return []
        return self._record_events(
            None if old is None else parsed(old), None if new is None else parsed(new)
        )

    def _track_player(self, old: StoredCall | None, new: StoredCall | None) -> None:
        if old is not None:
            self._abandoned.pop((old[_ORG], old[_CALL_ID]), None)
        process = None if new is None else new[_PLAYER]
        if new is not None and process not in (None, self._process_id):
            self._abandoned[(new[_ORG], new[_CALL_ID])] = process

    def _track_schedule(self, old: StoredCall | None, new: StoredCall | None) -> None:
        for call, update in ((old, self._schedule.discard), (new, self._schedule.add)):
            if call is not None and call[_STATUS] == "scheduled":
                update((call[_SCHEDULED], call[_ORG], call[_CALL_ID]))

    def _stored_call(self, organization_id: str, call_id: str) -> tuple[int, StoredCall]:
        """The document id and the stored call."""
        index = self._call_index.get(organization_id)
        doc_id = None if index is None else index.call_ids.get(call_id)
        if doc_id is None:
            raise CallNotFound(call_id)
        return doc_id, raw_documents(self._calls)[str(doc_id)]


def _stored(call: Call) -> tuple[StoredCall, int]:
    """`call` as stored (a copy: `call_index.stored`), and its JSON size; refused if it is
    too large."""
    encoded = stored(call)
    calls.check_size(call["call_id"], len(encoded[0]))
    return encoded, len(encoded[0])
