"""The records that each belong to one organization and are found by an id of their own
(agents, phone numbers, webhooks; batch calls too, see batches.py): one table each, read
and written alike (`_Kind`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from psycopg import sql

from calls_server.domain import agents, record_kinds
from calls_server.domain.agents import Agent
from calls_server.domain.phone_numbers import PhoneNumber
from calls_server.domain.record_kinds import RecordKind
from calls_server.domain.webhooks import Webhook
from calls_server.storage.postgres.accounts import _require_organization
from calls_server.storage.postgres.documents import _copy, _json
from calls_server.storage.postgres.idempotency import _mark_claim
from calls_server.storage.postgres.pool import Connection, Connections


@dataclass(frozen=True)
class _Kind:
    """A table of records of one kind (`of`), each found by its organization and an id of
    its own (`column`)."""

    table: str
    column: str
    of: RecordKind


_AGENTS = _Kind("agents", "agent_id", record_kinds.AGENT)
_NUMBERS = _Kind("phone_numbers", "phone_number", record_kinds.PHONE_NUMBER)
_WEBHOOKS = _Kind("webhooks", "webhook_id", record_kinds.WEBHOOK)


# The key (with the organization's hash) of the advisory lock that serializes adding an
# organization's webhooks: their number is capped.
WEBHOOK_LOCK = 0x57424B53  # "WBKS"


class RecordsMixin(Connections):
    """`AgentRecords`, `PhoneNumberRecords`, `WebhookRecords`, over the generic records of
    a kind (`_add_record`, `_records`, ...)."""

    # -- agents ----------------------------------------------------------------------------
    def add_agent(self, agent: Agent) -> None:
        """Store a new agent of an existing organization. Raises OrganizationNotFound."""
        self._add_record(_AGENTS, agent)

    def list_agents(self, organization_id: str) -> list[Agent]:
        """The organization's agents, oldest first."""
        return self._records(_AGENTS, organization_id)

    def get_agent(self, organization_id: str, agent_id: str) -> Agent:
        """The agent. Raises AgentNotFound, also for another organization's."""
        return self._record(_AGENTS, organization_id, agent_id)

    def change_agent(
        self, organization_id: str, agent_id: str, change: Callable[[Agent], Agent]
    ) -> Agent:
        """Replace the agent by `change(agent)` atomically. Raises AgentNotFound."""
        return self._change_record(_AGENTS, organization_id, agent_id, change)

    def delete_agent(self, organization_id: str, agent_id: str) -> Agent:
        """Remove the agent and return it. Raises AgentNotFound."""
        return self._delete_record(_AGENTS, organization_id, agent_id)

    # -- phone numbers -----------------------------------------------------------------------
    def add_phone_number(self, number: PhoneNumber) -> None:
        """Store a new number of an existing organization. Raises DuplicateId if the
        organization has it already."""
        self._add_record(_NUMBERS, number)

    def list_phone_numbers(self, organization_id: str) -> list[PhoneNumber]:
        """The organization's numbers, oldest first."""
        return self._records(_NUMBERS, organization_id)

    def get_phone_number(self, organization_id: str, phone_number: str) -> PhoneNumber:
        """The number. Raises PhoneNumberNotFound, also for another organization's."""
        return self._record(_NUMBERS, organization_id, phone_number)

    def change_phone_number(
        self,
        organization_id: str,
        phone_number: str,
        change: Callable[[PhoneNumber], PhoneNumber],
    ) -> PhoneNumber:
        """Replace the number by `change(number)` atomically. Raises PhoneNumberNotFound."""
        return self._change_record(_NUMBERS, organization_id, phone_number, change)

    def delete_phone_number(self, organization_id: str, phone_number: str) -> PhoneNumber:
        """Remove the number and return it. Raises PhoneNumberNotFound."""
        return self._delete_record(_NUMBERS, organization_id, phone_number)

    # -- webhooks --------------------------------------------------------------------------
    def add_webhook(self, webhook: Webhook, check: Callable[[int], None] | None = None) -> None:
        """Store a new webhook of an existing organization (after `check`, if given, passes
        the organization's count of webhooks). Raises OrganizationNotFound."""
        if check is None:
            self._add_record(_WEBHOOKS, webhook)
            return
        organization_id = webhook["organization_id"]

        def count_and_check(conn: Connection) -> None:
            # One count-and-insert at a time per organization, until the commit: the count
            # checked stays true (concurrent creates cannot both pass the cap).
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (WEBHOOK_LOCK, organization_id)
            )
            counted = conn.execute(
                "SELECT count(*) FROM webhooks WHERE organization_id = %s", (organization_id,)
            ).fetchone()
            assert counted is not None  # an aggregate always answers a row
            check(counted[0])

        self._add_record(_WEBHOOKS, webhook, count_and_check)

    def list_webhooks(self, organization_id: str) -> list[Webhook]:
        """The organization's webhooks, oldest first."""
        return self._records(_WEBHOOKS, organization_id)

    def get_webhook(self, organization_id: str, webhook_id: str) -> Webhook:
        """The webhook. Raises WebhookNotFound, also for another organization's."""
        return self._record(_WEBHOOKS, organization_id, webhook_id)

    def change_webhook(
        self, organization_id: str, webhook_id: str, change: Callable[[Webhook], Webhook]
    ) -> Webhook:
        """Replace the webhook by `change(webhook)` atomically. Raises WebhookNotFound."""
        return self._change_record(_WEBHOOKS, organization_id, webhook_id, change)

    def delete_webhook(
        self,
        organization_id: str,
        webhook_id: str,
        check: Callable[[Webhook], None] | None = None,
    ) -> Webhook:
        """Remove the webhook, its events and its assignments to agents, and return it
        (after `check`, if given, passes). Raises WebhookNotFound."""
        with self._transaction() as conn:
            old = _locked(conn, _WEBHOOKS, organization_id, webhook_id)
            if check is not None:
                check(_copy(old))
            conn.execute(
                "DELETE FROM webhooks WHERE organization_id = %s AND webhook_id = %s",
                (organization_id, webhook_id),
            )
            conn.execute(
                "DELETE FROM webhook_events WHERE organization_id = %s AND webhook_id = %s",
                (organization_id, webhook_id),
            )
            # Locked in one order (seq), as every change of an agent locks only its own row.
            rows = conn.execute(
                "SELECT doc FROM agents WHERE organization_id = %s ORDER BY seq FOR UPDATE",
                (organization_id,),
            ).fetchall()
            for agent in agents.without_webhook([row[0] for row in rows], webhook_id):
                conn.execute(
                    "UPDATE agents SET doc = %s::jsonb"
                    " WHERE organization_id = %s AND agent_id = %s",
                    (_json(agent), organization_id, agent["agent_id"]),
                )
        return old

    # -- records of one organization (agents, phone numbers, webhooks) ---------------------------
    def _add_record(
        self,
        kind: _Kind,
        record: Mapping[str, Any],
        check: Callable[[Connection], None] | None = None,
    ) -> None:
        """Insert `record`, after `check(conn)`, if given, in the same transaction."""
        organization_id, key = record["organization_id"], record[kind.of.key]
        with self._transaction() as conn:
            _require_organization(conn, organization_id)
            if check is not None:
                check(conn)
            inserted = conn.execute(
                sql.SQL(
                    "INSERT INTO {table} (organization_id, {column}, doc)"
                    " VALUES (%s, %s, %s::jsonb) ON CONFLICT DO NOTHING RETURNING 1"
                ).format(table=sql.Identifier(kind.table), column=sql.Identifier(kind.column)),
                (organization_id, key, _json(record)),
            ).fetchone()
            if inserted is None:
                raise kind.of.duplicate(key)
            _mark_claim(conn, kind.of.name, key)

    def _records(self, kind: _Kind, organization_id: str) -> list[dict[str, Any]]:
        with self._reading() as conn:
            rows = conn.execute(
                sql.SQL("SELECT doc FROM {table} WHERE organization_id = %s ORDER BY seq").format(
                    table=sql.Identifier(kind.table)
                ),
                (organization_id,),
            ).fetchall()
        return [cast(dict[str, Any], row[0]) for row in rows]

    def _record(self, kind: _Kind, organization_id: str, key: str) -> dict[str, Any]:
        with self._reading() as conn:
            return _locked(conn, kind, organization_id, key, lock=False)

    def _change_record(
        self,
        kind: _Kind,
        organization_id: str,
        key: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        with self._transaction() as conn:
            changed = change(_locked(conn, kind, organization_id, key))
            conn.execute(
                sql.SQL(
                    "UPDATE {table} SET doc = %s::jsonb"
                    " WHERE organization_id = %s AND {column} = %s"
                ).format(table=sql.Identifier(kind.table), column=sql.Identifier(kind.column)),
                (_json(changed), organization_id, key),
            )
        return changed

    def _delete_record(self, kind: _Kind, organization_id: str, key: str) -> dict[str, Any]:
        with self._transaction() as conn:
            row = conn.execute(
                sql.SQL(
                    "DELETE FROM {table} WHERE organization_id = %s AND {column} = %s RETURNING doc"
                ).format(table=sql.Identifier(kind.table), column=sql.Identifier(kind.column)),
                (organization_id, key),
            ).fetchone()
            if row is None:
                raise kind.of.not_found(organization_id, key)
        return cast(dict[str, Any], row[0])


def _locked(
    conn: Connection, kind: _Kind, organization_id: str, key: str, lock: bool = True
) -> dict[str, Any]:
    """The stored record (locked until the transaction ends, if `lock`)."""
    row = conn.execute(
        sql.SQL(
            "SELECT doc FROM {table} WHERE organization_id = %s AND {column} = %s{lock}"
        ).format(
            table=sql.Identifier(kind.table),
            column=sql.Identifier(kind.column),
            lock=sql.SQL(" FOR UPDATE" if lock else ""),
        ),
        (organization_id, key),
    ).fetchone()
    if row is None:
        raise kind.of.not_found(organization_id, key)
    return cast(dict[str, Any], row[0])
