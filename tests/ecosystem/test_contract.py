"""Schemathesis against a real server process on loopback: every check, every phase.

Two runs, because Schemathesis picks the entry points of its stateful phase by guessing
which operations can succeed on random data; it guesses that the call creators need an
`agent_id` produced elsewhere and so, next to the admin API, never starts from them. Run
apart, the calls run starts from the creators and follows all their links.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, running_server

CONFIG_DIR = Path(__file__).parents[1] / "contract"
MAX_EXAMPLES = os.environ.get("CONTRACT_MAX_EXAMPLES", "30")
SEED = os.environ.get("CONTRACT_SEED", "1")

pytestmark = pytest.mark.contract


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("contract") / "data"
    # Webhooks registered by Schemathesis point anywhere: deliver nothing (only loopback
    # traffic here), and accept http:// so that no schema-valid URL is refused.
    with running_server(
        data,
        CALLS_VALIDATE_RESPONSES="true",
        CALLS_WEBHOOK_DELIVERY="false",
        CALLS_WEBHOOK_ALLOW_HTTP="true",
        # Let generated URLs register (nothing is delivered), so that the stateful phase
        # reaches the webhook operations; tests/api/test_egress.py covers the address rules.
        CALLS_WEBHOOK_ALLOW_NETWORKS="0.0.0.0/0,::/0",
        CALLS_WEBHOOKS_PER_ORGANIZATION="1000",  # Schemathesis registers hundreds
    ) as running:
        yield running
    assert running.process.returncode == 0, running.log()


@pytest.fixture(scope="module")
def api_key_headers(server) -> list[str]:
    return [f"{name}: {value}" for name, value in server.new_key_headers().items()]


def schemathesis(
    server, headers: list[str], *selection: str, config: Path = CONFIG_DIR / "schemathesis.toml"
) -> subprocess.CompletedProcess[str]:
    # As the README tells users to run it in their CI: from anywhere, with only the shipped
    # configuration file.
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{server.base_url}/api/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        SEED,
        "--generation-database",
        "none",
        "--no-color",
        *selection,
    ]
    for header in headers:
        command += ["-H", header]
    outside = server.data_dir.parent  # a directory holding no project file
    return subprocess.run(command, cwd=outside, capture_output=True, text=True, timeout=1200)


def test_calls_and_schedule_operations_conform_to_the_contract(server, api_key_headers):
    result = schemathesis(
        server, api_key_headers, "--include-tag", "calls", "--include-tag", "schedule"
    )

    assert result.returncode == 0, result.stdout + result.stderr + server.log()
    assert_every_link_covered(result.stdout)


def test_webhook_admin_and_health_operations_conform_to_the_contract(server, api_key_headers):
    headers = [*api_key_headers, f"Authorization: Bearer {ADMIN_TOKEN}"]

    result = schemathesis(
        server,
        headers,
        *("--include-tag", "webhooks", "--include-tag", "admin", "--include-tag", "health"),
    )

    assert result.returncode == 0, result.stdout + result.stderr + server.log()
    assert_every_link_covered(result.stdout)


def test_batch_call_operations_conform_to_the_contract(server, api_key_headers, tmp_path):
    # A batch needs an agent of the organization, which random data never names: the
    # stateful phase cannot start from a created batch, so every operation on one is
    # pointed at a draft made here (the shipped configuration, plus its id).
    headers = dict(header.split(": ", 1) for header in api_key_headers)
    base = server.base_url
    agent = httpx.post(f"{base}/api/agents/create", json={"agent_name": "a"}, headers=headers)
    draft = {
        "from_number": "+14157774444",
        "agent_id": agent.json()["data"]["agent_id"],
        "status": "draft",
        "tasks": [{"to_number": "+14157774445"}],
    }
    batch = httpx.post(f"{base}/batch-call", json=draft, headers=headers).json()["data"]
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        (CONFIG_DIR / "schemathesis.toml").read_text()
        + f'\n[parameters]\nbatch_call_id = "{batch["batch_call_id"]}"\n'
    )

    result = schemathesis(server, api_key_headers, "--include-tag", "batch_calls", config=config)

    assert result.returncode == 0, result.stdout + result.stderr + server.log()


def assert_every_link_covered(output: str) -> None:
    """The stateful phase followed every link of the selected operations."""
    links = re.search(r"API Links: +(\d+) covered / (\d+) selected", output)
    assert links is not None, output
    assert links[1] == links[2], output
