"""A real server process on a PostgreSQL database that stops answering (as a SIGSTOPped
server or a hung host: connections stay open, nothing comes back): requests and
/api/ready answer 503 within their bounds instead of hanging, and all is well again once
the database answers."""

from __future__ import annotations

import time

import httpx

from tests.conftest import SEED_REQUEST, running_server, wait_for
from tests.store.test_postgres_store import FaultyProxy

# The server's statement_timeout (s): a store call is cut 5 s after it (CALL_MARGIN), and
# /api/ready after 2 s (plus a probe of the database, connect_timeout 5 s, when no
# connection of the pool is free).
STATEMENT_TIMEOUT = 1.0
CALL_BOUND = STATEMENT_TIMEOUT + 5
READY_BOUND = 2 + 5


def test_a_hung_database_answers_503_within_the_bounds_and_recovers(tmp_path, database_url):
    proxy = FaultyProxy(database_url)
    with running_server(
        tmp_path / "unused",
        CALLS_DATABASE_URL=proxy.url(),
        CALLS_DATABASE_STATEMENT_TIMEOUT=str(STATEMENT_TIMEOUT),
    ) as server:
        headers = server.new_key_headers()
        created = httpx.post(
            f"{server.base_url}/api/calls/create", json=SEED_REQUEST, headers=headers
        )
        call_id = created.json()["data"]["call"]["call_id"]
        proxy.hang()
        try:
            started = time.monotonic()
            read = httpx.get(f"{server.base_url}/api/calls/{call_id}", headers=headers, timeout=60)
            read_took = time.monotonic() - started
            started = time.monotonic()
            ready = httpx.get(f"{server.base_url}/api/ready", timeout=60)
            ready_took = time.monotonic() - started
            alive = httpx.get(f"{server.base_url}/api/health", timeout=5)
        finally:
            proxy.resume()
        wait_for(lambda: httpx.get(f"{server.base_url}/api/ready", timeout=30).status_code == 200)
        after = httpx.get(f"{server.base_url}/api/calls/{call_id}", headers=headers, timeout=30)

    assert read.status_code == 503
    assert "did not answer within" in read.json()["error"]
    assert read_took < CALL_BOUND + 2
    assert ready.status_code == 503
    assert ready_took < READY_BOUND + 1
    assert alive.status_code == 200
    assert after.status_code == 200
    assert after.json()["data"]["call_id"] == call_id
