"""Sandbox calls under way when their server is killed (SIGKILL): the sandbox played them in
that process's memory, so the next process ends them (`error`, `error_unknown`, the event
saying why) instead of leaving them `ongoing` for ever; calls that had ended are left as
they were, and, on one PostgreSQL database, calls a live process plays go on. Real server
processes."""

from __future__ import annotations

import signal
from typing import Any

import httpx

from tests.conftest import RunningServer, running_server, wait_for

SANDBOX = {
    "CALLS_SANDBOX": "true",
    "CALLS_SANDBOX_TIME_SCALE": "0.01",  # a web call's participant joins after 10 ms
    "CALLS_SCHEDULER_INTERVAL": "0.1",
}
LONG = {"sandbox_outcome": "completed", "sandbox_duration_ms": 3_600_000}  # 36 s here
SHORT = {"sandbox_outcome": "completed", "sandbox_duration_ms": 1_000}  # 10 ms here
CUT_OFF_EVENT = "Call ended by the server"


def new_agent(base: str, headers: dict[str, str]) -> str:
    response = httpx.post(f"{base}/api/agents/create", json={"agent_name": "A"}, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["agent_id"])


def phone_call(base: str, headers: dict[str, str], agent: str, metadata: dict[str, Any]) -> str:
    body = {
        "from_number": "+14157774444",
        "to_number": "+12137774445",
        "override_agent_id": agent,
        "metadata": metadata,
    }
    response = httpx.post(f"{base}/api/calls/create-phone-call", json=body, headers=headers)
    assert response.json()["data"]["status"] == "call_initiated", response.text
    return str(response.json()["data"]["call"]["call_id"])


def web_call(base: str, headers: dict[str, str], agent: str, metadata: dict[str, Any]) -> str:
    body = {"agent_id": agent, "metadata": metadata}
    response = httpx.post(f"{base}/api/calls/create-web-call", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["call"]["call_id"])


def call(base: str, headers: dict[str, str], call_id: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{base}/api/calls/{call_id}", headers=headers).json()["data"]
    return found


def status(server: RunningServer, headers: dict[str, str], call_id: str) -> str:
    return str(call(server.base_url, headers, call_id)["call_status"]).lower()


def kill(server: RunningServer) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()


def assert_cut_off(found: dict[str, Any]) -> None:
    assert found["call_status"].lower() == "error"
    assert found["disconnection_reason"] == "ERROR_UNKNOWN"  # GET: in upstream's casing
    assert found["events"][-1]["event"] == CUT_OFF_EVENT
    assert "stopped with its process" in found["events"][-1]["data"]["reason"]


def test_sandbox_calls_under_way_at_a_kill_are_ended_at_the_restart_and_ended_ones_kept(
    tmp_path,
):
    data = tmp_path / "data"
    with running_server(data, **SANDBOX) as first:
        base, headers = first.base_url, first.new_key_headers()
        agent = new_agent(base, headers)
        long_calls = [phone_call(base, headers, agent, LONG) for _ in range(3)]
        long_calls.append(web_call(base, headers, agent, LONG))
        short_calls = [
            phone_call(base, headers, agent, SHORT),
            web_call(base, headers, agent, SHORT),
        ]
        wait_for(lambda: all(status(first, headers, c) == "ongoing" for c in long_calls))
        wait_for(lambda: all(status(first, headers, c) == "ended" for c in short_calls))
        ended_before = {c: call(base, headers, c) for c in short_calls}
        kill(first)

    with running_server(data, **SANDBOX) as second:  # answers once the calls are settled
        after = {c: call(second.base_url, headers, c) for c in long_calls + short_calls}

    for call_id in long_calls:
        assert_cut_off(after[call_id])
    assert {c: after[c] for c in short_calls} == ended_before


def test_a_live_process_ends_the_sandbox_calls_of_a_killed_one_on_the_same_database(
    tmp_path, database_url
):
    env = {**SANDBOX, "CALLS_DATABASE_URL": database_url}
    with (
        running_server(tmp_path / "a" / "unused", **env) as killed,
        running_server(tmp_path / "b" / "unused", **env) as alive,
    ):
        headers = killed.new_key_headers()
        agent = new_agent(killed.base_url, headers)
        theirs = [phone_call(killed.base_url, headers, agent, LONG) for _ in range(3)]
        mine = [phone_call(alive.base_url, headers, agent, LONG) for _ in range(3)]
        kill(killed)

        # The live process saw the killed one serving: it gives it 10 s to serve again (a
        # failover's presence gap, services/claimants.py) before it ends its calls.
        wait_for(lambda: all(status(alive, headers, c) == "error" for c in theirs), timeout=30)
        after = {c: call(alive.base_url, headers, c) for c in theirs + mine}

    for call_id in theirs:
        assert_cut_off(after[call_id])
    for call_id in mine:  # the live process plays them still
        assert after[call_id]["call_status"].lower() == "ongoing"
