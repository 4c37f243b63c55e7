"""A real server stopped while a call fell due, and started again."""

from __future__ import annotations

import time

import httpx

from tests.conftest import running_server, wait_for

SECRET = "dialer-secret-0123456789"


PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}


def test_a_call_that_fell_due_while_the_server_was_down_is_dialed_once_on_start(tmp_path, receiver):
    data = tmp_path / "data"
    dialer = {"CALLS_DIALER_URL": receiver.url, "CALLS_DIALER_SECRET": SECRET}
    # The first server never looks for due calls (a minute between looks), however slow the
    # machine: the call falls due for the second one to find at start.
    with running_server(data, **dialer, CALLS_SCHEDULER_INTERVAL="60") as server:
        base = server.base_url + "/api"
        headers = server.new_key_headers()
        due = int(time.time()) + 1
        body = {**PHONE, "scheduled_timestamp": due}
        created = httpx.post(f"{base}/calls/create-phone-call", json=body, headers=headers)
        call_id = created.json()["data"]["call"]["call_id"]
    wait_for(lambda: time.time() >= due + 1)  # a real server reads the real clock
    assert receiver.received == []

    with running_server(data, **dialer, CALLS_SCHEDULER_INTERVAL="0.1") as server:
        wait_for(lambda: len(receiver.received) == 1)
        got = httpx.get(f"{server.base_url}/api/calls/{call_id}", headers=headers).json()

    assert len(receiver.received) == 1
    assert got["data"]["call_status"] == "ONGOING"  # a GET answers UPPER case, as upstream
    due_event = next(e for e in got["data"]["events"] if e["event"] == "Scheduled call due")
    assert due_event["data"]["late_by_seconds"] >= 1
