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

The package is split along the roles of `storage.interface`, each module with its SQL:
pool.py (connections, transactions, the watchdog, which errors leave an outcome unknown,
which methods only read), calls.py (calls, listing, usage), accounts.py (organizations,
API keys), records.py (agents, phone numbers, webhooks: the generic records of a kind),
batches.py, outbox.py (webhook events), idempotency.py (answers, claims, `_mark_claim`),
processes.py, copy.py (moving up from the embedded store), state.py (an organization's
records as a whole), schema.py (migrations), documents.py (JSON). `PostgresStore` is one
object composed of each role's mixin.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from calls_server.domain.quotas import Quota
from calls_server.storage.interface import EventSource
from calls_server.storage.postgres.accounts import AccountsMixin
from calls_server.storage.postgres.batches import BatchesMixin
from calls_server.storage.postgres.calls import CallsMixin
from calls_server.storage.postgres.copy import CopyMixin
from calls_server.storage.postgres.idempotency import IdempotencyMixin
from calls_server.storage.postgres.outbox import OutboxMixin
from calls_server.storage.postgres.pool import (
    _KEEPALIVES,
    _TCP_USER_TIMEOUT_MS,
    CALL_MARGIN,
    READS,
    Connection,
    _check_connection,
    _configure,
    _reads_run_again_once,
    _Watchdog,
)
from calls_server.storage.postgres.processes import ProcessesMixin
from calls_server.storage.postgres.records import RecordsMixin
from calls_server.storage.postgres.schema import MIGRATIONS, migrate, migrations
from calls_server.storage.postgres.state import StateMixin
from calls_server.storage.postgres_presence import Presence

__all__ = [
    "CALL_MARGIN",
    "MIGRATIONS",
    "READS",
    "Connection",
    "PostgresStore",
    "migrate",
    "migrations",
]

# Seconds a reconnection to the database keeps trying before it gives up (and is tried again
# at the next need): psycopg_pool's default backs off for up to minutes.
RECONNECT_TIMEOUT = 2.0


@_reads_run_again_once
class PostgresStore(
    CallsMixin,
    AccountsMixin,
    BatchesMixin,
    RecordsMixin,
    OutboxMixin,
    IdempotencyMixin,
    ProcessesMixin,
    CopyMixin,
    StateMixin,
):
    """The `storage.interface.Store` of a PostgreSQL database (migrated on open): each
    role's methods in its module's mixin, the store's life (open, ready, close) here."""

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
        self._known_keys = {}
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
            # A reconnection gives up after 2 s (and is tried again at the next need) rather
            # than backing off for up to 16 s between attempts: a server whose database
            # switched over (a failover) comes back within seconds of the promotion.
            reconnect_timeout=RECONNECT_TIMEOUT,
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

    # -- durability ----------------------------------------------------------------------------
    def check_ready(self) -> None:
        """Return when the database answers; raise StoreUnavailable naming the cause."""
        with self._reading(self._ready_timeout) as conn:
            conn.execute("SELECT 1").fetchone()

    def wait_durable(self) -> None:
        """Nothing to wait for: every method returns once its transaction is committed."""

    def close(self) -> None:
        """Stop taking part (presence, delivery) and close the pool's connections (waiting
        for those in use to be returned)."""
        self._presence.close(wake=self._notify_deliverer)
        self._pool.close()
        self._watchdog.close()

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
