"""The outbox: the webhook events a change of a call owes, inserted in its transaction
(`_record_events`), and their delivery's bookkeeping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from psycopg import sql

from calls_server.domain import agents, webhooks
from calls_server.domain.calls import Call
from calls_server.domain.errors import WebhookEventNotFound, WebhookNotFound
from calls_server.domain.webhooks import Webhook, WebhookEvent
from calls_server.storage.interface import EventChange, EventForget, EventListener, EventSource
from calls_server.storage.postgres.documents import _copy, _json
from calls_server.storage.postgres.pool import Connection, Connections
from calls_server.storage.postgres.records import _WEBHOOKS, _locked
from calls_server.storage.postgres_presence import CHANNEL, Presence


class OutboxMixin(Connections):
    """`Outbox`: the table webhook_events."""

    _event_source: EventSource | None
    _presence: Presence

    def record_webhook_events(
        self,
        source: EventSource,
        listener: EventListener,
        forget: EventForget = lambda partitions: None,
    ) -> None:
        """From now on, record with every change of a call, in its transaction, the events
        `source` says it owes; tell `listener` of every pending event of the partitions
        this process delivers (its share of those the processes sharing the database
        deliver), shortly after the commit that made it pending, whichever process made it;
        `forget` those it gives up or loses (see postgres_presence)."""
        self._event_source = source
        self._presence.deliver(listener, forget)

    def pending_webhook_events(self) -> list[WebhookEvent]:
        """Every organization's pending events, in the order they were recorded."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT doc FROM webhook_events WHERE status = 'pending' ORDER BY seq"
            ).fetchall()
        return [cast(WebhookEvent, row[0]) for row in rows]

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
        """`limit` (None: all) of the webhook's events from `offset`, newest first, only those
        in `status`, recorded at or after `since` (Unix ms) and of the call `call_id` if
        given, and how many match. Raises WebhookNotFound."""
        clauses = [sql.SQL("organization_id = %s AND webhook_id = %s")]
        params: list[Any] = [organization_id, webhook_id]
        if status is not None:
            clauses.append(sql.SQL("status = %s"))
            params.append(status)
        if since is not None:
            clauses.append(sql.SQL("created_at >= %s"))
            params.append(since)
        if call_id is not None:
            clauses.append(sql.SQL("doc->>'call_id' = %s"))
            params.append(call_id)
        where = sql.SQL(" AND ").join(clauses)
        with self._transaction(snapshot=True) as conn:  # count and page agree
            _locked(conn, _WEBHOOKS, organization_id, webhook_id, lock=False)
            counted = conn.execute(
                sql.SQL("SELECT count(*) FROM webhook_events WHERE {}").format(where), params
            ).fetchone()
            assert counted is not None  # an aggregate always answers a row
            rows = conn.execute(
                sql.SQL(
                    "SELECT doc FROM webhook_events WHERE {} ORDER BY seq DESC OFFSET %s LIMIT %s"
                ).format(where),
                [*params, offset, limit or None],  # no limit (or 0, as embedded): all
            ).fetchall()
        return [cast(WebhookEvent, row[0]) for row in rows], int(counted[0])

    def get_webhook_event(
        self, organization_id: str, webhook_id: str, event_id: str
    ) -> WebhookEvent:
        """The event. Raises WebhookNotFound or WebhookEventNotFound."""
        with self._transaction(snapshot=True) as conn:  # a read: its COMMIT decides nothing
            return self._event(conn, organization_id, webhook_id, event_id, lock=False)

    def get_webhooks_with_events(
        self, keys: Sequence[tuple[str, str, str]]
    ) -> list[tuple[Webhook | None, WebhookEvent | None]]:
        """For each key, the webhook and its event (None for either that does not exist),
        each organization's read in one transaction: a webhook, then its events in one
        statement."""
        wanted: dict[str, dict[str, list[str]]] = {}  # organization -> webhook -> events
        for organization_id, webhook_id, event_id in keys:
            wanted.setdefault(organization_id, {}).setdefault(webhook_id, []).append(event_id)
        hooks: dict[tuple[str, str], Webhook | None] = {}
        events: dict[tuple[str, str, str], WebhookEvent] = {}
        for organization_id, by_webhook in wanted.items():
            with self._transaction(snapshot=True) as conn:
                for webhook_id, event_ids in by_webhook.items():
                    try:
                        hook = _locked(conn, _WEBHOOKS, organization_id, webhook_id, lock=False)
                    except WebhookNotFound:
                        hooks[organization_id, webhook_id] = None
                        continue
                    hooks[organization_id, webhook_id] = hook
                    rows = conn.execute(
                        "SELECT event_id, doc FROM webhook_events WHERE organization_id = %s"
                        " AND webhook_id = %s AND event_id = ANY(%s)",
                        (organization_id, webhook_id, event_ids),
                    ).fetchall()
                    for event_id, doc in rows:
                        events[organization_id, webhook_id, event_id] = cast(WebhookEvent, doc)
        return [
            (hooks[key[:2]], events.get(key) if hooks[key[:2]] is not None else None)
            for key in keys
        ]

    def change_webhook_event(
        self,
        organization_id: str,
        webhook_id: str,
        event_id: str,
        change: Callable[[WebhookEvent], WebhookEvent],
    ) -> WebhookEvent:
        """Replace the event by `change(event)` atomically and return the new record."""
        with self._transaction() as conn:
            old = self._event(conn, organization_id, webhook_id, event_id, lock=True)
            return _changed(conn, (organization_id, webhook_id, event_id), old, change)

    def change_webhook_events(self, changes: Sequence[EventChange]) -> list[WebhookEvent | None]:
        """Each change as `change_webhook_event` makes it, each organization's in one
        transaction; None for an event that no longer exists."""
        by_organization: dict[str, list[int]] = {}
        for at, (organization_id, *_) in enumerate(changes):
            by_organization.setdefault(organization_id, []).append(at)
        changed: list[WebhookEvent | None] = [None] * len(changes)
        for organization_id, places in by_organization.items():
            # Rows locked in one order (webhook, event): two batches never deadlock.
            places.sort(key=lambda at: changes[at][1:3])
            with self._transaction() as conn:
                for at in places:
                    _, webhook_id, event_id, change = changes[at]
                    row = conn.execute(
                        "SELECT doc FROM webhook_events"
                        " WHERE organization_id = %s AND webhook_id = %s AND event_id = %s"
                        " FOR UPDATE",
                        (organization_id, webhook_id, event_id),
                    ).fetchone()
                    if row is not None:  # None: deleted (with its webhook, or pruned)
                        key = (organization_id, webhook_id, event_id)
                        changed[at] = _changed(conn, key, cast(WebhookEvent, row[0]), change)
        return changed

    def prune_webhook_events(self, settled_before: int, organization_id: str | None = None) -> int:
        """Remove events delivered or given up before then (Unix ms), of every organization
        or of `organization_id` only (one on a test clock); how many were removed."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM webhook_events WHERE settled_at < %s"
                " AND (%s::text IS NULL OR organization_id = %s)",
                (settled_before, organization_id, organization_id),
            )
            return max(0, cursor.rowcount)

    def _event(
        self, conn: Connection, organization_id: str, webhook_id: str, event_id: str, lock: bool
    ) -> WebhookEvent:
        _locked(conn, _WEBHOOKS, organization_id, webhook_id, lock=False)
        row = conn.execute(
            "SELECT doc FROM webhook_events"
            " WHERE organization_id = %s AND webhook_id = %s AND event_id = %s"
            + (" FOR UPDATE" if lock else ""),
            (organization_id, webhook_id, event_id),
        ).fetchone()
        if row is None:
            raise WebhookEventNotFound(event_id)
        return cast(WebhookEvent, row[0])


def _changed(
    conn: Connection,
    key: tuple[str, str, str],
    old: WebhookEvent,
    change: Callable[[WebhookEvent], WebhookEvent],
) -> WebhookEvent:
    """Replace the event `old` (its organization, webhook and event ids: `key`; locked in
    `conn`'s transaction) by `change(old)`; the new record. A change that queues it again,
    or makes it due sooner, tells the delivering process (at the commit)."""
    changed = change(_copy(old))
    queued = changed["status"] == "pending" and (
        old["status"] != "pending" or changed["next_attempt_at"] < old["next_attempt_at"]
    )
    conn.execute(
        "UPDATE webhook_events SET doc = %s::jsonb, status = %s, settled_at = %s,"
        " queued_tx = CASE WHEN %s THEN pg_current_xact_id() ELSE queued_tx END"
        " WHERE organization_id = %s AND webhook_id = %s AND event_id = %s",
        (
            _json(changed),
            changed["status"],
            webhooks.settled_at(changed),
            queued,
            *key,
        ),
    )
    if queued:
        conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
    return changed


def _record_events(
    conn: Connection, source: EventSource | None, old: Call | None, new: Call | None
) -> None:
    """Insert the events a change of a call owes (inside its transaction), and notify
    the delivering process (told at the commit, whichever process it is). `source`: the
    store's event source (None: none recorded)."""
    if source is None:
        return
    call: Call = new or old  # type: ignore[assignment]
    organization_id = call["organization_id"]
    hooks = [
        cast(Webhook, row[0])
        for row in conn.execute(
            "SELECT doc FROM webhooks WHERE organization_id = %s ORDER BY seq",
            (organization_id,),
        ).fetchall()
    ]
    if not hooks:  # nothing can be owed: no need to read the agent
        return
    agent = conn.execute(
        "SELECT doc FROM agents WHERE organization_id = %s AND agent_id = %s",
        (organization_id, call.get("agent_id")),
    ).fetchone()
    owed = source(old, new, hooks, agents.webhook_ids(None if agent is None else agent[0]))
    if not owed:
        return
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO webhook_events (organization_id, webhook_id, event_id, status,"
            " created_at, settled_at, doc) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)",
            [
                (
                    event["organization_id"],
                    event["webhook_id"],
                    event["event_id"],
                    event["status"],
                    event["created_at"],
                    webhooks.settled_at(event),
                    _json(event),
                )
                for event in owed
            ],
        )
    conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
