"""A real server process on PostgreSQL (CALLS_DATABASE_URL): it serves, keeps its calls
across restarts and says when the database is gone (several processes: test_processes)."""

from __future__ import annotations

import httpx

from tests.conftest import SEED_REQUEST, running_server, wait_for
from tests.postgres_server import TcpProxy


def test_a_server_on_postgresql_keeps_its_calls_across_a_restart(tmp_path, database_url):
    with running_server(tmp_path / "unused", CALLS_DATABASE_URL=database_url) as server:
        headers = server.new_key_headers()
        created = httpx.post(
            f"{server.base_url}/api/calls/create", json=SEED_REQUEST, headers=headers
        )
        call_id = created.json()["data"]["call"]["call_id"]
        ready = httpx.get(f"{server.base_url}/api/ready")
    with running_server(tmp_path / "unused", CALLS_DATABASE_URL=database_url) as server:
        got = httpx.get(f"{server.base_url}/api/calls/{call_id}", headers=headers)

    assert created.status_code == 200
    assert ready.json()["data"]["checks"] == {"store": "ok"}
    assert got.status_code == 200
    assert got.json()["data"]["call_id"] == call_id
    assert got.headers["etag"] == created.headers["etag"]
    assert not (tmp_path / "unused").exists()  # nothing written beside the database


def test_a_lost_database_is_a_503_naming_it_and_the_server_not_ready(tmp_path, database_url):
    proxy = TcpProxy(database_url)
    with running_server(tmp_path / "unused", CALLS_DATABASE_URL=proxy.url()) as server:
        headers = server.new_key_headers()
        proxy.cut()
        listed = httpx.get(f"{server.base_url}/api/calls", headers=headers, timeout=30)
        ready = httpx.get(f"{server.base_url}/api/ready", timeout=30)
        alive = httpx.get(f"{server.base_url}/api/health", timeout=30)

    assert listed.status_code == 503
    assert listed.json()["message"] == "Service unavailable"
    assert "database" in listed.json()["error"]
    assert ready.status_code == 503
    assert alive.status_code == 200


def test_a_server_recovers_by_itself_when_the_database_returns(tmp_path, database_url):
    proxy = TcpProxy(database_url)
    with running_server(tmp_path / "unused", CALLS_DATABASE_URL=proxy.url()) as server:
        headers = server.new_key_headers()
        proxy.cut()
        during = httpx.get(f"{server.base_url}/api/calls", headers=headers, timeout=30)
        proxy.restore()
        wait_for(lambda: httpx.get(f"{server.base_url}/api/ready", timeout=30).status_code == 200)
        after = httpx.post(
            f"{server.base_url}/api/calls/create", json=SEED_REQUEST, headers=headers, timeout=30
        )

    assert during.status_code == 503
    assert after.status_code == 200
