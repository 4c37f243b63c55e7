"""The PostgreSQL store: the `Store` interface over a PostgreSQL database (psycopg 3).

- Each method is one transaction on a connection of a bounded pool; a change function runs
  inside it on the row read with `SELECT ... FOR UPDATE`, so concurrent changes of a record
  (from any number of processes) queue up instead of losing one another, and a function
  that raises rolls everything back.
- The webhook events a change of a call owes are inserted in its transaction (the
  outbox): both are committed, or neither. The listener is told after the commit.
- Records are JSONB documents; what listing filters and sorts on is also kept in real,
  indexed columns (storage/migrations/0001_initial.sql), so that a page is read off an
  index in order and never by sorting the organization's calls.
- The schema is kept by numbered migrations, applied on open under an advisory lock.
- A database that cannot be reached, a connection lost or a pool with no free connection
  within `pool_timeout` answers 503 (`StoreUnavailable`) naming the cause; connections
  time out (`connect_timeout`) and so do statements (`statement_timeout`, the server's).
  A server that stopped (SIGSTOP, a hung host) enforces no timeout and its kernel still
  acknowledges what is sent, so each store call is also bounded on this side: past
  `statement_timeout` + `CALL_MARGIN` (`ready_timeout` for `check_ready`) its connection
  is cut (`_Watchdog`), and TCP keepalives and `tcp_user_timeout` end a connection whose
  peer went silent.
- A change whose connection is lost (or cut) after its COMMIT, or its single autocommit
  statement, was sent may have been committed: that is `OutcomeUnknown` (a 503 of its
  own), never the plain 503 that says nothing was written.
- A connection the database dropped (a restart, `pg_terminate_backend`) is replaced: when
  handed out if its end has been heard of; otherwise a read (`READS`) that loses it runs
  once more on a fresh one, and a transaction that loses it at its BEGIN (nothing of it
  sent) begins once more on a fresh one. A write that loses its connection later is a
  503, never run again: it may have been committed.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import random
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
import psycopg
from psycopg import IsolationLevel, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from calls_server.domain import agents, batches, calls, webhooks
from calls_server.domain.agents import Agent
from calls_server.domain.batches import Batch, Task
from calls_server.domain.calls import Call
from calls_server.domain.errors import (
    AgentNotFound,
    ApiKeyNotFound,
    BadRequest,
    BatchNotFound,
    CallNotFound,
    DuplicateId,
    OrganizationNotFound,
    OutcomeUnknown,
    PhoneNumberNotFound,
    StoreUnavailable,
    TaskNotFound,
    WebhookEventNotFound,
    WebhookNotFound,
)
from calls_server.domain.idempotency import IdempotentAnswer
from calls_server.domain.keys import ApiKey, Organization
from calls_server.domain.listing import RANGE_FIELDS, SORT_FIELDS, CallPage, CallQuery
from calls_server.domain.phone_numbers import PhoneNumber
from calls_server.domain.quotas import Quota
from calls_server.domain.webhooks import Webhook, WebhookEvent
from calls_server.storage.interface import (
    UNDER_CLAIM,
    DatabaseNotEmpty,
    EventListener,
    EventSource,
    TaskChange,
)
from calls_server.storage.postgres_presence import _LIVE as LIVE_PROCESSES
from calls_server.storage.postgres_presence import CHANNEL, PRESENCE, Presence

Connection = psycopg.Connection[TupleRow]

MIGRATIONS = Path(__file__).with_name("migrations")
# The key of the advisory lock migrations hold: one process migrates, the others wait and
# then find nothing left to apply.
MIGRATION_LOCK = 0x63616C6C73  # "calls"

# Call fields kept as columns besides the document (see 0001_initial.sql).
_CALL_COLUMNS = (
    "call_status",
    "call_type",
    "direction",
    "agent_id",
    "created_at",
    "updated_at",
    "start_timestamp",
    "end_timestamp",
    "call_duration",
    "scheduled_timestamp",
)
_EQUALITY_FIELDS = ("call_status", "call_type", "direction", "agent_id")
# How long the cause found for a pool timeout is reused: under an outage every waiting
# request would otherwise probe the database once more.
_DIAGNOSIS_KEPT = 1.0
# Seconds a store call may wait for the database beyond `statement_timeout` (which the
# server enforces per statement, if it runs at all) before this side cuts its connection.
CALL_MARGIN = 5.0
# How often the watchdog looks for store calls past their bound (seconds): its precision.
_WATCH_EVERY = 0.25
# Libpq's TCP settings: a peer silent for this long (no ACK of what was sent, or no answer
# to keepalives) ends the connection, whatever the call was doing.
_TCP_USER_TIMEOUT_MS = 20_000
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5}


@dataclass(frozen=True)
class _Kind:
    """A table of records that each belong to one organization and are found by an id of
    their own: `column` in the table, `field` in the document."""

    table: str
    column: str
    field: str
    name: str  # of one record, for people
    not_found: Callable[[str, str], Exception]  # (organization, id) -> the error
    duplicate: Callable[[str], Exception]  # id -> the error


_AGENTS = _Kind(
    "agents",
    "agent_id",
    "agent_id",
    "agent",
    lambda org, key: AgentNotFound(key, org),
    lambda key: DuplicateId(f"An agent with ID '{key}' already exists"),
)
_NUMBERS = _Kind(
    "phone_numbers",
    "phone_number",
    "phone_number",
    "phone number",
    lambda _, key: PhoneNumberNotFound(key),
    lambda key: DuplicateId(
        f"Phone number '{key}' already exists", message="Phone number already exists"
    ),
)
_WEBHOOKS = _Kind(
    "webhooks",
    "webhook_id",
    "id",
    "webhook",
    lambda _, key: WebhookNotFound(key),
    lambda key: DuplicateId(f"A webhook with ID '{key}' already exists"),
)


_BATCHES = _Kind(
    "batches",
    "batch_call_id",
    "batch_call_id",
    "batch call",
    lambda _, key: BatchNotFound(key),
    lambda key: DuplicateId(f"A batch call with ID '{key}' already exists"),
)
# The key (with the organization's hash) of the advisory lock that serializes changes of an
# organization's batches: its concurrency cap counts calls across them.
BATCH_LOCK = 0x42415443  # "BATC"
# The key (with the organization's hash) of the advisory lock that serializes adding an
# organization's webhooks: their number is capped.
WEBHOOK_LOCK = 0x57424B53  # "WBKS"


# The store's methods that only read (the others write). One that fails because the
# database dropped its connection is run once more, on a fresh connection: it changed
# nothing, and nothing it read was answered yet.
READS = frozenset(
    {
        "get_call",
        "list_calls",
        "call_statuses",
        "scheduled_calls",
        "abandoned_sandbox_calls",
        "get_organization",
        "find_api_key",
        "list_api_keys",
        "agents",
        "get_agent",
        "phone_numbers",
        "get_phone_number",
        "webhooks",
        "get_webhook",
        "get_batch",
        "batches",
        "batch_tasks",
        "active_batches",
        "pending_webhook_events",
        "list_webhook_events",
        "get_webhook_event",
        "find_idempotent",
        "check_ready",
        "record_counts",
        "live_processes",
        "counts",
    }
)

_Class = TypeVar("_Class", bound=type)


def _reads_run_again_once(cls: _Class) -> _Class:
    """`cls` with each method of `READS` run once more when it failed on a connection the
    database had dropped."""
    for name in READS:
        setattr(cls, name, _again_once_if_dropped(getattr(cls, name)))
    return cls


def _again_once_if_dropped(read: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(read)
    def again_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return read(self, *args, **kwargs)
        except StoreUnavailable as e:
            if not _connection_lost(e.__cause__):
                raise
        return read(self, *args, **kwargs)  # on another connection: the pool dropped that one

    return again_once


@_reads_run_again_once
class PostgresStore:
    """The `storage.interface.Store` of a PostgreSQL database (migrated on open)."""

    reads_wait = True  # reads are each a round trip to the database

    def __init__(
        self,
        url: str,
        quota: Quota | None = None,
        min_connections: int = 1,
        max_connections: int = 10,
        pool_timeout: float = 5.0,
        *,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        ready_timeout: float = 2.0,
    ) -> None:
        """Open a pool of connections to `url` (a URI or key=value conninfo) and bring the
        schema up to date. Raises StoreUnavailable if the database cannot be reached within
        `pool_timeout` seconds. A store call answers within `statement_timeout` +
        CALL_MARGIN seconds (plus `pool_timeout` for a connection), `check_ready` within
        `ready_timeout` (each, plus a probe of `connect_timeout` if no connection is free)."""
        self._url = url
        self._call_timeout = statement_timeout + CALL_MARGIN
        self._ready_timeout = ready_timeout
        self._watchdog = _Watchdog()
        self._write_observer: Callable[[float], None] | None = None
        self._quota = quota or Quota()
        # Usage exact (serialized per organization) only when a quota needs it.
        self._limited = bool(self._quota.max_calls or self._quota.max_bytes)
        self._pool_timeout = pool_timeout
        self._max_connections = max_connections
        self._event_source: EventSource | None = None
        self._diagnosis_lock = threading.Lock()
        self._diagnosis: tuple[float, str] | None = None
        options = conninfo_to_dict(url).get("options")  # kept: ours are added to the URL's
        self._connect_kwargs: dict[str, Any] = {
            # Transactions are explicit (`conn.transaction()`): a single read needs none.
            "autocommit": True,
            # libpq counts whole seconds, at least 2.
            "connect_timeout": max(2, math.ceil(connect_timeout)),
            "options": " ".join(
                filter(
                    None,
                    [str(options or ""), f"-c statement_timeout={int(statement_timeout * 1000)}"],
                )
            ),
            "application_name": "calls-server",
            **_KEEPALIVES,
            "tcp_user_timeout": _TCP_USER_TIMEOUT_MS,
        }
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            url,
            min_size=min_connections,
            max_size=max_connections,
            timeout=pool_timeout,
            kwargs=self._connect_kwargs,
            configure=_configure,
            # A connection the server dropped (a restart, a failover) is replaced when it
            # is handed out, instead of failing the request that gets it.
            check=_check_connection,
            open=False,
            name="calls-server",
        )
        try:
            with self._unavailable():
                self._pool.open(wait=True, timeout=pool_timeout)
                with self._pool.connection() as conn:
                    migrate(conn)
                self._presence = Presence(
                    lambda: psycopg.connect(self._url, **self._connect_kwargs)
                )
        except BaseException:
            self._pool.close()
            self._watchdog.close()
            raise

    # -- calls -----------------------------------------------------------------------------
    def add_call(self, call: Call) -> None:
        """Store a new call. Raises DuplicateId if its call_id exists in its organization."""
        org = call["organization_id"]
        data = _call_json(call)
        stored = _loads(data)  # the call as stored, for the event source
        values = (org, call["call_id"], *_call_values(stored, data))
        if not self._limited and UNDER_CLAIM.get() is None:
            # The common case, a statement that is its own transaction (no BEGIN and COMMIT
            # round trips): the call and its usage, unless events may be owed (the
            # organization has webhooks): then nothing, and the transaction below.
            with self._writing() as conn:
                row = conn.execute(
                    _ADD_CALL_ALONE,
                    (self._event_source is not None, org, *values, _stripe()),
                ).fetchone()
            assert row is not None  # the statement's SELECT answers one row
            inserted, deferred = row
            if not deferred:
                if not inserted:
                    raise _duplicate_call(call["call_id"])
                return
        with self._transaction() as conn:
            inserted = conn.execute(_ADD_CALL, values).fetchone()
            if inserted is None:
                raise _duplicate_call(call["call_id"])
            held = _use(conn, org, 1, len(data), exact=self._limited)
            if held is not None:
                self._quota.check(*held)
            self._record_events(conn, None, stored)
            _mark_claim(conn, "call", call["call_id"])

    def get_call(self, organization_id: str, call_id: str) -> Call:
        """The call. Raises CallNotFound, also when it belongs to another organization."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT doc FROM calls WHERE organization_id = %s AND call_id = %s",
                (organization_id, call_id),
            ).fetchone()
        if row is None:
            raise CallNotFound(call_id)
        return cast(Call, row[0])

    def change_call(
        self, organization_id: str, call_id: str, change: Callable[[Call], Call]
    ) -> Call:
        """Replace the call by `change(call)` atomically and return the new record."""
        with self._transaction() as conn:
            old, old_size = self._locked_call(conn, organization_id, call_id)
            changed = change(_copy(old))
            data = _call_json(changed)
            new = _loads(data)
            conn.execute(
                "UPDATE calls SET doc = %s::jsonb, size = %s, call_status = %s, call_type = %s,"
                " direction = %s, agent_id = %s, created_at = %s, updated_at = %s,"
                " start_timestamp = %s, end_timestamp = %s, call_duration = %s,"
                " scheduled_timestamp = %s, search_parts = %s, search_text = %s,"
                " played_by = %s"
                " WHERE organization_id = %s AND call_id = %s",
                (*_call_values(new, data), organization_id, call_id),
            )
            grown = len(data) - old_size
            if grown:
                held = _use(conn, organization_id, 0, grown, exact=self._limited)
                if held is not None and grown > 0 and self._quota.max_bytes:
                    self._quota.check(*held)
            self._record_events(conn, old, new)
        return changed

    def delete_call(
        self, organization_id: str, call_id: str, check: Callable[[Call], None] | None = None
    ) -> Call:
        """Remove the call for good and return it (after `check`, if given, passes)."""
        with self._transaction() as conn:
            old, old_size = self._locked_call(conn, organization_id, call_id)
            if check is not None:
                check(_copy(old))
            conn.execute(
                "DELETE FROM calls WHERE organization_id = %s AND call_id = %s",
                (organization_id, call_id),
            )
            _use(conn, organization_id, -1, -old_size, exact=self._limited)
            self._record_events(conn, _copy(old), None)
        return old

    def list_calls(self, organization_id: str, query: CallQuery) -> CallPage:
        """One page of the organization's calls that match `query`, how many match, and the
        last one's position if more follow.

        The order is the sort field's value, then created_at, then seq (insertion), calls
        without a value last: read as two index scans, those with a value and then those
        without. A position is `[0, value, created_at, seq]` or `[1, created_at, seq]`; a
        cursor's page is the calls after it in that order (a keyset: no offset to skip)."""
        after = query.position()  # its shape checked there: [0, v, c, s] or [1, c, s]
        if query.sort_by not in SORT_FIELDS:
            raise BadRequest(f"Calls cannot be sorted by '{query.sort_by}'")
        where, params = _call_filters(organization_id, query)
        field = sql.Identifier(query.sort_by)
        with self._transaction(snapshot=True) as conn:  # count and page agree
            # Planned for the values at hand, never prepared: a generic plan, blind to how
            # many calls a filter matches, scanned the whole table (500 ms at 1M calls).
            counted = conn.execute(
                sql.SQL("SELECT count(*), count({field}) FROM calls WHERE {where}").format(
                    field=field, where=where
                ),
                params,
                prepare=False,
            ).fetchone()
            assert counted is not None  # an aggregate always answers a row
            total, with_value = counted
            scan = _Scan(conn, query, where, params)
            if after is None:
                # Page by number: the offset falls among the calls with a value, or after.
                rows = (
                    scan.with_value(None, query.offset, query.limit)
                    if (query.offset < with_value)
                    else []
                )
                if len(rows) < query.limit:
                    skip = max(0, query.offset - with_value)
                    rows += scan.without_value(None, skip, query.limit - len(rows))
                more = query.offset + len(rows) < total
            else:
                wanted = query.limit + 1  # one more tells whether another page follows
                rows = []
                if after[0] == 0:
                    rows = scan.with_value(after[1:], 0, wanted)
                if len(rows) < wanted:
                    rows += scan.without_value(after[1:] if after[0] == 1 else None, 0, wanted)
                more = len(rows) > query.limit
                rows = rows[: query.limit]
        position = None
        if more and rows:
            _, value, created_at, seq = rows[-1]
            position = [1, created_at, seq] if value is None else [0, value, created_at, seq]
        return CallPage([cast(Call, row[0]) for row in rows], total, position)

    def call_statuses(self, organization_id: str, call_ids: list[str]) -> dict[str, str]:
        if not call_ids:
            return {}
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT call_id, call_status FROM calls"
                " WHERE organization_id = %s AND call_id = ANY(%s)",
                (organization_id, call_ids),
            ).fetchall()
        return {str(call_id): str(status) for call_id, status in rows}

    def scheduled_calls(self, due_by: int) -> list[Call]:
        """Every organization's `scheduled` calls due at or before `due_by` (Unix seconds)."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT doc FROM calls WHERE call_status = 'scheduled'"
                " AND scheduled_timestamp <= %s"
                # Ties in code point order, as the embedded store's, whatever the collation.
                ' ORDER BY scheduled_timestamp, organization_id COLLATE "C", call_id COLLATE "C"',
                (due_by,),
            ).fetchall()
        return [cast(Call, row[0]) for row in rows]

    def abandoned_sandbox_calls(self) -> list[tuple[str, str, str]]:
        """(organization, call id, process) of every call under way whose sandbox player
        no longer serves the database; one statement, so that the players live are read
        after the calls' snapshot (a process present when a call it plays was committed
        is in `pg_locks` then, unless it has stopped)."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT organization_id, call_id, played_by FROM calls"
                " WHERE played_by IS NOT NULL AND played_by <> %s"
                f" AND played_by NOT IN (SELECT objid::text FROM ({LIVE_PROCESSES}) AS live)"
                ' ORDER BY organization_id COLLATE "C", call_id COLLATE "C"',
                (self.process_id, PRESENCE),
            ).fetchall()
        return [(org, call_id, process) for org, call_id, process in rows]

    def _locked_call(
        self, conn: Connection, organization_id: str, call_id: str
    ) -> tuple[Call, int]:
        """The stored call and its size, locked until the transaction ends."""
        row = conn.execute(
            "SELECT doc, size FROM calls WHERE organization_id = %s AND call_id = %s FOR UPDATE",
            (organization_id, call_id),
        ).fetchone()
        if row is None:
            raise CallNotFound(call_id)
        return cast(Call, row[0]), int(row[1])

    # -- organizations and API keys --------------------------------------------------------
    def add_organization(self, organization: Organization) -> None:
        """Store a new organization. Raises DuplicateId if its id exists."""
        organization_id = organization["organization_id"]
        with self._transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO organizations (organization_id, doc) VALUES (%s, %s::jsonb)"
                " ON CONFLICT (organization_id) DO NOTHING RETURNING 1",
                (organization_id, _json(organization)),
            ).fetchone()
            if inserted is None:
                raise DuplicateId(
                    f"An organization with ID '{organization_id}' already exists",
                    message="Organization already exists",
                )
            _mark_claim(conn, "organization", organization_id)

    def get_organization(self, organization_id: str) -> Organization:
        """The organization. Raises OrganizationNotFound."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT doc FROM organizations WHERE organization_id = %s", (organization_id,)
            ).fetchone()
        if row is None:
            raise OrganizationNotFound(organization_id)
        return cast(Organization, row[0])

    def add_api_key(self, key: ApiKey) -> None:
        """Store a new key of an existing organization. Raises OrganizationNotFound."""
        with self._transaction() as conn:
            _require_organization(conn, key["organization_id"])
            inserted = conn.execute(
                "INSERT INTO api_keys (organization_id, api_key_id, api_key, doc)"
                " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING RETURNING 1",
                (key["organization_id"], key["api_key_id"], key["api_key"], _json(key)),
            ).fetchone()
            if inserted is None:
                raise DuplicateId(f"An API key with ID '{key['api_key_id']}' already exists")
            _mark_claim(conn, "API key", key["api_key_id"])

    def find_api_key(self, api_key: str) -> ApiKey | None:
        """The key record whose public part is `api_key`, active or not, if any. Read from
        the database every time: a revocation holds at once in every process."""
        with self._reading() as conn:
            row = conn.execute("SELECT doc FROM api_keys WHERE api_key = %s", (api_key,)).fetchone()
        return None if row is None else cast(ApiKey, row[0])

    def list_api_keys(self, organization_id: str) -> list[ApiKey]:
        """The organization's keys, oldest first. Raises OrganizationNotFound."""
        with self._transaction(snapshot=True) as conn:  # a read: its COMMIT decides nothing
            _require_organization(conn, organization_id)
            rows = conn.execute(
                "SELECT doc FROM api_keys WHERE organization_id = %s ORDER BY seq",
                (organization_id,),
            ).fetchall()
        return [cast(ApiKey, row[0]) for row in rows]

    def change_api_key(
        self, organization_id: str, api_key_id: str, change: Callable[[ApiKey], ApiKey]
    ) -> ApiKey:
        """Replace the key by `change(key)` atomically. Raises ApiKeyNotFound."""
        with self._transaction() as conn:
            _require_organization(conn, organization_id)
            row = conn.execute(
                "SELECT doc FROM api_keys WHERE organization_id = %s AND api_key_id = %s"
                " FOR UPDATE",
                (organization_id, api_key_id),
            ).fetchone()
            if row is None:
                raise ApiKeyNotFound(api_key_id)
            changed = change(cast(ApiKey, row[0]))
            conn.execute(
                "UPDATE api_keys SET doc = %s::jsonb, api_key = %s"
                " WHERE organization_id = %s AND api_key_id = %s",
                (_json(changed), changed["api_key"], organization_id, api_key_id),
            )
        return changed

    # -- agents ------------------------------------------------------------------------------
    def add_agent(self, agent: Agent) -> None:
        """Store a new agent of an existing organization. Raises OrganizationNotFound."""
        self._add_record(_AGENTS, agent)

    def agents(self, organization_id: str) -> list[Agent]:
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

    def phone_numbers(self, organization_id: str) -> list[PhoneNumber]:
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

    def webhooks(self, organization_id: str) -> list[Webhook]:
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
                "SELECT agent_id, doc FROM agents WHERE organization_id = %s"
                " ORDER BY seq FOR UPDATE",
                (organization_id,),
            ).fetchall()
            for agent_id, agent in rows:
                if webhook_id in agents.webhook_ids(agent):
                    conn.execute(
                        "UPDATE agents SET doc = %s::jsonb"
                        " WHERE organization_id = %s AND agent_id = %s",
                        (_json(agents.unassigned(agent, [webhook_id])), organization_id, agent_id),
                    )
        return old

    # -- batch calls ---------------------------------------------------------------------------
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
                raise _BATCHES.duplicate(batch["batch_call_id"])
            _insert_tasks(conn, tasks)
            _mark_claim(conn, "batch call", batch["batch_call_id"])

    def get_batch(self, organization_id: str, batch_id: str) -> Batch:
        with self._reading() as conn:
            return _locked(conn, _BATCHES, organization_id, batch_id, lock=False)

    def batches(self, organization_id: str) -> list[Batch]:
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
        self, organization_id: str, batch_id: str, check: Callable[[Batch], None]
    ) -> Batch:
        with self._transaction() as conn:
            batch = _locked(conn, _BATCHES, organization_id, batch_id)
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

    # -- webhook events (the outbox) ---------------------------------------------------------
    def record_webhook_events(
        self,
        source: EventSource,
        listener: EventListener,
        forget: Callable[[], None] = lambda: None,
    ) -> None:
        """From now on, record with every change of a call, in its transaction, the events
        `source` says it owes; while this process delivers (one process of those sharing
        the database does), tell `listener` of every pending event, shortly after the
        commit that made it pending, whichever process made it (see postgres_presence)."""
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
    ) -> tuple[list[WebhookEvent], int]:
        """`limit` (None: all) of the webhook's events from `offset`, newest first, only those
        in `status` and recorded at or after `since` (Unix ms) if given, and how many match.
        Raises WebhookNotFound."""
        clauses = [sql.SQL("organization_id = %s AND webhook_id = %s")]
        params: list[Any] = [organization_id, webhook_id]
        if status is not None:
            clauses.append(sql.SQL("status = %s"))
            params.append(status)
        if since is not None:
            clauses.append(sql.SQL("created_at >= %s"))
            params.append(since)
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
            changed = change(_copy(old))
            queued = changed["status"] == "pending" and (
                old["status"] != "pending" or changed["next_attempt_at"] < old["next_attempt_at"]
            )  # queued again, or due sooner: the delivering process is told
            conn.execute(
                "UPDATE webhook_events SET doc = %s::jsonb, status = %s, settled_at = %s,"
                " queued_tx = CASE WHEN %s THEN pg_current_xact_id() ELSE queued_tx END"
                " WHERE organization_id = %s AND webhook_id = %s AND event_id = %s",
                (
                    _json(changed),
                    changed["status"],
                    webhooks.settled_at(changed),
                    queued,
                    organization_id,
                    webhook_id,
                    event_id,
                ),
            )
            if queued:
                conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return changed

    def prune_webhook_events(self, settled_before: int) -> int:
        """Remove events delivered or given up before then (Unix ms); how many were removed."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM webhook_events WHERE settled_at < %s", (settled_before,)
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

    def _record_events(self, conn: Connection, old: Call | None, new: Call | None) -> None:
        """Insert the events a change of a call owes (inside its transaction), and notify
        the delivering process (told at the commit, whichever process it is)."""
        source = self._event_source
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

    # -- idempotency keys ----------------------------------------------------------------------
    def find_idempotent(self, scope: str, key: str) -> IdempotentAnswer | None:
        """The answer kept for `key` in `scope`, if any (callers compare `expires_at`)."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT doc FROM idempotency_keys WHERE scope = %s AND key = %s", (scope, key)
            ).fetchone()
        return None if row is None else cast(IdempotentAnswer, row[0])

    def claim_idempotent(self, claim: IdempotentAnswer, now: int) -> IdempotentAnswer | None:
        """Record `claim` unless an unexpired record of its key exists (answered then):
        several processes may get the same key at once, and exactly one runs it. A claim
        marked `written` expires with the answer it stands for (`_mark_claim`)."""
        with self._transaction() as conn:
            taken = conn.execute(
                "INSERT INTO idempotency_keys AS k (scope, key, expires_at, doc)"
                " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (scope, key) DO UPDATE"
                " SET expires_at = excluded.expires_at, doc = excluded.doc"
                " WHERE k.expires_at <= %s RETURNING 1",
                (claim["scope"], claim["key"], claim["expires_at"], _json(claim), now),
            ).fetchone()
            if taken is not None:
                return None
            row = conn.execute(
                "SELECT doc FROM idempotency_keys WHERE scope = %s AND key = %s",
                (claim["scope"], claim["key"]),
            ).fetchone()
        assert row is not None  # the conflicting row, locked by the upsert until commit
        return cast(IdempotentAnswer, row[0])

    def release_idempotent(self, claim: IdempotentAnswer) -> None:
        """Remove `claim` if it is still the record of its key; if a record was added
        under it (see `UNDER_CLAIM`), mark it `ended` instead: a retry answers that."""
        mine = (
            " WHERE scope = %s AND key = %s AND doc->>'status' = %s"
            " AND (doc->>'created_at')::bigint = %s AND doc->>'fingerprint' = %s"
        )
        params = (
            claim["scope"],
            claim["key"],
            str(claim["status"]),
            claim["created_at"],
            claim["fingerprint"],
        )
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM idempotency_keys" + mine + " AND doc->'written' IS NULL", params
            )
            conn.execute(
                "UPDATE idempotency_keys SET doc = doc || '{\"ended\": true}'::jsonb"
                + mine
                + " AND doc->'written' IS NOT NULL",
                params,
            )

    def keep_idempotent(self, answer: IdempotentAnswer) -> None:
        """Keep `answer` (replacing one of the same scope and key), dropping the answers
        expired by its `created_at`. Committed, so durable, when it returns."""
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM idempotency_keys WHERE expires_at <= %s", (answer["created_at"],)
            )
            conn.execute(
                "INSERT INTO idempotency_keys (scope, key, expires_at, doc)"
                " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (scope, key)"
                " DO UPDATE SET expires_at = excluded.expires_at, doc = excluded.doc",
                (answer["scope"], answer["key"], answer["expires_at"], _json(answer)),
            )

    # -- durability ----------------------------------------------------------------------------
    def check_ready(self) -> None:
        """Return when the database answers; raise StoreUnavailable naming the cause."""
        with self._reading(self._ready_timeout) as conn:
            conn.execute("SELECT 1").fetchone()

    def wait_durable(self) -> None:
        """Nothing to wait for: every method returns once its transaction is committed."""

    # -- moving up from the embedded store ------------------------------------------------------
    def copy_from(self, records: Mapping[str, Sequence[Mapping[str, Any]]], replace: bool) -> None:
        """Store `records` (by kind, as `EmbeddedStore.export` answers them, each kind in
        its order) in one transaction, verifying the count of each kind. Raises
        DatabaseNotEmpty if the database holds records, unless `replace`: then they are
        removed first. Nothing is written if anything fails."""
        with self._transaction(bounded=False) as conn:
            conn.execute("SET LOCAL statement_timeout = 0")  # a large copy may take long
            held = _record_counts(conn)
            if any(held.values()) and not replace:
                raise DatabaseNotEmpty(
                    "the database holds records already ("
                    + ", ".join(f"{count} {kind}" for kind, count in held.items() if count)
                    + "); pass --replace to remove them first"
                )
            conn.execute(
                sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
                    sql.SQL(", ").join(map(sql.Identifier, [*_COPIED, "organization_usage"]))
                )
            )
            for kind, (columns, row) in _COPIED.items():
                statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(kind), sql.SQL(", ").join(map(sql.Identifier, columns))
                )
                with conn.cursor().copy(statement) as copy:
                    for record in records.get(kind, ()):
                        copy.write_row(row(record))
            conn.execute(
                "INSERT INTO organization_usage (organization_id, calls, bytes)"
                " SELECT organization_id, count(*), sum(size) FROM calls GROUP BY organization_id"
            )
            copied = _record_counts(conn)
            expected = {kind: len(records.get(kind, ())) for kind in _COPIED}
            if copied != expected:
                raise RuntimeError(f"copied {copied}, expected {expected}: nothing was written")
        # Statistics for the planner, and the visibility map for index-only counts (what
        # autovacuum would do some time later), on a connection of its own: no time limit.
        with self._unavailable(), psycopg.connect(self._url, **self._connect_kwargs) as conn:
            conn.execute("SET statement_timeout = 0")
            conn.execute("VACUUM ANALYZE")

    def record_counts(self) -> dict[str, int]:
        """How many records of each kind the database holds."""
        with self._reading() as conn:
            return _record_counts(conn)

    # -- the processes that serve the store ---------------------------------------------------
    @property
    def process_id(self) -> str:
        """This process's id among those serving the database (see postgres_presence)."""
        return self._presence.process_id

    def live_processes(self) -> set[str]:
        """The ids of the processes serving the database now."""
        with self._reading() as conn:
            return self._presence.live(conn) | {self.process_id}

    def close(self) -> None:
        """Stop taking part (presence, delivery) and close the pool's connections (waiting
        for those in use to be returned)."""
        self._presence.close(wake=self._notify_deliverer)
        self._pool.close()
        self._watchdog.close()

    def _notify_deliverer(self) -> None:
        with (
            contextlib.suppress(psycopg.Error, PoolClosed, PoolTimeout),
            self._pool.connection(timeout=1.0) as conn,
        ):
            conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))

    # -- records of one organization (agents, phone numbers, webhooks) ---------------------------
    def _add_record(
        self,
        kind: _Kind,
        record: Mapping[str, Any],
        check: Callable[[Connection], None] | None = None,
    ) -> None:
        """Insert `record`, after `check(conn)`, if given, in the same transaction."""
        organization_id, key = record["organization_id"], record[kind.field]
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
                raise kind.duplicate(key)
            _mark_claim(conn, kind.name, key)

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
                raise kind.not_found(organization_id, key)
        return cast(dict[str, Any], row[0])

    # -- connections ---------------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A connection for one write statement, its own transaction; timed for
        `observe_writes` as `_transaction` is. Once the block has begun (the statement is
        sent in it) a connection lost or cut is `OutcomeUnknown`: it may have committed."""
        started = time.perf_counter()
        sent = False
        try:
            with (
                self._unavailable(),
                self._pool.connection() as conn,
                self._watchdog.watch(conn, self._call_timeout),
            ):
                sent = True
                yield conn
        except StoreUnavailable as e:
            if sent and _outcome_unknown(e):
                raise OutcomeUnknown(e.error) from e.__cause__
            raise
        if self._write_observer is not None:
            self._write_observer(time.perf_counter() - started)

    @contextmanager
    def _transaction(self, snapshot: bool = False, bounded: bool = True) -> Iterator[Connection]:
        """A connection in a transaction: committed when the block ends, rolled back if it
        raises. A write that commits is timed for `observe_writes`, from asking for a
        connection to the commit. `snapshot`: a read-only one whose statements all see one
        snapshot (REPEATABLE READ), named in its BEGIN (no round trip of its own). `bounded`:
        its connection is cut past the store call's bound (not for a copy's long work).
        A write whose connection is lost (or cut) during its COMMIT is `OutcomeUnknown`;
        lost before, it is rolled back by the server: the plain StoreUnavailable."""
        started = time.perf_counter()
        committing = False
        try:
            with self._unavailable(), contextlib.ExitStack() as begun:
                yield self._begin(begun, snapshot, self._call_timeout if bounded else None)
                committing = not snapshot  # what `begun` ends now is the COMMIT
        except StoreUnavailable as e:
            if committing and _outcome_unknown(e):
                raise OutcomeUnknown(e.error) from e.__cause__
            raise
        if not snapshot and self._write_observer is not None:
            self._write_observer(time.perf_counter() - started)

    def _begin(
        self, begun: contextlib.ExitStack, snapshot: bool, bound: float | None
    ) -> Connection:
        """A connection of the pool in a transaction begun, both ended by `begun`. BEGIN is
        the transaction's first word: a connection the database dropped, found out then,
        is replaced once, as nothing of the transaction was sent (one this side cut for
        taking too long is not: the database is not answering)."""
        for attempt in range(2):
            with contextlib.ExitStack() as ending:
                conn = ending.enter_context(self._pool.connection())
                watch = ending.enter_context(self._watchdog.watch(conn, bound))
                if snapshot:
                    conn.isolation_level, conn.read_only = IsolationLevel.REPEATABLE_READ, True
                    ending.callback(_server_defaults, conn)
                try:
                    ending.enter_context(conn.transaction())
                except psycopg.OperationalError as e:
                    if attempt or not _connection_lost(e) or watch.fired:
                        raise
                    continue  # the pool drops the connection, and another is asked for
                begun.enter_context(ending.pop_all())
                return conn
        raise AssertionError("unreachable: the second attempt returns or raises")

    # -- for metrics ---------------------------------------------------------------------------
    def observe_writes(self, observer: Callable[[float], None] | None) -> None:
        """Tell `observer` the seconds each committed write took, the wait for a
        connection included."""
        self._write_observer = observer

    def counts(self) -> dict[str, int]:
        """How many calls and organizations are stored."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT (SELECT coalesce(sum(calls), 0) FROM organization_usage),"
                " (SELECT count(*) FROM organizations)"
            ).fetchone()
        assert row is not None
        return {"calls": int(row[0]), "organizations": int(row[1])}

    @contextmanager
    def _reading(self, bound: float | None = None) -> Iterator[Connection]:
        """A connection for one statement (a transaction of its own, without BEGIN and
        COMMIT round trips), waited for and answered within `bound` seconds each (default
        `pool_timeout` and the store call's bound)."""
        with (
            self._unavailable(),
            self._pool.connection(bound) as conn,
            self._watchdog.watch(conn, bound or self._call_timeout),
        ):
            yield conn

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Database errors of availability as the API's 503, naming the cause."""
        try:
            yield
        except PoolClosed as e:
            raise StoreUnavailable("The store is closed") from e
        except PoolTimeout as e:
            raise StoreUnavailable(self._why_no_connection()) from e
        except _TimedOut as e:
            raise StoreUnavailable(str(e)) from e
        except psycopg.OperationalError as e:
            # A connection lost, the server shutting down, a statement timed out, ...
            raise StoreUnavailable(f"The database cannot take this request: {_cause(e)}") from e
        except psycopg.DataError as e:
            # A value PostgreSQL cannot hold (a NUL character in a string, an integer past
            # 64 bits): the request's, not the server's fault.
            raise BadRequest(f"The request holds a value that cannot be stored: {_cause(e)}") from e

    def _why_no_connection(self) -> str:
        """Why no connection was handed out in time: the database unreachable (probed with a
        connection of our own, which names the cause), or every connection busy."""
        with self._diagnosis_lock:
            now = time.monotonic()
            if self._diagnosis is not None and now - self._diagnosis[0] < _DIAGNOSIS_KEPT:
                return self._diagnosis[1]
            try:
                with psycopg.connect(self._url, **self._connect_kwargs):
                    pass
                why = (
                    f"The database is reachable, but none of the store's {self._max_connections}"
                    f" connections was free within {self._pool_timeout:g} s: it is overloaded"
                )
            except psycopg.Error as e:
                why = f"The database cannot be reached: {_cause(e)}"
            self._diagnosis = (time.monotonic(), why)
            return why


class _Scan:
    """The calls matching a query in its order, read as two index scans: those with a value
    of the sort field, then those without (they come last in either order)."""

    def __init__(
        self, conn: Connection, query: CallQuery, where: sql.Composable, params: list[Any]
    ) -> None:
        self.conn, self.query, self.where, self.params = conn, query, where, params
        self.direction = sql.SQL("DESC" if query.descending else "ASC")
        self.beyond = sql.SQL("<" if query.descending else ">")
        # In creation order with a filter of one value, the order is led by that (constant)
        # column: only its index (organization, column, created_at, seq) gives that order,
        # so the planner reads the filter's calls in order instead of walking the newest
        # calls of the organization past every one that does not match (20,000 table rows
        # after 20,000 creates of another agent).
        self.lead: sql.Composable = sql.SQL("")
        if query.sort_by == "created_at":
            single = [f for f in _EQUALITY_FIELDS if len(query.filters.get(f) or ()) == 1]
            if single:
                self.lead = sql.SQL("{}, ").format(sql.Identifier(single[-1]))

    def with_value(
        self, after: Sequence[int] | None, skip: int, count: int
    ) -> list[tuple[Any, ...]]:
        """`count` calls with a value after `skip` of them (or after `(value, created_at,
        seq)`): rows of (doc, value, created_at, seq)."""
        field = sql.Identifier(self.query.sort_by)
        keyset: sql.Composable = sql.SQL("")
        params = list(self.params)
        if after is not None:
            keyset = sql.SQL(" AND ({field}, created_at, seq) {beyond} (%s, %s, %s)").format(
                field=field, beyond=self.beyond
            )
            params += after
        return self.conn.execute(
            sql.SQL(
                "SELECT doc, {field}, created_at, seq FROM calls"
                " WHERE {where} AND {field} IS NOT NULL{keyset}"
                " ORDER BY {lead}{field} {d}, created_at {d}, seq {d} OFFSET %s LIMIT %s"
            ).format(
                lead=self.lead, field=field, where=self.where, keyset=keyset, d=self.direction
            ),
            [*params, skip, count],
            prepare=False,  # planned for these values (see list_calls)
        ).fetchall()

    def without_value(
        self, after: Sequence[int] | None, skip: int, count: int
    ) -> list[tuple[Any, ...]]:
        """`count` calls without a value after `skip` of them (or after `(created_at,
        seq)`): rows of (doc, None, created_at, seq)."""
        if self.query.sort_by == "created_at":
            return []  # every call has one
        keyset: sql.Composable = sql.SQL("")
        params = list(self.params)
        if after is not None:
            keyset = sql.SQL(" AND (created_at, seq) {beyond} (%s, %s)").format(beyond=self.beyond)
            params += after
        return self.conn.execute(
            sql.SQL(
                "SELECT doc, NULL, created_at, seq FROM calls"
                " WHERE {where} AND {field} IS NULL{keyset}"
                " ORDER BY created_at {d}, seq {d} OFFSET %s LIMIT %s"
            ).format(
                field=sql.Identifier(self.query.sort_by),
                where=self.where,
                keyset=keyset,
                d=self.direction,
            ),
            [*params, skip, count],
            prepare=False,
        ).fetchall()


# -- copying --------------------------------------------------------------------------------------


_SEARCH_COLUMNS = ("search_parts", "search_text")
# After the search columns: the process whose sandbox plays the call (calls.player).
_PLAYER_COLUMNS = ("played_by",)


def _call_row(call: Mapping[str, Any]) -> tuple[Any, ...]:
    data = _call_json(cast(Call, call))
    return (call["organization_id"], call["call_id"], *_call_values(cast(Call, call), data))


def _keyed_row(field: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    return lambda record: (record["organization_id"], record[field], _json(record))


# Each table a copy fills: its columns, and a record's row of them.
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


_COPIED: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, Any]], tuple[Any, ...]]]] = {
    "organizations": (
        ("organization_id", "doc"),
        lambda org: (org["organization_id"], _json(org)),
    ),
    "api_keys": (
        ("organization_id", "api_key_id", "api_key", "doc"),
        lambda key: (key["organization_id"], key["api_key_id"], key["api_key"], _json(key)),
    ),
    "agents": (("organization_id", "agent_id", "doc"), _keyed_row("agent_id")),
    "phone_numbers": (("organization_id", "phone_number", "doc"), _keyed_row("phone_number")),
    "webhooks": (("organization_id", "webhook_id", "doc"), _keyed_row("id")),
    "calls": (
        (
            "organization_id",
            "call_id",
            "doc",
            "size",
            *_CALL_COLUMNS,
            *_SEARCH_COLUMNS,
            *_PLAYER_COLUMNS,
        ),
        _call_row,
    ),
    "webhook_events": (
        ("organization_id", "webhook_id", "event_id", "status", "created_at", "settled_at", "doc"),
        lambda event: (
            event["organization_id"],
            event["webhook_id"],
            event["event_id"],
            event["status"],
            event["created_at"],
            webhooks.settled_at(cast(WebhookEvent, event)),
            _json(event),
        ),
    ),
    "idempotency_keys": (
        ("scope", "key", "expires_at", "doc"),
        lambda kept: (kept["scope"], kept["key"], kept["expires_at"], _json(kept)),
    ),
    "batches": (
        ("organization_id", "batch_call_id", "active", "in_progress", "doc"),
        lambda batch: (batch["organization_id"], batch["batch_call_id"], *_batch_values(batch)),
    ),
    "batch_tasks": (_TASK_COLUMNS, _task_row),
}


def _record_counts(conn: Connection) -> dict[str, int]:
    counted = sql.SQL(", ").join(
        sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(kind)) for kind in _COPIED
    )
    row = conn.execute(sql.SQL("SELECT {}").format(counted)).fetchone()
    assert row is not None
    return dict(zip(_COPIED, map(int, row), strict=True))


# -- migrations ----------------------------------------------------------------------------------


def migrations() -> list[tuple[int, str]]:
    """The schema's migrations, `(version, SQL)` in order: storage/migrations/NNNN_*.sql."""
    found: dict[int, str] = {}
    for path in sorted(MIGRATIONS.glob("*.sql")):
        named = re.fullmatch(r"(\d+)_\w+\.sql", path.name)
        if named is None:
            raise RuntimeError(f"{path}: a migration is named <number>_<name>.sql")
        version = int(named.group(1))
        if version in found:
            raise RuntimeError(f"{path}: migration {version} exists twice")
        found[version] = path.read_text("utf-8")
    return sorted(found.items())


def migrate(conn: Connection, up_to: int | None = None) -> list[int]:
    """Apply the migrations `conn`'s database lacks (up to version `up_to`, if given), in
    order, in one transaction that holds the migrations' advisory lock (so concurrent
    processes apply each once); the versions applied (none when up to date)."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("SET LOCAL statement_timeout = 0")  # building indexes may take long
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, text in migrations():
            if version in done or (up_to is not None and version > up_to):
                continue
            conn.execute(text.encode())  # several statements: the simple query protocol
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


# -- helpers -------------------------------------------------------------------------------------


def _check_connection(conn: Connection) -> None:
    """Raise if `conn`, idle in the pool, is no longer usable. Cheap for a healthy one,
    which has nothing to read (a round trip per checkout would cost as much as the
    request's own query): one the server closed, or told why it is closing it, has an
    error message or EOF waiting; only then is it tried with a round trip."""
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


def _connection_lost(error: BaseException | None) -> bool:
    """Whether `error` says the connection is gone (the database closed it or is closing it:
    a restart, `pg_terminate_backend`, an idle session timed out; or it was cut), rather
    than that a statement failed on a live one (a timeout, a conflict, a full disk), or
    that the pool had no connection to give (its errors are OperationalErrors too)."""
    if not isinstance(error, psycopg.OperationalError) or isinstance(
        error, (PoolTimeout, PoolClosed)
    ):
        return False
    state = error.sqlstate  # None: libpq's own, the connection broken ("server closed ...")
    return state is None or state.startswith(("08", "57P"))


def _mark_claim(conn: Connection, kind: str, record_id: str) -> None:
    """Mark the Idempotency-Key claim the request runs under, if any (`UNDER_CLAIM`), in
    the transaction that adds the record `kind` `record_id`: committed with it or not at
    all, and kept as long as an answer would be (never taken over by another claim
    meanwhile: that would add the record twice). Its lease stays the claim's, as
    `lease_until`: until then its request may still be running (a call being dialed), and
    a retry is told it is in flight, not that it is done."""
    under = UNDER_CLAIM.get()
    if under is None:
        return
    claim, kept_until = under
    mark = {
        "written": {"kind": kind, "id": record_id},
        "lease_until": claim["expires_at"],
        "expires_at": kept_until,
    }
    conn.execute(
        "UPDATE idempotency_keys SET expires_at = %s, doc = doc || %s::jsonb"
        " WHERE scope = %s AND key = %s AND doc->>'status' = %s"
        " AND (doc->>'created_at')::bigint = %s AND doc->>'fingerprint' = %s",
        (
            kept_until,
            _json(mark),
            claim["scope"],
            claim["key"],
            str(claim["status"]),
            claim["created_at"],
            claim["fingerprint"],
        ),
    )


def _outcome_unknown(error: StoreUnavailable) -> bool:
    """Whether `error`, met while a change was being committed, leaves its outcome unknown:
    the connection is gone (lost, or cut for not answering) rather than the database
    having refused the change."""
    return isinstance(error.__cause__, _TimedOut) or _connection_lost(error.__cause__)


class _TimedOut(Exception):
    """A store call the database did not answer within its bound: its connection was cut."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The database did not answer within {seconds:g} s")


class _Watch:
    """One store call's connection under watch; `fired` once the watchdog cut it."""

    def __init__(self, conn: Connection, deadline: float) -> None:
        self.conn, self.deadline, self.fired = conn, deadline, False


class _Watchdog:
    """Cuts the connection of a store call past its deadline. `statement_timeout` is the
    server's: a server that is stopped (or a host that hangs, or a network that still
    acknowledges) never enforces it, and libpq waits for an answer without end. Shutting
    our end of the socket down wakes the waiting call at once with an error, and the pool
    drops the connection. One thread per store, looking every _WATCH_EVERY seconds (a
    wake-up per call would cost every call a thread switch)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, _Watch] = {}
        self._ids = itertools.count()
        self._stopped = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="calls-store-watchdog").start()

    @contextmanager
    def watch(self, conn: Connection, seconds: float | None) -> Iterator[_Watch]:
        """Watch `conn` for `seconds` (None: not at all) while the block runs; an error
        the cut caused is raised as _TimedOut."""
        watch = _Watch(conn, time.monotonic() + (math.inf if seconds is None else seconds))
        with self._lock:
            token = next(self._ids)
            if seconds is not None:
                self._watched[token] = watch
        try:
            yield watch
        except psycopg.Error as e:
            with self._lock:  # the watchdog decides under the lock: no cut after this
                self._watched.pop(token, None)
            if watch.fired:
                assert seconds is not None
                raise _TimedOut(seconds) from e
            raise
        finally:
            with self._lock:
                self._watched.pop(token, None)
            if watch.fired:  # decided under the lock above: no cut after this
                # Cut, perhaps just as the call succeeded: its socket is shut down, so the
                # connection is closed for the pool to drop, not given to the next call.
                conn.close()

    def close(self) -> None:
        """Stop the watchdog's thread."""
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(_WATCH_EVERY):
            now = time.monotonic()
            with self._lock:
                for token, watch in list(self._watched.items()):
                    if watch.deadline <= now:
                        del self._watched[token]
                        watch.fired = True
                        _cut(watch.conn)


def _cut(conn: Connection) -> None:
    """Shut `conn`'s socket down (both ways) without closing its descriptor, which libpq
    owns: what waits on it wakes and finds the connection ended."""
    with contextlib.suppress(OSError, psycopg.Error):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def _server_defaults(conn: Connection) -> None:
    """Give the pool's next user of `conn` the server's defaults (no isolation level or
    access mode of ours)."""
    with contextlib.suppress(psycopg.Error):  # broken: the pool drops it
        conn.isolation_level, conn.read_only = None, None


def _configure(conn: Connection) -> None:
    """Set up a new connection: JSONB documents parsed by orjson (several times faster)."""
    set_json_loads(orjson.loads, conn)


# Rows an organization's usage is spread over when no quota needs it exact.
USAGE_STRIPES = 16

_CALL_INSERT_COLUMNS = (
    "organization_id, call_id, doc, size, call_status, call_type, direction, agent_id,"
    " created_at, updated_at, start_timestamp, end_timestamp, call_duration,"
    " scheduled_timestamp, search_parts, search_text, played_by"
)
_CALL_INSERT_VALUES = "%s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
_ADD_CALL = (
    f"INSERT INTO calls ({_CALL_INSERT_COLUMNS}) VALUES ({_CALL_INSERT_VALUES})"
    " ON CONFLICT (organization_id, call_id) DO NOTHING RETURNING 1"
)
# A call and its usage in one statement (parameters: whether events are recorded, the
# organization, the call's values, a usage stripe), unless events are recorded and
# the organization has webhooks: then nothing is written, and it answers (inserted,
# deferred) = (false, true).
_ADD_CALL_ALONE = (
    "WITH deferred AS (SELECT %s::bool AND EXISTS"
    " (SELECT 1 FROM webhooks WHERE organization_id = %s) AS yes),"
    f" inserted AS (INSERT INTO calls ({_CALL_INSERT_COLUMNS})"
    f" SELECT {_CALL_INSERT_VALUES} WHERE NOT (SELECT yes FROM deferred)"
    " ON CONFLICT (organization_id, call_id) DO NOTHING RETURNING organization_id, size),"
    " used AS (INSERT INTO organization_usage AS u (organization_id, stripe, calls, bytes)"
    " SELECT organization_id, %s, 1, size FROM inserted"
    " ON CONFLICT (organization_id, stripe) DO UPDATE"
    " SET calls = u.calls + excluded.calls, bytes = u.bytes + excluded.bytes)"
    " SELECT EXISTS (SELECT 1 FROM inserted), (SELECT yes FROM deferred)"
)


def _stripe() -> int:
    return random.randrange(USAGE_STRIPES)


def _duplicate_call(call_id: str) -> DuplicateId:
    return DuplicateId(f"A call with ID '{call_id}' already exists", message="Call already exists")


def _use(
    conn: Connection, organization_id: str, calls_: int, size: int, exact: bool
) -> tuple[int, int] | None:
    """Add to the organization's usage (0003_usage_stripes.sql). `exact`: in stripe 0,
    whose row lock (until commit) serializes the organization's writes, and answer what
    it holds then; otherwise in a random stripe, concurrently with other writes, and
    answer None."""
    stripe = 0 if exact else _stripe()
    conn.execute(
        "INSERT INTO organization_usage AS u (organization_id, stripe, calls, bytes)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (organization_id, stripe) DO UPDATE"
        " SET calls = u.calls + excluded.calls, bytes = u.bytes + excluded.bytes",
        (organization_id, stripe, calls_, size),
    )
    if not exact:
        return None
    row = conn.execute(
        "SELECT sum(calls), sum(bytes) FROM organization_usage WHERE organization_id = %s",
        (organization_id,),
    ).fetchone()
    assert row is not None  # an aggregate always answers a row
    return int(row[0]), int(row[1])


def _require_organization(conn: Connection, organization_id: str) -> None:
    found = conn.execute(
        "SELECT 1 FROM organizations WHERE organization_id = %s", (organization_id,)
    ).fetchone()
    if found is None:
        raise OrganizationNotFound(organization_id)


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
        raise kind.not_found(organization_id, key)
    return cast(dict[str, Any], row[0])


def _call_filters(organization_id: str, query: CallQuery) -> tuple[sql.Composed, list[Any]]:
    """The WHERE clause of `query`'s filters (AND-combined) and its parameters."""
    clauses: list[sql.Composable] = [sql.SQL("organization_id = %s")]
    params: list[Any] = [organization_id]
    filters = query.filters
    for field in _EQUALITY_FIELDS:
        if field in filters:  # any of the values; a call without one matches none
            values = list(filters[field])
            if len(values) == 1:  # `=`: an index's equality condition, also for its order
                clauses.append(sql.SQL("{} = %s").format(sql.Identifier(field)))
                params.append(values[0])
            else:
                clauses.append(sql.SQL("{} = ANY(%s::text[])").format(sql.Identifier(field)))
                params.append(values)
    for name, field in RANGE_FIELDS.items():
        if name in filters:  # inclusive; a call without a value is in no range
            column = sql.Identifier(field)
            clauses.append(sql.SQL("{} IS NOT NULL").format(column))
            for bound, operator in (("lower_threshold", ">="), ("upper_threshold", "<=")):
                if filters[name].get(bound) is not None:
                    clauses.append(sql.SQL("{} {} %s").format(column, sql.SQL(operator)))
                    params.append(filters[name][bound])
    if "transcript_search" in filters:
        # The joined text narrows through the trigram index; each part then decides, so
        # that a match across two parts' boundary is none.
        pattern = "%" + _escape_like(filters["transcript_search"].lower()) + "%"
        clauses.append(
            sql.SQL(
                "search_text LIKE %s"
                " AND EXISTS (SELECT FROM unnest(search_parts) AS part WHERE part LIKE %s)"
            )
        )
        params += [pattern, pattern]
    return sql.SQL(" AND ").join(clauses), params


def _escape_like(text: str) -> str:
    """`text` matched literally by LIKE (whose escape character is the backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _search_parts(call: Call) -> list[str]:
    """What transcript_search looks in, lower-cased by Python as `CallQuery.matches` does
    (PostgreSQL's lower() differs for some characters): the transcript, then the content
    of each transcript entry."""
    transcript = call.get("transcript")
    parts = [transcript.lower() if isinstance(transcript, str) else ""]
    for entry in call.get("transcript_object") or []:
        content = entry.get("content") if isinstance(entry, dict) else None
        if isinstance(content, str):
            parts.append(content.lower())
    return parts


def _call_values(call: Call, data: bytes) -> tuple[Any, ...]:
    """The values of a call's row after its keys: doc, size, columns, search text, the
    process whose sandbox plays it."""
    parts = _search_parts(call)
    return (
        data.decode(),
        len(data),
        *(call.get(column) for column in _CALL_COLUMNS),
        parts,
        "\n".join(parts),
        calls.player(call),
    )


def _call_json(call: Call) -> bytes:
    """`call` as JSON; refused (BadRequest) if it is larger than a call may be."""
    data = orjson.dumps(call)
    calls.check_size(call["call_id"], len(data))
    return data


def _json(doc: Mapping[str, Any]) -> str:
    return orjson.dumps(doc).decode()


def _loads(data: bytes) -> dict[str, Any]:
    return cast(dict[str, Any], orjson.loads(data))


def _copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A private deep copy (documents are plain JSON: a JSON round trip is one)."""
    return _loads(orjson.dumps(doc))


def _cause(error: Exception) -> str:
    """A database error's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__
