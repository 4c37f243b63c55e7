"""The pytest plugin (calls_server/pytest_plugin.py) as users meet it: the README's example
test run as written, in a pytest of its own, against the sandbox server the plugin starts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from calls_server.pytest_plugin import CallsReceiver, SandboxError, _started

REPOSITORY = Path(__file__).resolve().parents[2]
SECTION = "## Your integration's tests against a sandbox"


def readme_example() -> str:
    """The first Python block of the README's section on the plugin."""
    text = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_pytest_finds_the_plugin_by_its_entry_point():
    found = [e for e in entry_points(group="pytest11") if e.value == "calls_server.pytest_plugin"]

    assert len(found) == 1


def test_the_readme_example_passes_as_written(tmp_path):
    (tmp_path / "test_integration.py").write_text(readme_example(), encoding="utf-8")

    result = run_pytest(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_a_failing_control_request_says_what_the_sandbox_answered(tmp_path):
    (tmp_path / "test_backwards.py").write_text(
        "import pytest\n"
        "from calls_server.pytest_plugin import SandboxError\n\n"
        "def test_backwards(calls_sandbox):\n"
        "    calls_sandbox.freeze('2030-01-07T09:00:00Z')\n"
        "    with pytest.raises(SandboxError) as refused:\n"
        "        calls_sandbox.advance(to='2030-01-01T00:00:00Z')\n"
        "    assert refused.value.status_code == 400\n"
        "    assert 'backwards' in refused.value.body['error']\n\n"
        "def test_the_clock_is_back_on_real_time_after_a_reset(calls_sandbox):\n"
        "    assert calls_sandbox.now_ms() < 1893456000000  # before 2030\n",
        encoding="utf-8",
    )

    result = run_pytest(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_sandbox_helpers_drive_a_real_server(tmp_path):
    environment = {"CALLS_SANDBOX": "true", "CALLS_LOG_LEVEL": "warning"}
    with _started(tmp_path, environment) as sandbox, sandbox.client() as api:
        frozen = sandbox.freeze("2030-01-07T09:00:00Z")
        moved = sandbox.advance(seconds=60)
        rule = sandbox.fault(operation_id="getCall", action="error", status=503)
        refused = api.get("/calls/nope")
        listed = sandbox.faults()
        api.post("/calls/create", json={"agent_id": "ag"})
        exported = sandbox.export()
        emptied = sandbox.reset()
        loaded = sandbox.load(exported)
        (tmp_path / "fixture.json").write_text(json.dumps(sandbox.export()), encoding="utf-8")
        sandbox.reset()
        from_file = sandbox.load(tmp_path / "fixture.json")
        resumed = sandbox.resume()

        assert frozen["frozen"] is True
        assert moved["now_ms"] == frozen["now_ms"] + 60_000
        assert refused.status_code == 503
        assert refused.headers["Sandbox-Fault"] == rule["fault_id"]
        assert [r["fault_id"] for r in listed] == [rule["fault_id"]]
        assert emptied["calls"] == 1
        assert loaded["calls"] == from_file["calls"] == 1
        assert resumed["frozen"] is False
        assert sandbox.headers["X-API-KEY"] == sandbox.api_key
        assert "Traceback" not in sandbox.log()
    assert sandbox.process.poll() is not None  # stopped


def test_the_receiver_records_what_it_is_sent_and_waits_for_it():
    receiver = CallsReceiver()
    try:
        threading.Timer(0.1, lambda: httpx.post(receiver.url, json={"event": "x"})).start()

        receiver.wait_for(lambda events: len(events) == 1)

        assert receiver.events == [{"event": "x"}]
        assert receiver.received[0].path == "/hooks"
        with pytest.raises(AssertionError, match="not received"):
            receiver.wait_for(lambda events: len(events) == 2, timeout=0.2)
    finally:
        receiver.close()


def test_a_refused_control_carries_the_status_and_envelope():
    error = SandboxError(400, {"error": "no"})

    assert (error.status_code, error.body) == (400, {"error": "no"})
    assert "400" in str(error)
