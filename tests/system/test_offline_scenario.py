"""The offline scenario of docs/sandbox.md, run as written: agents, a number, a post-call
webhook, a phone call without an agent and a web call, played out by the sandbox dialer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

README = Path(__file__).resolve().parents[2] / "docs" / "sandbox.md"


def scenario() -> str:
    """The shell block that follows the page's `offline-scenario` marker."""
    text = README.read_text()
    after = text.split("<!-- offline-scenario -->\n```sh\n", 1)[1]
    return after.split("\n```\n", 1)[0]


@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")), reason="the scenario needs curl and jq"
)
def test_the_readmes_offline_scenario_plays_out_calls_and_delivers_post_call_events(tmp_path):
    # The same script on free ports, in this test's own directory, with this interpreter.
    script = (
        scenario()
        .replace("8090", str(free_port()))
        .replace("8091", str(free_port()))
        .replace("/tmp/", f"{tmp_path}/")
        .replace(".venv/bin/calls-server", f"{sys.executable} -m calls_server.cli")
    )

    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )

    assert done.returncode == 0, done.stderr
    phone, web, *events = [json.loads(line) for line in done.stdout.splitlines()]
    assert phone["agent_id"].startswith("agent_")  # the number's outbound agent
    # Read back by GET: enum values in UPPER case, the disconnection reason's too.
    assert (phone["call_status"], phone["disconnection_reason"]) == ("ENDED", "VOICEMAIL_REACHED")
    assert (web["call_status"], web["disconnection_reason"]) == ("ENDED", "USER_HANGUP")
    assert web["duration_ms"] > 0
    assert sorted(event["event"] for event in events) == ["call_ended", "call_ended"]
