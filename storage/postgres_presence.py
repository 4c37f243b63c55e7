"""The processes serving one PostgreSQL database: who is alive, and who delivers webhooks.

Each `PostgresStore` keeps one connection of its own (outside the pool) for this:

- presence: the process takes a number from the `server_processes` sequence and holds a
  session advisory lock on (PRESENCE, number) for as long as it runs. `pg_locks` is then
  the list of live processes; one that dies, even by kill -9, leaves it when PostgreSQL
  closes its connection. The scheduler settles the claims of processes not in that list.
- delivery: one process at a time holds the advisory lock DELIVERY and is told of pending
  webhook events: all of them when it takes the lock, then those of each transaction that
  queues some (from any process), read in the order recorded. The others try to take the
  lock every `retry_every` seconds, so one of them takes over within that time of the
  deliverer's end. A deliverer that loses its connection loses the lock with it: it is
  told to forget what it was told (`forget`) before another can take over.

Reads follow the outbox by transaction id, not by a high-water mark of `seq`: a
transaction that inserted an event early but commits late would be skipped by the latter.
Each read takes the pending events queued by transactions at or past the oldest one that
was still running at the previous read (`pg_snapshot_xmin`): every transaction before
that had committed (or aborted) by then, so its events were in that read. An event read
twice is told twice, which the deliverer ignores.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, cast

import psycopg
from psycopg.rows import TupleRow

from calls_server.domain.webhooks import WebhookEvent
from calls_server.storage.interface import EventListener

log = logging.getLogger("calls_server.storage")

Connection = psycopg.Connection[TupleRow]

# Advisory lock keys (any numbers, fixed): the first half of the two-key form for presence,
# the one-key form for the delivery role.
PRESENCE = 0x43414C4C  # "CALL"
DELIVERY = 0x64656C6976657279  # "delivery"
# Where the writers of events tell the deliverer (NOTIFY, at their commit).
CHANNEL = "calls_webhook_events"

_LIVE = (
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
    " AND objsubid = 2 AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
# What the listener is told of each pending event (as the embedded store tells).
_SUMMARY = ("organization_id", "webhook_id", "event_id", "call_id", "status", "next_attempt_at")
_PENDING = (
    "SELECT organization_id, webhook_id, event_id, doc->>'call_id', status,"
    " (doc->>'next_attempt_at')::bigint FROM webhook_events"
    " WHERE status = 'pending' AND (%(since)s::xid8 IS NULL OR queued_tx >= %(since)s::xid8)"
    " ORDER BY seq"
)


class Presence:
    """This process's presence on the database, and its part in delivering webhooks."""

    def __init__(self, connect: Callable[[], Connection], retry_every: float = 1.0) -> None:
        """Connect (`connect()` answers a new autocommit connection) and be present; raises
        psycopg.Error if the database cannot be reached."""
        self._connect = connect
        self.retry_every = retry_every
        self._conn: Connection | None = connect()
        row = self._conn.execute("SELECT nextval('server_processes')").fetchone()
        assert row is not None
        self.number = int(row[0])
        self._present(self._conn)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: EventListener | None = None
        self._forget: Callable[[], None] | None = None
        self.delivering = False
        self._since: Any = None  # the snapshot horizon of the previous read

    @property
    def process_id(self) -> str:
        """This process's id: its number, as text."""
        return str(self.number)

    def live(self, conn: Connection) -> set[str]:
        """The ids of the processes present now (read on `conn`, one of the pool's)."""
        return {str(row[0]) for row in conn.execute(_LIVE, (PRESENCE,)).fetchall()}

    def deliver(self, listener: EventListener, forget: Callable[[], None]) -> None:
        """Take part in delivering: tell `listener` of pending events while this process
        holds the delivery role (taking it now if it is free), `forget` when it loses it."""
        self._listener, self._forget = listener, forget
        if self._conn is not None:
            try:
                self._take_role(self._conn)
            except psycopg.Error:
                self._lost()
        self._thread = threading.Thread(target=self._run, name="outbox-follower", daemon=True)
        self._thread.start()

    def close(self, wake: Callable[[], None] = lambda: None) -> None:
        """Stop following and leave (the connection closed: its locks go with it). `wake`
        notifies the channel, for a deliverer waiting on it to stop at once."""
        self._stop.set()
        if self.delivering:
            wake()
        if self._thread is not None:
            self._thread.join()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the follower's thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._conn
                if conn is None:
                    conn = self._conn = self._connect()
                    self._present(conn)
                if not self._take_role(conn):
                    self._stop.wait(self.retry_every)
                    continue
                self._wait(conn)
                self._since = self._read(conn, self._since)
            except psycopg.Error as e:
                if not self._stop.is_set():
                    log.warning("outbox follower: %s; connecting again", e)
                self._lost()
                self._stop.wait(self.retry_every)

    def _present(self, conn: Connection) -> None:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (PRESENCE, self.number)
        ).fetchone()
        if not (row and row[0]):  # a number the sequence handed out again (after 2^31)
            raise psycopg.OperationalError(f"process number {self.number} is taken")

    def _take_role(self, conn: Connection) -> bool:
        """Take the delivery role if it is free; whether this process has it now."""
        if self.delivering:
            return True
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (DELIVERY,)).fetchone()
        if not (row and row[0]):
            return False
        conn.execute(f"LISTEN {CHANNEL}")
        self.delivering = True
        log.info("process %s delivers webhook events", self.process_id)
        self._since = self._read(conn, None)
        return True

    def _read(self, conn: Connection, since: Any) -> Any:
        """Tell the listener of the pending events queued at or after `since`; the horizon
        for the next read."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())").fetchone()
            assert row is not None
            rows = conn.execute(_PENDING, {"since": since}).fetchall()
        if rows and self._listener is not None:
            events = [cast(WebhookEvent, dict(zip(_SUMMARY, found, strict=True))) for found in rows]
            self._listener(events)
        return row[0]

    def _wait(self, conn: Connection) -> None:
        """Until a writer notifies, or `retry_every` passes (a notification missed, an event
        due again by its time is found by the periodic read anyway)."""
        for _ in conn.notifies(timeout=self.retry_every, stop_after=1):
            pass
        for _ in conn.notifies(timeout=0):  # those that came meanwhile: one read serves all
            pass

    def _lost(self) -> None:
        """The connection failed: the locks are gone with it (or soon will be)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        if self.delivering:
            self.delivering = False
            log.warning("process %s no longer delivers webhook events", self.process_id)
            if self._forget is not None:
                self._forget()
