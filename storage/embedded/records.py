"""The records that each belong to one organization and are found by an id of their own
(agents, phone numbers, webhooks; batch calls too, see batches.py): `_OrgRecords`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from calls_server.domain import agents, record_kinds
from calls_server.domain.agents import Agent
from calls_server.domain.phone_numbers import PhoneNumber
from calls_server.domain.record_kinds import RecordKind
from calls_server.domain.webhooks import Webhook
from calls_server.storage.embedded.documents import _copy
from calls_server.storage.embedded.idempotency import IdempotencyMixin
from calls_server.storage.tinydb_table import JournaledTable, raw_documents

# (organization id, record id): how the indexes of what belongs to a record found by an id
# of its own (a webhook's events, a batch call's tasks) key it, so that two organizations
# may hold records with the same id (one fixture loaded into both) without meeting.
OrgKey = tuple[str, str]


class RecordsMixin(IdempotencyMixin):
    """`AgentRecords`, `PhoneNumberRecords`, `WebhookRecords`."""

    _agents: _OrgRecords
    _numbers: _OrgRecords
    _webhooks: _OrgRecords
    _events: JournaledTable
    _hook_events: dict[OrgKey, dict[str, int]]

    # -- agents ------------------------------------------------------------------------------
    def add_agent(self, agent: Agent) -> None:
        with self._writing():
            self._org_doc_id(agent["organization_id"])
            with self._journal.transaction():
                doc_id = self._agents.add(agent)
                marked = self._mark_claim(record_kinds.AGENT.name, agent["agent_id"])
            self._agents.indexed(agent, doc_id)
            self._index_mark(marked)

    def list_agents(self, organization_id: str) -> list[Agent]:
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
            with self._journal.transaction():
                doc_id = self._numbers.add(number)
                marked = self._mark_claim(record_kinds.PHONE_NUMBER.name, number["phone_number"])
            self._numbers.indexed(number, doc_id)
            self._index_mark(marked)

    def list_phone_numbers(self, organization_id: str) -> list[PhoneNumber]:
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
            with self._journal.transaction():
                doc_id = self._webhooks.add(webhook)
                marked = self._mark_claim(record_kinds.WEBHOOK.name, webhook["id"])
            self._webhooks.indexed(webhook, doc_id)
            self._index_mark(marked)

    def list_webhooks(self, organization_id: str) -> list[Webhook]:
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
            events = self._hook_events.get((organization_id, webhook_id), {})
            with self._journal.transaction():
                self._webhooks.table.remove(doc_ids=[doc_id])
                if events:
                    self._events.remove(doc_ids=list(events.values()))
                for agent in agents.without_webhook(self._agents.all(organization_id), webhook_id):
                    self._agents.replace(agent)
            # Indexes change only once the transaction is written.
            del self._webhooks.index[organization_id][webhook_id]
            self._hook_events.pop((organization_id, webhook_id), None)
            return _copy(old)


class _OrgRecords:
    """A table of records that each belong to one organization and are found by an id of
    their own (`key`), with its index. The store's lock is held by the caller."""

    def __init__(self, table: JournaledTable, kind: RecordKind) -> None:
        self.table, self.key = table, kind.key
        self.not_found, self.duplicate = kind.not_found, kind.duplicate
        self.index: dict[str, dict[str, int]] = {}  # organization -> record id -> doc id
        for doc in table.all():
            self.index.setdefault(doc["organization_id"], {})[doc[self.key]] = doc.doc_id

    def add(self, record: Mapping[str, Any]) -> int:
        """Insert `record`; `duplicate(key)` if its organization has one with its key. Not
        indexed yet: `indexed` once the journal transaction holding it is written."""
        if self.exists(record["organization_id"], record[self.key]):
            raise self.duplicate(record[self.key])
        return self.table.insert(_copy(record))

    def indexed(self, record: Mapping[str, Any], doc_id: int) -> None:
        """Index `record`, inserted (`add`) as document `doc_id`."""
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

    def replace(self, record: Mapping[str, Any]) -> None:
        """Put `record` in place of the stored one with its organization and key."""
        doc_id, _ = self.stored(record["organization_id"], record[self.key])
        self.table.replace(doc_id, _copy(record))

    def remove(self, organization_id: str, key: str) -> dict[str, Any]:
        doc_id, old = self.stored(organization_id, key)
        self.table.remove(doc_ids=[doc_id])
        del self.index[organization_id][key]
        return _copy(old)
