"""The sandbox dialer: calls play out without a telephone network, as scripted or seeded."""

from __future__ import annotations

import inspect
import io
import time
import wave
from urllib.parse import parse_qs, urlsplit

import pytest

from calls_server.handlers import sandbox as sandbox_handlers
from calls_server.services.sandbox import SandboxDialer, recording
from tests.conftest import app_client, assert_error, wait_for

# A two-minute call lasts 0.12 s here.
SANDBOX = {"sandbox": True, "sandbox_time_scale": 0.001}
PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}


@pytest.fixture
def client(store, data_dir):
    with app_client(store, data_dir=data_dir, **SANDBOX) as test_client:
        yield test_client


def place(client, tenant, **metadata) -> dict:
    body = {**PHONE, "metadata": metadata}
    response = client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    data: dict = response.json()["data"]
    return data


def final(client, tenant, call_id: str) -> dict:
    def settled() -> bool:
        got = client.get(f"/api/calls/{call_id}", headers=tenant.headers).json()["data"]
        return got["call_status"] in ("ended", "error")

    wait_for(settled)
    call: dict = client.get(f"/api/calls/{call_id}", headers=tenant.headers).json()["data"]
    return call


def test_a_phone_call_is_accepted_like_upstream_then_ends_with_what_a_call_leaves(client, tenant):
    data = place(client, tenant, sandbox_outcome="completed", sandbox_duration_ms=95_000)

    assert (data["status"], data["call"]["call_status"]) == ("call_initiated", "ongoing")
    call = final(client, tenant, data["call"]["call_id"])
    assert call["call_status"] == "ended"
    assert call["disconnection_reason"] == "user_hangup"
    assert call["call_duration"] == call["end_timestamp"] - call["start_timestamp"] > 0
    assert call["transcript"].startswith("Assistant: ")
    first = call["transcript_object"][0]
    assert first["role"] == "assistant"
    assert first["words"][0]["word"] == "Hello,"
    assert first["words"][0]["end"] > first["words"][0]["start"] >= 0
    assert call["call_analysis"]["call_successful"] is True
    assert call["call_cost"]["combined_cost"] > 0
    assert [e["event"] for e in call["events"]][-1] == "Call updated via API"


@pytest.mark.parametrize(
    ("outcome", "status", "reason"),
    [
        ("voicemail", "ended", "voicemail_reached"),
        ("no_answer", "ended", "dial_no_answer"),
        ("busy", "ended", "dial_busy"),
        ("failed", "error", "dial_failed"),
    ],
)
def test_the_outcome_is_scripted_by_the_calls_metadata(client, tenant, outcome, status, reason):
    data = place(client, tenant, sandbox_outcome=outcome)

    call = final(client, tenant, data["call"]["call_id"])

    assert (call["call_status"], call["disconnection_reason"]) == (status, reason)
    assert call["call_analysis"]["in_voicemail"] is (outcome == "voicemail")


def test_the_recording_url_is_served_by_the_server_as_a_wav(client, tenant):
    data = place(client, tenant, sandbox_outcome="completed")
    call = final(client, tenant, data["call"]["call_id"])

    path = call["recording_url"].split("://", 1)[1].split("/", 1)[1]
    response = client.get("/" + path)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].endswith('.wav"')
    with wave.open(io.BytesIO(response.content)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (1, 8000)
        assert wav.getnframes() > 0


@pytest.mark.parametrize(
    ("asked", "first", "last"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, None), ("bytes=-44", -44, None)],
)
def test_a_range_of_the_recording_is_answered_206_so_a_player_can_seek(
    client, tenant, asked, first, last
):
    path = recording_path(client, tenant)
    whole = client.get(path).content

    part = client.get(path, headers={"Range": asked})

    size = len(whole)
    end = size - 1 if last is None else last
    start = size + first if first < 0 else first
    assert part.status_code == 206
    assert part.content == whole[start : end + 1]
    assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert part.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("asked", ["bytes=0-9, 20-29", "items=0-9", "bytes=x-9", "bytes=9-0"])
def test_a_range_the_server_does_not_serve_gets_the_whole_file(client, tenant, asked):
    path = recording_path(client, tenant)

    response = client.get(path, headers={"Range": asked})

    assert response.status_code == 200
    assert response.content == client.get(path).content


def test_a_range_past_the_end_is_416_saying_the_size(client, tenant):
    path = recording_path(client, tenant)
    size = len(client.get(path).content)

    response = client.get(path, headers={"Range": f"bytes={size}-"})

    assert_error(response, 416, "starts past its end")
    assert response.headers["content-range"] == f"bytes */{size}"


def test_a_web_call_is_joined_then_ends(client, tenant):
    body = {"agent_id": "agent-123", "metadata": {"sandbox_outcome": "completed"}}
    created = client.post("/api/calls/create-web-call", json=body, headers=tenant.headers)

    call = final(client, tenant, created.json()["data"]["call"]["call_id"])

    statuses = [e["data"].get("new_status") for e in call["events"] if e["data"].get("new_status")]
    assert statuses == ["ongoing", "ended"]


def test_a_scheduled_call_plays_out_when_it_falls_due(store, data_dir, tenant):
    settings = {**SANDBOX, "scheduler_interval": 0.05}
    with app_client(store, data_dir=data_dir, **settings) as client:
        body = {**PHONE, "scheduled_timestamp": int(time.time()) + 1}
        created = client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)
        call = final(client, tenant, created.json()["data"]["call"]["call_id"])

    assert call["metadata"]["execution_status"] == "executed"
    assert call["call_status"] in ("ended", "error")


def test_the_same_seed_plays_the_same_calls_the_same_way(store):
    first = SandboxDialer(store, "http://x", seed=42)
    again = SandboxDialer(store, "http://x", seed=42)
    other = SandboxDialer(store, "http://x", seed=43)
    call = {"call_id": "call_1", "metadata": {}}
    keys = [f"call:{n}" for n in range(50)]

    assert [first.plan(call, k) for k in keys] == [again.plan(call, k) for k in keys]
    assert [first.plan(call, k) for k in keys] != [other.plan(call, k) for k in keys]


def test_the_recording_is_404_with_the_sandbox_off(store, data_dir):
    with app_client(store, data_dir=data_dir) as client:
        response = client.get("/api/sandbox/recordings/call_x")

    assert response.status_code == 404


# -- recordings: only a call's own, at its unguessable URL, made off the event loop -------------
def recording_path(client, tenant) -> str:
    data = place(client, tenant, sandbox_outcome="completed")
    url = final(client, tenant, data["call"]["call_id"])["recording_url"]
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def test_a_recording_of_a_call_that_does_not_exist_is_404_in_the_envelope(client, tenant):
    path = recording_path(client, tenant)
    known = path.split("?")[0].rsplit("/", 1)[1]

    response = client.get(path.replace(known, "call_00000000-0000-0000-0000-000000000000"))

    assert_error(response, 404)


def test_a_recording_url_without_the_calls_token_is_404(client, tenant):
    path = recording_path(client, tenant)
    bare, query = path.split("?")

    wrong = client.get(f"{bare}?{query.rsplit('token=', 1)[0]}token=guessed")
    missing = client.get(bare)

    assert_error(wrong, 404)
    assert_error(missing, 404)
    assert client.get(path).status_code == 200


def test_a_recording_url_names_the_calls_organization_and_a_token_of_its_own(client, tenant):
    first, second = recording_path(client, tenant), recording_path(client, tenant)

    query = parse_qs(urlsplit(first).query)
    assert query["organization_id"] == [tenant.organization_id]
    assert len(query["token"][0]) >= 32
    assert query["token"] != parse_qs(urlsplit(second).query)["token"]


def test_a_recording_is_made_on_a_worker_thread_and_kept_for_the_next_fetch():
    # A plain function: the app runs it on a worker thread, never on the event loop.
    assert not inspect.iscoroutinefunction(sandbox_handlers.get_sandbox_recording)
    assert recording("call_x", 1500) is recording("call_x", 1500)


# -- a dial made again ----------------------------------------------------------------------------
def test_a_second_dial_of_a_call_the_sandbox_is_playing_plays_nothing_more(store):
    sandbox = SandboxDialer(store, "http://x", time_scale=0.001)
    job = {"call_id": "call_1", "organization_id": "org", "metadata": {}}

    first, again = sandbox.dial(job), sandbox.dial(job)

    assert (first.accepted, again.accepted) == (True, True)
    assert len(sandbox._due) == 1  # one end scheduled: one call played
