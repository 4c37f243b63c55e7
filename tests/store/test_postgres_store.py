"""The PostgreSQL store beyond the store contract (test_store_contract.py, which every
backend runs, as every app test does, see conftest.py): what only a database server does.
Several processes (stores) on one database, the outbox in PostgreSQL's transactions, the
listing's snapshot and indexes, migrations, the pool, 503s naming the cause when the
database is out of reach, connections it dropped, changes whose outcome cannot be known,
and a database that hangs.

One PostgreSQL server runs for the session (tests/postgres_server.py); each test gets a
fresh database."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import psycopg
import pytest

from calls_server.domain import calls, idempotency, keys
from calls_server.domain.errors import (
    BadRequest,
    CallNotFound,
    OutcomeUnknown,
    StoreUnavailable,
)
from calls_server.storage import postgres
from calls_server.storage.postgres import PostgresStore, migrate, migrations
from calls_server.storage.postgres_presence import PARTITIONS
from tests.conftest import wait_for
from tests.postgres_server import TcpProxy
from tests.store.test_store_contract import (
    EVERYTHING,
    a_call,
    first_told,
    owing,
    webhook,
)


@pytest.fixture
def store(database_url):
    opened = PostgresStore(database_url)
    yield opened
    opened.close()


# -- several processes on one database -------------------------------------------------------------


def test_a_revocation_is_seen_at_once_by_another_store_on_the_same_database(store, database_url):
    other = PostgresStore(database_url)  # another process, as far as the database can tell
    try:
        store.add_organization(keys.new_organization(1, "acme"))
        record, _ = keys.new_api_key("acme", 2)
        store.add_api_key(record)
        assert other.find_api_key(record["api_key"])["status"] == "ACTIVE"

        store.change_api_key("acme", record["api_key_id"], lambda k: keys.revoked(k, 3))

        assert other.find_api_key(record["api_key"])["status"] == "REVOKED"
    finally:
        other.close()


def test_of_two_processes_claiming_one_key_one_gets_it_until_released_or_expired(
    store, database_url
):
    other = PostgresStore(database_url)
    try:
        mine = idempotency.claim("acme", "k", "print-a", now=1_000, lease_ms=60_000)
        theirs = idempotency.claim("acme", "k", "print-a", now=1_001, lease_ms=60_000)

        assert store.claim_idempotent(mine, now=1_000) is None  # claimed
        assert other.claim_idempotent(theirs, now=1_001) == mine  # running elsewhere
        other.release_idempotent(theirs)  # not its claim: nothing removed
        assert store.find_idempotent("acme", "k") == mine
        store.release_idempotent(mine)
        assert other.claim_idempotent(theirs, now=1_001) is None  # free again
        later = idempotency.claim("acme", "k", "print-a", now=61_001, lease_ms=60_000)
        assert store.claim_idempotent(later, now=61_001) is None  # its lease ran out
    finally:
        other.close()


def pending_event(store, call_id: str) -> None:
    """Record a call (of organization acme, which has a webhook) that owes an event."""
    store.add_call(a_call(org="acme", call_id=call_id))


@pytest.fixture
def acme(store):
    store.add_organization(keys.new_organization(1, "acme"))
    store.add_webhook(webhook(status_events=True))
    return store


def test_each_process_has_an_id_and_sees_the_others_live(store, database_url):
    other = PostgresStore(database_url)
    try:
        assert other.process_id != store.process_id
        assert store.live_processes() == other.live_processes()
        assert store.live_processes() >= {store.process_id, other.process_id}
    finally:
        other.close()
    assert other.process_id not in store.live_processes()


def test_a_process_whose_connection_dies_leaves_the_live_ones(store, database_url):
    proxy = TcpProxy(database_url)
    other = PostgresStore(proxy.url())
    try:
        assert other.process_id in store.live_processes()
        proxy.cut()  # as kill -9 would: its connections close without a word
        wait_for(lambda: other.process_id not in store.live_processes())
    finally:
        other.close()


def told_ids(told: list[list[dict]]) -> set[str]:
    return {event["event_id"] for batch in told for event in batch}


def test_two_processes_share_the_pending_events_by_partition(acme, database_url):
    other = PostgresStore(database_url)
    told_here: list[list[dict]] = []
    told_there: list[list[dict]] = []
    acme.record_webhook_events(owing, told_here.append)
    other.record_webhook_events(owing, told_there.append)
    try:
        wait_for(lambda: acme._presence.partitions and other._presence.partitions)
        for n in range(24):  # recorded by either process
            pending_event(other if n % 2 else acme, f"call-{n}")
        every = {event["event_id"] for event in acme.pending_webhook_events()}
        wait_for(lambda: told_ids(told_here) | told_ids(told_there) == every)

        assert told_ids(told_here)
        assert told_ids(told_there)
        assert not told_ids(told_here) & told_ids(told_there)  # each event to one
        assert not acme._presence.partitions & other._presence.partitions
        assert len(acme._presence.partitions | other._presence.partitions) == PARTITIONS
    finally:
        acme.close()
    # One delivers no more: the other takes its partitions over, told of their events.
    wait_for(lambda: told_ids(told_there) == every)
    assert len(other._presence.partitions) == PARTITIONS
    other.close()


def test_a_process_that_joins_is_given_its_share(acme, database_url):
    forgotten: list[frozenset[int] | None] = []
    acme.record_webhook_events(owing, lambda events: None, forgotten.append)
    assert len(acme._presence.partitions) == PARTITIONS  # alone (this test's database)
    other = PostgresStore(database_url)
    try:
        other.record_webhook_events(owing, lambda events: None)

        wait_for(lambda: len(other._presence.partitions) == PARTITIONS // 2)
        assert len(acme._presence.partitions) == PARTITIONS // 2
        assert forgotten
        assert forgotten[0] == frozenset(other._presence.partitions)
    finally:
        other.close()


def test_a_deliverer_that_loses_its_connection_forgets_and_another_takes_over(acme, database_url):
    proxy = TcpProxy(database_url)
    cut_off = PostgresStore(proxy.url())
    forgotten = threading.Event()
    told_there: list[list[dict]] = []
    try:
        cut_off.record_webhook_events(owing, lambda events: None, lambda p: forgotten.set())
        acme.record_webhook_events(owing, told_there.append)
        pending_event(acme, "c1")
        assert cut_off._presence.delivering
        proxy.cut()

        wait_for(forgotten.is_set)
        wait_for(lambda: len(acme._presence.partitions) == PARTITIONS)  # all of them now
        wait_for(lambda: told_ids(told_there) == told_ids([acme.pending_webhook_events()]))
    finally:
        cut_off.close()


# -- the outbox in PostgreSQL's transactions -------------------------------------------------------


def test_the_listener_is_told_of_events_only_after_their_commit(store, database_url):
    store.add_organization(keys.new_organization(1, "acme"))
    store.add_webhook(webhook(status_events=True))
    told: list[list[dict]] = []
    seen_committed: list[int] = []

    def listener(events):
        # Told after the commit: another connection sees the events already.
        with psycopg.connect(database_url) as conn:
            seen_committed.append(conn.execute("SELECT count(*) FROM webhook_events").fetchone()[0])
        told.append(events)

    store.record_webhook_events(owing, listener)
    call = a_call(org="acme")
    store.add_call(call)
    store.change_call(
        "acme", call["call_id"], lambda c: calls.update(c, {"call_status": "ongoing"}, 5)
    )
    wait_for(lambda: len(first_told(told)) == 2)

    assert all(seen >= len(batch) for seen, batch in zip(seen_committed, told, strict=True))


def test_an_event_insert_that_fails_leaves_the_change_unwritten(store):
    store.add_organization(keys.new_organization(1, "acme"))
    hook = webhook(status_events=True)
    store.add_webhook(hook)
    call = a_call(org="acme")
    store.add_call(call)

    def twice(old, new, hooks, assigned):  # the same event twice: its key is taken
        event = owing(old, new, hooks, assigned)[0]
        return [event, dict(event)]

    store.record_webhook_events(twice, lambda events: None)

    with pytest.raises(psycopg.errors.UniqueViolation):
        store.change_call(
            "acme", call["call_id"], lambda c: calls.update(c, {"call_status": "ongoing"}, 5)
        )
    assert store.get_call("acme", call["call_id"]) == call
    assert store.pending_webhook_events() == []


# -- the listing: one snapshot, and indexes --------------------------------------------------------


def test_a_listing_reads_one_snapshot_and_leaves_the_connection_at_the_defaults(database_url):
    store = PostgresStore(database_url, max_connections=1)  # one connection: the same one
    try:
        with store._transaction(snapshot=True) as conn:
            inside = conn.execute("SHOW transaction_isolation").fetchone()
            read_only = conn.execute("SHOW transaction_read_only").fetchone()
        store.list_calls("org", EVERYTHING)
        with store._transaction() as conn:
            after = conn.execute("SHOW transaction_isolation").fetchone()
    finally:
        store.close()

    assert (inside, read_only, after) == (("repeatable read",), ("on",), ("read committed",))


def test_transcript_search_and_listing_use_indexes(store, database_url):
    for n in range(3000):
        store.add_call(
            a_call(org=f"org{n % 30}", call_id=f"c{n}", transcript=f"call {n} about {n % 97}")
        )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE calls")
        # A table this small is cheaper to scan: what is shown is that the indexes serve
        # these queries (the planner picks them once scanning is priced out, as it is for
        # tables of real size).
        conn.execute("SET enable_seqscan = off")

        def plan(statement: str) -> str:
            rows = conn.execute("EXPLAIN " + statement).fetchall()
            return "\n".join(row[0] for row in rows)

        searched = plan("SELECT doc FROM calls WHERE search_text LIKE '%about 42%'")
        newest = plan(
            "SELECT doc FROM calls WHERE organization_id = 'org3'"
            " ORDER BY created_at DESC, seq DESC LIMIT 10"
        )
        counted = plan(
            "SELECT count(*) FROM calls WHERE organization_id = 'org3'"
            " AND agent_id = ANY('{agent-1}') AND call_status = ANY('{ended}')"
            " AND direction = ANY('{inbound}') AND start_timestamp IS NOT NULL"
        )
    assert "calls_search" in searched
    assert "Seq Scan" not in searched
    assert "calls_created" in newest
    assert "Sort" not in newest
    # Every filter checked in the index: the count reads no table row.
    assert "Index Only Scan" in counted


# -- values PostgreSQL cannot hold -----------------------------------------------------------------


def test_a_value_postgresql_cannot_hold_is_a_bad_request(store):
    with pytest.raises(BadRequest, match="cannot be stored"):
        store.add_call(a_call(transcript="nul \x00 inside"))
    assert store.list_calls("org", EVERYTHING)[1] == 0


# -- migrations ------------------------------------------------------------------------------------


def test_migrations_applied_again_are_a_no_op(store, database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        before = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
        assert [version for version, _ in before] == [v for v, _ in migrations()]

        assert migrate(conn) == []

        assert (
            conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall() == before
        )
    PostgresStore(database_url).close()  # and opening again changes nothing either


@pytest.mark.parametrize("version", [v for v, _ in migrations()][:-1])
def test_a_database_of_an_earlier_version_is_migrated_keeping_its_records(databases, version):
    url = databases.fresh_url()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            assert migrate(conn, up_to=version) == list(range(1, version + 1))
            conn.execute(
                "INSERT INTO webhook_events (organization_id, webhook_id, event_id, status,"
                " created_at, doc) VALUES ('acme', 'wh', 'evt_1', 'pending', 1, %s::jsonb)",
                ('{"event_id": "evt_1", "call_id": "c1", "next_attempt_at": 5}',),
            )
            conn.execute(
                "INSERT INTO organization_usage (organization_id, calls, bytes)"
                " VALUES ('acme', 3, 300)"
            )
        opened = PostgresStore(url)
        told: list[list[dict]] = []
        try:
            opened.record_webhook_events(owing, told.append)
            wait_for(lambda: first_told(told) == ["evt_1"])
            assert told[0][0]["call_id"] == "c1"
            assert [e["event_id"] for e in opened.pending_webhook_events()] == ["evt_1"]
            assert opened.counts()["calls"] == 3
        finally:
            opened.close()
        with psycopg.connect(url) as conn:
            versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        assert versions == [v for v, _ in migrations()]
    finally:
        databases.drop(url)


def test_concurrent_opens_of_a_new_database_migrate_it_once(databases):
    url = databases.fresh_url()
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            opened.append(PostgresStore(url))
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=open_store) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    try:
        assert errors == []
        with psycopg.connect(url) as conn:
            counted = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
            assert counted == (len(migrations()),)
    finally:
        for s in opened:
            s.close()
        databases.drop(url)


# -- an unreachable database -----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_database_is_a_503_naming_the_cause_in_bounded_time():
    url = f"postgresql://calls@127.0.0.1:{closed_port()}/calls"
    started = time.monotonic()

    with pytest.raises(StoreUnavailable, match=r"cannot be reached.*(refused|failed)") as refused:
        PostgresStore(url, pool_timeout=1.0, connect_timeout=1)

    assert refused.value.status_code == 503
    assert time.monotonic() - started < 10


def test_a_lost_database_is_a_503_naming_the_cause(database_url):
    proxy = TcpProxy(database_url)
    store = PostgresStore(proxy.url(), pool_timeout=1.0, connect_timeout=1)
    try:
        store.add_call(a_call(call_id="kept"))
        proxy.cut()
        started = time.monotonic()

        with pytest.raises(StoreUnavailable) as lost:
            store.get_call("org", "kept")
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            store.check_ready()

        assert time.monotonic() - started < 15
        assert "database" in lost.value.error
    finally:
        store.close()


def test_connections_the_server_dropped_are_replaced(store, database_url):
    store.add_call(a_call(call_id="kept"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'calls-server' AND pid <> pg_backend_pid()"
        )

    assert store.get_call("org", "kept")["call_id"] == "kept"
    store.check_ready()


def test_a_pool_with_no_free_connection_is_a_503_not_an_endless_wait(database_url):
    store = PostgresStore(database_url, max_connections=1, pool_timeout=0.5)
    holding = threading.Thread(target=_slow, args=(store, 2))
    try:
        store.add_call(a_call(call_id="kept"))
        holding.start()
        time.sleep(0.3)  # the one connection is taken
        started = time.monotonic()

        with pytest.raises(StoreUnavailable, match="none of the store's 1 connections") as busy:
            store.get_call("org", "kept")

        assert time.monotonic() - started < 5
        assert busy.value.status_code == 503
        holding.join()
        assert store.get_call("org", "kept")["call_id"] == "kept"  # free again
    finally:
        store.close()


def test_a_statement_that_runs_too_long_is_a_503(database_url):
    store = PostgresStore(database_url, statement_timeout=0.2)
    try:
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            _slow(store)
    finally:
        store.close()


def _slow(store: PostgresStore, seconds: float = 5) -> None:
    with store._transaction() as conn:
        conn.execute("SELECT pg_sleep(%s)", (seconds,))


# -- connections the database dropped --------------------------------------------------------------


def terminate_store_connections(databases, database_url: str) -> int:
    """End, from an admin connection, every backend serving the store's connections to the
    test's database (as a restart would), waiting until each is gone; how many there were."""
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(databases.admin_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
            " WHERE application_name = 'calls-server' AND datname = %s",
            (name,),
        ).fetchone()
    assert ended is not None
    return int(ended[0])


@pytest.fixture
def unheard(monkeypatch, database_url):
    """A store of one connection handed out without the check that hears that the database
    ended it: as when the database's word has not arrived yet (pg_terminate_backend and a
    shutdown end backends asynchronously), deterministically."""
    monkeypatch.setattr(postgres, "_check_connection", lambda conn: None)
    opened = PostgresStore(database_url, min_connections=1, max_connections=1)
    yield opened
    opened.close()


def test_after_the_database_dropped_every_connection_reads_and_writes_run_at_once(
    store, databases, database_url
):
    store.add_organization(keys.new_organization(0, "acme"))
    store.add_call(a_call(call_id="kept"))
    assert terminate_store_connections(databases, database_url) >= 1

    assert store.get_call("org", "kept")["call_id"] == "kept"
    store.add_call(a_call(call_id="added"))
    assert store.list_calls("org", EVERYTHING).total == 2


def test_a_read_on_a_connection_the_database_dropped_runs_again_on_a_fresh_one(
    unheard, databases, database_url
):
    unheard.add_call(a_call(call_id="kept"))

    for read in (
        lambda: unheard.get_call("org", "kept")["call_id"] == "kept",  # one statement
        lambda: unheard.list_calls("org", EVERYTHING).total == 1,  # a snapshot transaction
        lambda: unheard.find_api_key("none") is None,
        lambda: unheard.check_ready() is None,
    ):
        assert terminate_store_connections(databases, database_url) >= 1
        assert read()


def test_a_read_that_fails_on_a_live_connection_is_not_run_again(database_url, monkeypatch):
    store = PostgresStore(database_url, statement_timeout=0.2)
    runs = []

    def too_long(conn, *args, **kwargs):
        runs.append(1)
        conn.execute("SELECT pg_sleep(1)")

    monkeypatch.setattr(postgres.records, "_locked", too_long)  # what get_agent reads with
    try:
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            store.get_agent("org", "agent")
        assert runs == [1]
    finally:
        store.close()


def test_a_write_on_a_connection_the_database_dropped_runs_again_only_if_nothing_was_sent(
    unheard, databases, database_url
):
    # A transaction finds the connection dropped at its BEGIN: nothing sent, begun again.
    assert terminate_store_connections(databases, database_url) >= 1
    unheard.add_organization(keys.new_organization(0, "acme"))
    assert unheard.get_organization("acme")["organization_id"] == "acme"

    # A write of one statement (its own transaction) finds it out only once the statement
    # was sent, and nothing tells whether the database ran it before ending the connection
    # (the error is the same either way; a backend ended while waiting for a synchronous
    # standby has committed). So it is OutcomeUnknown, and the write is not run again; here
    # the database had not received it, and the client's retry adds it.
    assert terminate_store_connections(databases, database_url) >= 1
    with pytest.raises(StoreUnavailable, match="terminating connection") as lost:
        unheard.add_call(a_call(call_id="once"))
    assert type(lost.value) is OutcomeUnknown
    with pytest.raises(CallNotFound):
        unheard.get_call("org", "once")
    unheard.add_call(a_call(call_id="once"))  # the client's retry
    assert unheard.list_calls("org", EVERYTHING).total == 1


def test_a_write_whose_connection_is_dropped_after_it_was_sent_is_a_503_not_run_again(
    store, databases, database_url
):
    store.add_call(a_call(call_id="kept", call_status="registered"))
    changes = []

    def change(call):
        changes.append(call["call_id"])
        terminate_store_connections(databases, database_url)  # mid-transaction
        return {**call, "call_status": "ongoing"}

    with pytest.raises(StoreUnavailable, match="terminating connection") as lost:
        store.change_call("org", "kept", change)

    assert type(lost.value) is StoreUnavailable  # its COMMIT never sent: nothing written
    assert changes == ["kept"]
    assert store.get_call("org", "kept")["call_status"] == "registered"


# -- changes whose outcome the store cannot know, and a database that hangs ------------------------


class FaultyProxy:
    """A TCP port on 127.0.0.1 forwarding to the test's PostgreSQL server (as TcpProxy), with
    two faults: `hang()` forwards nothing more and closes nothing (a database that stopped:
    its kernel still takes what is sent) until `resume()`, at once or right after a client
    sent `after` (forwarded: the server acts on it); `lose_reply(marker, to_commit)`
    drops the connection that sent `marker` right before the server's reply to it reaches
    the client, or, with `to_commit`, its reply to the COMMIT that follows (the change was
    committed: only the client does not know)."""

    def __init__(self, url: str) -> None:
        params = psycopg.conninfo.conninfo_to_dict(url)
        host, port = str(params.get("host") or "localhost"), int(params.get("port") or 5432)
        self._target = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        self._url = url
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._running = threading.Event()
        self._running.set()
        self._lose: tuple[bytes, bool] | None = None
        self._hang_after: bytes | None = None
        self.lost = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        port = self._listener.getsockname()[1]
        return psycopg.conninfo.make_conninfo(self._url, host="127.0.0.1", port=str(port))

    def hang(self, after: bytes | None = None) -> None:
        if after is None:
            self._running.clear()
        self._hang_after = after

    def resume(self) -> None:
        self._running.set()

    def lose_reply(self, marker: bytes, to_commit: bool = False) -> None:
        self._lose = (marker, to_commit)

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            family, address = self._target
            server = socket.socket(family, socket.SOCK_STREAM)
            server.connect(address)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        marked = None  # (marker, to_commit) once this connection sent the marker
        try:
            while True:
                self._running.wait()
                readable, _, _ = select.select([client, server], [], [], 0.05)
                if not self._running.is_set():
                    continue  # hung: what arrived stays unread
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        if self._lose is not None and self._lose[0] in data:
                            marked, self._lose = self._lose, None
                        server.sendall(data)
                        if self._hang_after is not None and self._hang_after in data:
                            self._running.clear()
                        continue
                    if marked is not None and (not marked[1] or b"COMMIT\x00" in data):
                        self.lost.set()
                        return  # the reply is dropped with the connection
                    client.sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def faulty(database_url):
    """A store through a FaultyProxy, and the proxy; statements bounded at 1 s (so a store
    call at 1 + CALL_MARGIN s), readiness at 1 s."""
    proxy = FaultyProxy(database_url)
    opened = PostgresStore(
        proxy.url(), pool_timeout=2.0, connect_timeout=2, statement_timeout=1.0, ready_timeout=1.0
    )
    yield opened, proxy
    proxy.resume()
    opened.close()


def test_a_change_whose_commit_reply_is_lost_is_outcome_unknown_though_it_was_stored(
    faulty, database_url
):
    store, proxy = faulty
    proxy.lose_reply(b"INSERT INTO organizations", to_commit=True)

    with pytest.raises(OutcomeUnknown) as unknown:
        store.add_organization(keys.new_organization(0, "acme"))

    assert proxy.lost.is_set()
    assert unknown.value.status_code == 503
    assert unknown.value.message == "Outcome unknown"
    assert "may or may not have been stored" in unknown.value.error
    assert "same Idempotency-Key" in unknown.value.error
    assert store.get_organization("acme")["organization_id"] == "acme"  # it was committed


def test_a_single_statement_write_whose_reply_is_lost_is_outcome_unknown(faulty):
    store, proxy = faulty
    proxy.lose_reply(b"INSERT INTO calls")  # the common add_call: one autocommit statement

    with pytest.raises(OutcomeUnknown, match="may or may not have been stored"):
        store.add_call(a_call(call_id="sent"))

    assert store.get_call("org", "sent")["call_id"] == "sent"


def test_a_change_whose_connection_is_lost_before_its_commit_is_the_plain_503(
    store, databases, database_url
):
    store.add_call(a_call(call_id="kept", call_status="registered"))

    def change(call):
        terminate_store_connections(databases, database_url)  # COMMIT never sent
        return {**call, "call_status": "ongoing"}

    with pytest.raises(StoreUnavailable) as lost:
        store.change_call("org", "kept", change)

    assert type(lost.value) is StoreUnavailable  # not OutcomeUnknown: nothing was written
    assert store.get_call("org", "kept")["call_status"] == "registered"


def test_a_hung_database_is_a_503_within_the_store_calls_bound_and_ready_within_its_own(faulty):
    store, proxy = faulty
    store.add_call(a_call(call_id="kept"))
    proxy.hang()

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="did not answer within 6 s") as read:
        store.get_call("org", "kept")
    read_took = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.check_ready()
    ready_took = time.monotonic() - started

    assert type(read.value) is StoreUnavailable  # a read: nothing to be unsure of
    # The upper bounds are loose, for a loaded machine (the suite runs on 2 busy cores), but
    # still below what they guard against: a read run again waits 2 x 6 s, and a readiness
    # check without its own bound waits the store call's 6 s.
    assert 5.5 < read_took < 11  # 1 s statement_timeout + CALL_MARGIN, not run again
    assert ready_took < 5.5  # its own bound (1 s), then a probe (connect_timeout, 2 s)
    proxy.resume()
    wait_for(lambda: _ready(store), timeout=10)
    assert store.get_call("org", "kept")["call_id"] == "kept"


def test_a_write_whose_commit_hangs_past_the_bound_is_outcome_unknown(faulty):
    store, proxy = faulty

    store.add_call(a_call(call_id="kept", call_status="registered"))
    proxy.hang(after=b"COMMIT")  # the server commits; its answer is never read

    started = time.monotonic()
    with pytest.raises(OutcomeUnknown, match="did not answer within 6 s"):
        store.change_call("org", "kept", lambda call: {**call, "call_status": "ongoing"})

    assert time.monotonic() - started < 8
    proxy.resume()
    assert store.get_call("org", "kept")["call_status"] == "ongoing"  # it was committed


def test_a_connection_cut_just_as_its_call_was_answered_is_closed_for_the_pool_to_drop(
    database_url,
):
    """The watchdog may cut a call's connection right after its statement was answered: no
    error then, but its socket is shut down. It is closed, so the pool drops it rather than
    handing it to the next call (which the hand-out check would have to catch)."""
    watchdog = postgres._Watchdog()
    conn = psycopg.connect(database_url, autocommit=True)
    try:
        with watchdog.watch(conn, 60.0) as watch:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            watch.deadline = 0.0  # its bound reached only now, the statement answered
            wait_for(lambda: watch.fired, timeout=5)
        assert conn.closed
    finally:
        conn.close()
        watchdog.close()


def _ready(store: PostgresStore) -> bool:
    try:
        store.check_ready()
    except StoreUnavailable:
        return False
    return True
