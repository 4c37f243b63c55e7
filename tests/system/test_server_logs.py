"""A real server's log lines and first-run messages."""

from __future__ import annotations

import json

import httpx

from tests.conftest import cli, running_server


def test_the_server_logs_every_request_with_its_id(tmp_path):
    with running_server(tmp_path / "data", CALLS_LOG_LEVEL="info", CALLS_LOG_JSON="true") as server:
        httpx.get(f"{server.base_url}/api/calls", headers={"X-Request-ID": "desk-4714"})
        log = server.log()

    access = [json.loads(line) for line in log.splitlines() if "desk-4714" in line]
    assert access, log
    assert all(entry["request_id"] == "desk-4714" for entry in access)


def test_a_first_run_says_how_to_get_a_key(tmp_path):
    with running_server(tmp_path / "data") as server:
        log = server.log()

    assert "calls-server serve --create-org" in log


def test_serve_can_create_the_first_organization_and_print_its_key_once(tmp_path):
    with running_server(tmp_path / "data", serve_args=("--create-org", "acme")) as server:
        log = server.log()
        key = log.split("export KEY=", 1)[1].split()[0]
        secret = log.split("SECRET=", 1)[1].split()[0]
        response = httpx.get(
            f"{server.base_url}/api/calls", headers={"X-API-KEY": key, "X-API-SECRET": secret}
        )

    assert response.status_code == 200
    assert response.json()["data"]["organization_id"] == "acme"
    listed = cli("--data-dir", str(tmp_path / "data"), "list-keys", "acme")
    assert len(json.loads(listed.stdout)) == 1
