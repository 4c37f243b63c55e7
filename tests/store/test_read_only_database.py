"""A database that refuses writes as read-only (a standby reached during a failover, or a
server made read-only): a write is the plain 503 naming it, never a 500, and the connection
it was refused on is dropped, so that the next write goes where writes are taken."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from calls_server.domain import keys
from calls_server.domain.errors import StoreUnavailable
from calls_server.storage.postgres import PostgresStore


@pytest.fixture
def store(database_url: str) -> Iterator[PostgresStore]:
    """A store of one connection on a database of its own (made read-only by the tests)."""
    opened = PostgresStore(database_url, max_connections=1)
    yield opened
    opened.close()


def set_read_only(database_url: str, read_only: bool) -> None:
    """New sessions of the database read-only, and those open now ended (or new sessions
    taking writes again, and those open now left as they are: read-only)."""
    name = sql.Identifier(str(conninfo_to_dict(database_url)["dbname"]))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")  # this session's own
        if not read_only:
            conn.execute(
                sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(name)
            )
            return
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(name)
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def test_a_write_refused_as_read_only_is_the_plain_503_naming_it(store, database_url):
    set_read_only(database_url, True)

    with pytest.raises(StoreUnavailable, match="The database is read-only") as refused:
        store.add_organization(keys.new_organization(0, "acme"))

    assert type(refused.value) is StoreUnavailable  # not OutcomeUnknown: nothing was written
    assert refused.value.status_code == 503
    set_read_only(database_url, False)
    assert store.record_counts()["organizations"] == 0


def test_the_connection_a_write_was_refused_on_is_dropped_and_the_next_write_is_taken(
    store, database_url
):
    set_read_only(database_url, True)
    store.record_counts()  # the store's one connection is now a read-only session
    set_read_only(database_url, False)  # new sessions take writes; that one stays read-only

    with pytest.raises(StoreUnavailable):
        store.add_organization(keys.new_organization(0, "acme"))  # refused, and dropped
    store.add_organization(keys.new_organization(0, "acme"))  # on a new session

    assert store.get_organization("acme")["organization_id"] == "acme"
