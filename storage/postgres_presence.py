"""The processes serving one PostgreSQL database: who is alive, and who delivers webhooks.

Each `PostgresStore` keeps one connection of its own (outside the pool) for this:

- presence: the process takes a number from the `server_processes` sequence and holds a
  session advisory lock on (PRESENCE, number) for as long as it runs. `pg_locks` is then
  the list of live processes; one that dies, even by kill -9, leaves it when PostgreSQL
  closes its connection. The scheduler settles the claims of processes not in that list.
- delivery, shared: each call's webhook events belong to one of `PARTITIONS` partitions (a
  hash of the call id, computed by PostgreSQL), and each partition is delivered by the one
  process holding the advisory lock (DELIVERY, partition). Every `retry_every` seconds a
  process counts the live processes and takes free partitions up to its fair share
  (PARTITIONS / live, rounded up), or gives up those over it, so that N processes deliver
  in parallel and a partition whose holder died is taken over within about that time. A
  process is told of the pending events of its partitions: all of them when it takes one,
  then those of each transaction that queues some (from any process), read in the order
  recorded. It gives a partition up only once the deliverer has dropped its events and
  recorded the attempts under way on them (`forget`), so no event is attempted by two
  processes at once; one that loses its connection loses its locks with it, and is told
  to forget them all (an attempt under way then may be made again by the next holder, with
  the same `event_id`).

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
import math
import threading
from collections.abc import Callable
from typing import Any, cast

import psycopg
from psycopg.rows import TupleRow

from calls_server.domain.webhooks import WebhookEvent
from calls_server.storage.interface import EventForget, EventListener

log = logging.getLogger("calls_server.storage")

Connection = psycopg.Connection[TupleRow]

# Advisory lock keys (any numbers, fixed): the first half of the two-key form, for presence
# (with the process's number) and for the delivery of a partition (with its number).
PRESENCE = 0x43414C4C  # "CALL"
DELIVERY = 0x44454C56  # "DELV"
# How many partitions the calls' webhook events are spread over: the most processes that
# deliver at once.
PARTITIONS = 16
# Where the writers of events tell the deliverer (NOTIFY, at their commit).
CHANNEL = "calls_webhook_events"

_LIVE = (
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
    " AND objsubid = 2 AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
# What the listener is told of each pending event (as the embedded store tells).
_SUMMARY = (
    "organization_id",
    "webhook_id",
    "event_id",
    "call_id",
    "status",
    "next_attempt_at",
    "partition",
)
# An event's partition, from its call id (the same for every event of a call).
_PARTITION = f"mod(abs(hashtext(doc->>'call_id')), {PARTITIONS})"
_PENDING = (
    "SELECT organization_id, webhook_id, event_id, doc->>'call_id', status,"
    f" (doc->>'next_attempt_at')::bigint, {_PARTITION} FROM webhook_events"
    " WHERE status = 'pending' AND (%(since)s::xid8 IS NULL OR queued_tx >= %(since)s::xid8)"
    f" AND {_PARTITION} = ANY(%(partitions)s) ORDER BY seq"
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
        self._forget: EventForget | None = None
        self.partitions: set[int] = set()  # those this process delivers
        self._since: Any = None  # the snapshot horizon of the previous read

    @property
    def delivering(self) -> bool:
        """Whether this process delivers the events of some partitions."""
        return bool(self.partitions)

    @property
    def process_id(self) -> str:
        """This process's id: its number, as text."""
        return str(self.number)

    def live(self, conn: Connection) -> set[str]:
        """The ids of the processes present now (read on `conn`, one of the pool's)."""
        return {str(row[0]) for row in conn.execute(_LIVE, (PRESENCE,)).fetchall()}

    def deliver(self, listener: EventListener, forget: EventForget) -> None:
        """Take part in delivering: tell `listener` of the pending events of the partitions
        this process holds (taking its share now), `forget` those it gives up or loses."""
        self._listener, self._forget = listener, forget
        if self._conn is not None:
            try:
                self._balance(self._conn)
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
                self._balance(conn)
                if not self.partitions:
                    self._stop.wait(self.retry_every)
                    continue
                self._wait(conn)
                self._since = self._read(conn, self._since, self.partitions)
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

    def _balance(self, conn: Connection) -> None:
        """Hold this process's fair share of the partitions: take free ones up to it (and
        read their pending events), or give up those over it (once forgotten)."""
        fair = math.ceil(PARTITIONS / max(1, len(self.live(conn))))
        if len(self.partitions) > fair:
            extra = frozenset(sorted(self.partitions)[fair:])
            if self._forget is not None:
                self._forget(extra)  # returns once their attempts under way are recorded
            for partition in extra:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (DELIVERY, partition))
            self.partitions -= extra
            log.info("process %s gave up webhook partitions %s", self.process_id, sorted(extra))
            return
        # Each process starts looking at another place, so that they rarely race.
        order = sorted(range(PARTITIONS), key=lambda p: (p - self.number) % PARTITIONS)
        taken: set[int] = set()
        for partition in order:
            if len(self.partitions) + len(taken) >= fair:
                break
            if partition in self.partitions:
                continue
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (DELIVERY, partition)
            ).fetchone()
            if row and row[0]:
                taken.add(partition)
        if not taken:
            return
        if not self.partitions:
            conn.execute(f"LISTEN {CHANNEL}")
            self._since = None
        self.partitions |= taken
        log.info(
            "process %s delivers webhook partitions %s", self.process_id, sorted(self.partitions)
        )
        horizon = self._read(conn, None, taken)  # every pending event of the new ones
        if self._since is None:
            self._since = horizon

    def _read(self, conn: Connection, since: Any, partitions: set[int]) -> Any:
        """Tell the listener of the pending events of `partitions` queued at or after
        `since`; the horizon for the next read."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())").fetchone()
            assert row is not None
            rows = conn.execute(
                _PENDING, {"since": since, "partitions": sorted(partitions)}
            ).fetchall()
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
        if self.partitions:
            self.partitions = set()
            log.warning("process %s no longer delivers webhook events", self.process_id)
            if self._forget is not None:
                self._forget(None)
