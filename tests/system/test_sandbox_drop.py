"""A `drop` fault on a real server: the connection closed with no answer at all, before
the operation ran, or after it (its outcome unknown to the client)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import running_server


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("drop") / "data", CALLS_SANDBOX="true") as s:
        yield s


@pytest.fixture
def api(sandbox):
    with httpx.Client(base_url=f"{sandbox.base_url}/api", headers=sandbox.new_key_headers()) as c:
        yield c


def calls(api) -> list[dict]:
    listed: list[dict] = api.get("/calls").json()["data"]["calls"]
    return listed


def test_a_dropped_connection_gets_no_answer_and_the_operation_does_not_run(api, sandbox):
    api.post("/sandbox/faults", json={"operation_id": "createCall", "action": "drop", "times": 1})

    with pytest.raises(httpx.RemoteProtocolError):
        api.post("/calls/create", json={"agent_id": "ag"})

    assert calls(api) == []
    assert api.post("/calls/create", json={"agent_id": "ag"}).status_code == 200
    assert "ASGI callable returned without" not in sandbox.log()


def test_a_connection_dropped_after_the_operation_leaves_its_outcome_unknown(api):
    rule = {"operation_id": "createCall", "action": "drop", "after": True, "times": 1}
    api.post("/sandbox/faults", json=rule)
    headers = {"Idempotency-Key": "unknown-outcome"}

    with pytest.raises(httpx.RemoteProtocolError):
        api.post("/calls/create", json={"agent_id": "ag"}, headers=headers)
    retried = api.post("/calls/create", json={"agent_id": "ag"}, headers=headers)

    assert retried.status_code == 200
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert [c["call_id"] for c in calls(api)] == [retried.json()["data"]["call"]["call_id"]]
