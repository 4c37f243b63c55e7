"""`calls-server sandbox export|load|reset` against a real server with the sandbox on, and
the blocks of docs/sandbox.md ("Starting from a known state") run as written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SEED_REQUEST, RunningServer, cli, running_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "sandbox.md"
EVERY_KIND = {"agents": 1, "phone_numbers": 0, "webhooks": 0, "calls": 1, "batch_calls": 0}
NOTHING = {"agents": 0, "phone_numbers": 0, "webhooks": 0, "calls": 0, "batch_calls": 0}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real server with the sandbox on, shared by the module (each test its own org)."""
    data = tmp_path_factory.mktemp("sandbox") / "data"
    with running_server(data, CALLS_SANDBOX="true") as running:
        yield running


def client_env(server: RunningServer, headers: dict[str, str]) -> dict[str, str]:
    """The environment the sandbox commands read the server and key pair from."""
    return {
        "CALLS_MCP_URL": f"{server.base_url}/api",
        "CALLS_MCP_API_KEY": headers["X-API-KEY"],
        "CALLS_MCP_API_SECRET": headers["X-API-SECRET"],
    }


def set_up(server: RunningServer, headers: dict[str, str]) -> None:
    """An agent and a call, over the API."""
    api = f"{server.base_url}/api"
    agent = httpx.post(f"{api}/agents/create", json={"agent_name": "Ada"}, headers=headers)
    assert agent.status_code == 200, agent.text
    call = httpx.post(f"{api}/calls/create", json=SEED_REQUEST, headers=headers)
    assert call.status_code == 200, call.text


def state(server: RunningServer, headers: dict[str, str]) -> dict:
    response = httpx.get(f"{server.base_url}/api/sandbox/state", headers=headers)
    assert response.status_code == 200, response.text
    data: dict = response.json()["data"]
    return data


def test_export_reset_load_round_trip_the_organization(sandbox, tmp_path):
    headers = sandbox.new_key_headers()
    set_up(sandbox, headers)
    before, env, fixture = state(sandbox, headers), client_env(sandbox, headers), tmp_path / "f"

    exported = cli("sandbox", "export", "--out", str(fixture), env=env)
    reset = cli("sandbox", "reset", env=env)
    emptied = state(sandbox, headers)
    loaded = cli("sandbox", "load", str(fixture), env=env)

    assert exported.returncode == 0, exported.stderr
    assert json.loads(fixture.read_text()) == before
    assert (reset.returncode, json.loads(reset.stdout)) == (0, EVERY_KIND)
    assert emptied["agents"] == emptied["calls"] == []
    assert (loaded.returncode, json.loads(loaded.stdout)) == (0, EVERY_KIND)
    assert state(sandbox, headers) == before


def test_export_without_out_writes_the_fixture_to_stdout(sandbox):
    headers = sandbox.new_key_headers()
    set_up(sandbox, headers)

    exported = cli("sandbox", "export", env=client_env(sandbox, headers))

    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout) == state(sandbox, headers)


def test_the_options_name_the_server_and_key_pair_as_the_variables_do(sandbox):
    headers = sandbox.new_key_headers()
    options = ["--url", f"{sandbox.base_url}/api", "--api-key", headers["X-API-KEY"]]
    options += ["--api-secret", headers["X-API-SECRET"]]

    reset = cli("sandbox", "reset", *options)

    assert (reset.returncode, json.loads(reset.stdout)) == (0, NOTHING)


def test_a_refused_load_exits_1_with_the_apis_error(sandbox, tmp_path):
    headers = sandbox.new_key_headers()
    set_up(sandbox, headers)
    env, fixture = client_env(sandbox, headers), tmp_path / "fixture.json"
    cli("sandbox", "export", "--out", str(fixture), env=env)

    again = cli("sandbox", "load", str(fixture), env=env)

    assert again.returncode == 1
    assert "answered 400: Validation error: " in again.stderr
    assert "the organization has this agent already" in again.stderr
    assert again.stdout == ""


def test_a_server_with_the_sandbox_off_exits_1_with_not_found(server):
    headers = server.new_key_headers()

    reset = cli("sandbox", "reset", env=client_env(server, headers))

    assert reset.returncode == 1
    assert "answered 404: Not found: The sandbox is off on this server" in reset.stderr


def test_without_a_key_pair_it_exits_non_zero_naming_what_it_needs():
    env = {"CALLS_MCP_API_KEY": "", "CALLS_MCP_API_SECRET": ""}

    reset = cli("sandbox", "reset", env=env)

    assert reset.returncode != 0
    assert "CALLS_MCP_API_KEY and CALLS_MCP_API_SECRET" in reset.stderr


def test_an_unreadable_fixture_exits_2_naming_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")

    loaded = cli("sandbox", "load", str(broken), "--api-key", "k", "--api-secret", "s")

    assert loaded.returncode == 2
    assert f"cannot read the fixture {broken}" in loaded.stderr


def doc_block(marker: str) -> str:
    """The shell block that follows `<!-- marker -->` in docs/sandbox.md."""
    after = DOC.read_text().split(f"<!-- {marker} -->\n```sh\n", 1)[1]
    return after.split("\n```\n", 1)[0]


@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")), reason="the blocks need curl and jq"
)
def test_the_docs_blocks_save_empty_and_load_the_organization(sandbox, tmp_path):
    headers = sandbox.new_key_headers()
    set_up(sandbox, headers)
    before = state(sandbox, headers)
    port = sandbox.base_url.rsplit(":", 1)[1]
    env = {"KEY": headers["X-API-KEY"], "SECRET": headers["X-API-SECRET"], "PATH": "/usr/bin:/bin"}

    printed = {}
    for marker in ("sandbox-state-http", "sandbox-state-cli"):
        script = (
            doc_block(marker)
            .replace("8090", port)
            .replace("/tmp/", f"{tmp_path}/")
            .replace(".venv/bin/calls-server", f"{sys.executable} -m calls_server.cli")
        )
        done = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env
        )

        assert done.returncode == 0, done.stderr
        assert state(sandbox, headers) == before
        printed[marker] = done.stdout
    # The HTTP block's reset and load, one line each.
    http = [json.loads(line) for line in printed["sandbox-state-http"].splitlines()]
    assert http == [EVERY_KIND, EVERY_KIND]
