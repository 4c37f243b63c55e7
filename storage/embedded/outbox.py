"""The outbox: the webhook events a change of a call owes, written in the change's journal
record (`_record_events`), indexed per (organization, webhook) once written and told to the
listener (`_index_events`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from calls_server.domain import agents, webhooks
from calls_server.domain.agents import Agent
from calls_server.domain.calls import Call
from calls_server.domain.errors import AgentNotFound, WebhookEventNotFound, WebhookNotFound
from calls_server.domain.webhooks import Webhook, WebhookEvent
from calls_server.storage.embedded.documents import _copy
from calls_server.storage.embedded.lock import Locked
from calls_server.storage.embedded.records import OrgKey, _OrgRecords
from calls_server.storage.interface import EventChange, EventForget, EventListener, EventSource
from calls_server.storage.tinydb_table import JournaledTable, raw_documents

# The fields of a webhook event its listener is told of.
_EVENT_SUMMARY = (
    "event_id",
    "webhook_id",
    "organization_id",
    "call_id",
    "status",
    "next_attempt_at",
)


class OutboxMixin(Locked):
    """`Outbox`: the table webhook_events, indexed per (organization, webhook)."""

    _events: JournaledTable
    _hook_events: dict[OrgKey, dict[str, int]]
    _event_source: EventSource | None
    _event_listener: EventListener | None
    _webhooks: _OrgRecords
    _agents: _OrgRecords

    def record_webhook_events(
        self,
        source: EventSource,
        listener: EventListener,
        forget: EventForget = lambda partitions: None,
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
        call_id: str | None = None,
    ) -> tuple[list[WebhookEvent], int]:
        with self._reading():
            self._webhooks.stored(organization_id, webhook_id)
            table = raw_documents(self._events)
            events = self._hook_events.get((organization_id, webhook_id), {})
            newest_first = reversed(events.values())
            matching = [
                event
                for event in (table[str(doc_id)] for doc_id in newest_first)
                if (status is None or event["status"] == status)
                and (since is None or event["created_at"] >= since)
                and (call_id is None or event["call_id"] == call_id)
            ]
            chosen = matching[offset : offset + limit] if limit else matching[offset:]
            return [_copy(event) for event in chosen], len(matching)

    def get_webhook_event(
        self, organization_id: str, webhook_id: str, event_id: str
    ) -> WebhookEvent:
        with self._reading():
            return _copy(self._stored_event(organization_id, webhook_id, event_id)[1])

    def get_webhooks_with_events(
        self, keys: Sequence[tuple[str, str, str]]
    ) -> list[tuple[Webhook | None, WebhookEvent | None]]:
        stored: list[tuple[dict[str, Any] | None, WebhookEvent | None]] = []
        with self._reading():
            table = raw_documents(self._events)
            for organization_id, webhook_id, event_id in keys:
                try:
                    hook: dict[str, Any] | None = self._webhooks.stored(
                        organization_id, webhook_id
                    )[1]
                except WebhookNotFound:
                    stored.append((None, None))
                    continue
                doc_id = self._hook_events.get((organization_id, webhook_id), {}).get(event_id)
                stored.append((hook, None if doc_id is None else table[str(doc_id)]))
        # Copied once the lock is let go (stored records are never changed, only replaced):
        # the writers waiting for it do not wait for the copies.
        copies: dict[int, Webhook] = {}
        found: list[tuple[Webhook | None, WebhookEvent | None]] = []
        for hook, event in stored:
            if hook is not None and id(hook) not in copies:
                copies[id(hook)] = _copy(hook)
            found.append(
                (
                    None if hook is None else copies[id(hook)],
                    None if event is None else _copy(event),
                )
            )
        return found

    def change_webhook_event(
        self,
        organization_id: str,
        webhook_id: str,
        event_id: str,
        change: Callable[[WebhookEvent], WebhookEvent],
    ) -> WebhookEvent:
        with self._writing():
            doc_id, old = self._stored_event(organization_id, webhook_id, event_id)
            changed = self._change_event(doc_id, old, change)
            if _queued(old, changed):
                self._tell([changed])
            return changed

    def change_webhook_events(self, changes: Sequence[EventChange]) -> list[WebhookEvent | None]:
        # One journal record (and one wait for the disk) for all of them.
        changed: list[WebhookEvent | None] = []
        queued: list[WebhookEvent] = []
        with self._writing(), self._journal.transaction():
            for organization_id, webhook_id, event_id, change in changes:
                try:
                    doc_id, old = self._stored_event(organization_id, webhook_id, event_id)
                except (WebhookNotFound, WebhookEventNotFound):
                    changed.append(None)
                    continue
                event = self._change_event(doc_id, old, change)
                changed.append(event)
                if _queued(old, event):
                    queued.append(event)
            if queued:
                self._tell(queued)
        return changed

    def _change_event(
        self, doc_id: int, old: WebhookEvent, change: Callable[[WebhookEvent], WebhookEvent]
    ) -> WebhookEvent:
        """Store `change(old)` in place of document `doc_id`; the new record (the caller's).

        One copy, not two: a change is a pure function of the stored event (`EventChange`),
        so it is given the stored record itself, and what it returns, which may share parts
        with that record, is stored as a private copy (stored records never change)."""
        changed = change(old)
        self._events.replace(doc_id, _copy(changed))
        return changed

    def prune_webhook_events(self, settled_before: int, organization_id: str | None = None) -> int:
        # Looked for under the read lock first: a pass with nothing to prune (the usual one)
        # is no write (none waited for, none counted in the write metrics).
        with self._reading():
            if not self._settled_events(settled_before, organization_id):
                return 0
        with self._writing():
            done = self._settled_events(settled_before, organization_id)
            if done:
                self._events.remove(doc_ids=[doc_id for _, _, doc_id in done])
            for hook, event_id, _ in done:
                del self._hook_events[hook][event_id]
            return len(done)

    def _settled_events(
        self, settled_before: int, organization_id: str | None
    ) -> list[tuple[OrgKey, str, int]]:
        """((organization id, webhook id), event id, doc id) of the events (of
        `organization_id`, if given) settled before `settled_before`."""
        table = raw_documents(self._events)
        return [
            (hook, event_id, doc_id)
            for hook, events in self._hook_events.items()
            if organization_id in (None, hook[0])
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
            hook = (event["organization_id"], event["webhook_id"])
            self._hook_events.setdefault(hook, {})[event["event_id"]] = doc_id
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
        doc_id = self._hook_events.get((organization_id, webhook_id), {}).get(event_id)
        if doc_id is None:
            raise WebhookEventNotFound(event_id)
        return doc_id, raw_documents(self._events)[str(doc_id)]


def _queued(old: WebhookEvent, new: WebhookEvent) -> bool:
    """Whether a change queued the event again, or made it due sooner (the listener is told)."""
    return bool(
        new["status"] == "pending"
        and (old["status"] != "pending" or new["next_attempt_at"] < old["next_attempt_at"])
    )
