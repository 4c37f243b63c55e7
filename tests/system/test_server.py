"""End to end: the `calls-server` command and a real server process on loopback."""

from __future__ import annotations

import json

import httpx

from tests.conftest import ADMIN_TOKEN, SEED_REQUEST, cli, running_server

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_create_org_prints_a_key_pair_that_works_against_the_server(tmp_path):
    data = tmp_path / "data"
    created = cli("--data-dir", str(data), "create-org", "--id", "acme", "--name", "Acme")
    assert created.returncode == 0, created.stderr
    printed = json.loads(created.stdout)
    assert "shown only once" in created.stderr
    key = printed["api_key"]
    headers = {"X-API-KEY": key["api_key"], "X-API-SECRET": key["api_secret"]}

    with running_server(data) as server:
        response = httpx.post(
            f"{server.base_url}/api/calls/create", json=SEED_REQUEST, headers=headers
        )

    assert response.status_code == 200
    assert response.json()["data"]["organization_id"] == "acme"


def test_list_and_revoke_key_commands(tmp_path):
    data = tmp_path / "data"
    key = json.loads(cli("--data-dir", str(data), "create-org", "--id", "acme").stdout)["api_key"]

    listed = cli("--data-dir", str(data), "list-keys", "acme")
    revoked = cli("--data-dir", str(data), "revoke-key", "acme", key["api_key_id"])

    assert json.loads(listed.stdout)[0]["api_key_id"] == key["api_key_id"]
    assert key["api_secret"] not in listed.stdout
    assert json.loads(revoked.stdout)["status"] == "REVOKED"
    headers = {"X-API-KEY": key["api_key"], "X-API-SECRET": key["api_secret"]}
    with running_server(data) as server:
        assert httpx.get(f"{server.base_url}/api/calls", headers=headers).status_code == 401


def test_revoke_key_command_refuses_a_key_revoked_already(tmp_path):
    data = tmp_path / "data"
    key = json.loads(cli("--data-dir", str(data), "create-org", "--id", "acme").stdout)["api_key"]
    first = cli("--data-dir", str(data), "revoke-key", "acme", key["api_key_id"])

    second = cli("--data-dir", str(data), "revoke-key", "acme", key["api_key_id"])
    listed = cli("--data-dir", str(data), "list-keys", "acme")

    assert second.returncode == 1
    assert "already revoked" in second.stderr
    assert json.loads(listed.stdout)[0]["revoked_at"] == json.loads(first.stdout)["revoked_at"]


def test_cli_reports_an_unknown_organization_clearly(tmp_path):
    result = cli("--data-dir", str(tmp_path / "data"), "create-key", "ghost")

    assert result.returncode == 1
    assert "Organization with ID 'ghost' does not exist" in result.stderr


def test_cli_rejects_a_bad_setting_by_name(tmp_path):
    result = cli("--data-dir", str(tmp_path), "serve", env={"CALLS_PORT": "eighty"})

    assert result.returncode == 2
    assert "CALLS_PORT='eighty' is not valid" in result.stderr


def test_a_second_server_on_the_same_data_is_refused(tmp_path):
    data = tmp_path / "data"
    with running_server(data):
        second = cli("--data-dir", str(data), "serve", "--port", "1")
        offline = cli("--data-dir", str(data), "create-org")

    assert second.returncode == 2
    assert "is in use by another process" in second.stderr
    assert offline.returncode == 2
    assert "is in use by another process" in offline.stderr


def test_a_user_journey_over_http_survives_a_restart(tmp_path):
    data = tmp_path / "data"
    with running_server(data) as server:
        url = server.base_url
        headers = server.new_key_headers("acme")
        call = httpx.post(f"{url}/api/calls/create", json=SEED_REQUEST, headers=headers).json()
        call_id = call["data"]["call"]["call_id"]
        updated = httpx.put(
            f"{url}/api/calls/{call_id}", json={"call_status": "ongoing"}, headers=headers
        )
        assert updated.status_code == 200
        assert httpx.get(f"{url}/api/ui/").status_code == 200
        assert httpx.get(f"{url}/api/openapi.json").json()["info"]["title"]

    assert server.process.returncode == 0, server.log()
    with running_server(data) as server:
        got = httpx.get(f"{server.base_url}/api/calls/{call_id}", headers=headers)
        assert got.json()["data"]["call_status"] == "ONGOING"  # GET: UPPER, as upstream
        deleted = httpx.delete(f"{server.base_url}/api/calls/{call_id}", headers=headers)
        assert deleted.status_code == 200
