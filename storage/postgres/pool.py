"""The store's connections: a bounded pool handed out for one statement (`_reading`,
`_writing`) or one transaction (`_transaction`), each store call bounded on this side
(`_Watchdog` cuts a connection past its bound), the database's errors said as the API's
503 naming the cause, what a lost connection means (`OutcomeUnknown` for a change that may
have been committed) and which methods only read (`READS`: run once more when the database
dropped their connection). A connection whose server refuses writes as read-only (a standby,
as during a failover) is dropped, so that the next one goes to the server taking writes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import IsolationLevel
from psycopg.rows import TupleRow
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from calls_server.domain import key_checks
from calls_server.domain.errors import BadRequest, OutcomeUnknown, StoreUnavailable

Connection = psycopg.Connection[TupleRow]

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
        "list_agents",
        "get_agent",
        "list_phone_numbers",
        "get_phone_number",
        "list_webhooks",
        "get_webhook",
        "get_batch",
        "list_batches",
        "batch_tasks",
        "active_batches",
        "pending_webhook_events",
        "list_webhook_events",
        "get_webhook_event",
        "find_idempotent",
        "export_organization",
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


class Connections:
    """The base of each role's part of `PostgresStore`: its pool of connections, and how a
    store call gets one (set up by `PostgresStore.__init__`)."""

    _url: str
    _connect_kwargs: dict[str, Any]
    _pool: ConnectionPool[Connection]
    _pool_timeout: float
    _max_connections: int
    _call_timeout: float
    _ready_timeout: float
    _watchdog: _Watchdog
    _write_observer: Callable[[float], None] | None
    _diagnosis_lock: threading.Lock
    _diagnosis: tuple[float, str] | None

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A connection for one write statement, its own transaction; timed for
        `observe_writes` as `_transaction` is; the request's key check, if one is owed,
        settled first (domain/key_checks.py). Once the block has begun (the statement is
        sent in it) a connection lost or cut is `OutcomeUnknown`: it may have committed."""
        key_checks.settle_before_writing()
        started = time.perf_counter()
        sent = False
        try:
            with (
                self._unavailable(),
                self._pool.connection() as conn,
                self._watchdog.watch(conn, self._call_timeout),
                _dropped_if_read_only(conn),
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
        raises (a write first settles the request's key check, if one is owed:
        domain/key_checks.py). A write that commits is timed for `observe_writes`, from asking for a
        connection to the commit. `snapshot`: a read-only one whose statements all see one
        snapshot (REPEATABLE READ), named in its BEGIN (no round trip of its own). `bounded`:
        its connection is cut past the store call's bound (not for a copy's long work).
        A write whose connection is lost (or cut) during its COMMIT is `OutcomeUnknown`;
        lost before, it is rolled back by the server: the plain StoreUnavailable."""
        if not snapshot:
            key_checks.settle_before_writing()
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
                ending.enter_context(_dropped_if_read_only(conn))
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

    @contextmanager
    def _reading(self, bound: float | None = None) -> Iterator[Connection]:
        """A connection for one statement (a transaction of its own, without BEGIN and
        COMMIT round trips), waited for and answered within `bound` seconds each (default
        `pool_timeout` and the store call's bound)."""
        with (
            self._unavailable(),
            self._pool.connection(bound) as conn,
            self._watchdog.watch(conn, bound or self._call_timeout),
            _dropped_if_read_only(conn),
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
        except psycopg.errors.ReadOnlySqlTransaction as e:
            # A write refused, so nothing written: the server reached is a standby (or was
            # made read-only), as during a failover.
            raise StoreUnavailable(f"The database is read-only: {_cause(e)}") from e
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
                    f" connections was free within {self._pool_timeout:g} s: it is overloaded,"
                    " or the store is connecting again after the database came back"
                )
            except psycopg.Error as e:
                why = f"The database cannot be reached: {_cause(e)}"
            self._diagnosis = (time.monotonic(), why)
            return why


@contextmanager
def _dropped_if_read_only(conn: Connection) -> Iterator[None]:
    """Close `conn`, for the pool to drop it, when the server refuses a write on it as
    read-only (SQLSTATE 25006): one that is a standby stays so, and the connection that
    replaces it goes where libpq finds the server taking writes now (the URL's hosts,
    tried in turn under `target_session_attrs=read-write`)."""
    try:
        yield
    except psycopg.errors.ReadOnlySqlTransaction:
        conn.close()
        raise


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


def _cause(error: Exception) -> str:
    """A database error's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__
