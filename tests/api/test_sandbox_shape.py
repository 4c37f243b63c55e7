"""Sandbox calls shaped as upstream's call object, field for field, on a server answering in
upstream's casing; the sandbox standing in for LiveKit and for the carrier of imports; and
the same seed playing the same requests the same way on two fresh servers."""

from __future__ import annotations

import io
import time
import wave
from typing import Any

import pytest
from livekit import api

from calls_server.integrations.livekit import (
    SANDBOX_API_KEY,
    SANDBOX_API_SECRET,
    SANDBOX_SERVER_URL,
)
from calls_server.services.sandbox import SandboxDialer, recorded_draw, recording
from calls_server.storage import EmbeddedStore
from tests.conftest import add_tenant, app_client, assert_error, wait_for

SCALE = 0.001  # a 95 s call lasts 95 ms
SANDBOX = {"enum_case": "upstream", "sandbox": True, "sandbox_time_scale": SCALE}
PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}
E2E_KEYS = {"min", "max", "num", "p50", "p90", "p95", "p99", "values"}


@pytest.fixture
def client(store, data_dir):
    with app_client(store, data_dir=data_dir, **SANDBOX) as test_client:
        yield test_client


def phone_call(client, tenant, **metadata: Any) -> str:
    body = {**PHONE, "metadata": metadata}
    response = client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["call"]["call_id"])


def web_call(client, tenant, **metadata: Any) -> dict[str, Any]:
    body = {"agent_id": "agent-123", "metadata": metadata}
    response = client.post("/api/calls/create-web-call", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def final(client, tenant, call_id: str) -> dict[str, Any]:
    """The call once ended, as GET answers it."""

    def got() -> dict[str, Any]:
        found: dict[str, Any] = client.get(f"/api/calls/{call_id}", headers=tenant.headers).json()
        return found["data"]

    wait_for(lambda: got()["call_status"] in ("ENDED", "ERROR"))
    return got()


def completed(client, tenant, duration_ms: int = 95_000) -> dict[str, Any]:
    call_id = phone_call(
        client, tenant, sandbox_outcome="completed", sandbox_duration_ms=duration_ms
    )
    return final(client, tenant, call_id)


# -- the transcript --------------------------------------------------------------------------------
def test_transcript_entries_are_assistant_and_user_turns(client, tenant):
    call = completed(client, tenant)

    roles = [entry["role"] for entry in call["transcript_object"]]
    assert roles == ["assistant", "user", "assistant", "user", "assistant"]
    assert call["transcript"].splitlines()[0].startswith("Assistant: ")


def test_each_transcript_entry_has_a_unix_ms_timestamp_within_the_call(client, tenant):
    call = completed(client, tenant)

    for entry in call["transcript_object"]:
        assert isinstance(entry["timestamp"], int)
        assert call["start_timestamp"] <= entry["timestamp"] <= call["end_timestamp"]
        assert entry["timestamp"] == call["start_timestamp"] + entry["words"][0]["start"]


def test_word_timings_are_ms_from_the_start_and_never_past_the_calls_duration(client, tenant):
    call = completed(client, tenant, duration_ms=95_000)

    assert call["call_duration"] == 95  # 95 s at a thousandth
    words = [w for entry in call["transcript_object"] for w in entry["words"]]
    assert all(isinstance(w["start"], int) and isinstance(w["end"], int) for w in words)
    assert all(0 <= w["start"] <= w["end"] <= call["call_duration"] for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert words[-1]["end"] > call["call_duration"] // 2  # spread over the call


def test_word_timings_fit_the_call_unscaled_too(store, data_dir, tenant):
    with app_client(store, data_dir=data_dir, **{**SANDBOX, "sandbox_time_scale": 1}) as client:
        call = completed(client, tenant, duration_ms=300)

    words = [w for entry in call["transcript_object"] for w in entry["words"]]
    assert call["call_duration"] == 300
    assert max(w["end"] for w in words) <= 300


def test_the_cost_is_that_of_the_duration_played(client, tenant):
    short, longer = completed(client, tenant, 60_000), completed(client, tenant, 120_000)

    assert (short["call_duration"], longer["call_duration"]) == (60, 120)
    assert short["call_cost"]["combined_cost"] == round(60 / 60_000 * 0.07, 6)
    assert longer["call_cost"]["combined_cost"] == 2 * short["call_cost"]["combined_cost"]


# -- latency ---------------------------------------------------------------------------------------
def test_a_completed_call_has_upstreams_e2e_latency_of_each_reply(client, tenant):
    call = completed(client, tenant)

    e2e = call["latency"]["e2e"]
    assert set(e2e) == E2E_KEYS
    assert e2e["num"] == len(e2e["values"]) == 2  # two user turns, each answered
    assert e2e["min"] <= e2e["p50"] <= e2e["p90"] <= e2e["p99"] <= e2e["max"]
    entries = call["transcript_object"]
    first_wait = entries[2]["words"][0]["start"] - entries[1]["words"][-1]["end"]
    assert e2e["values"][0] == first_wait


def test_a_voicemail_has_no_latency_as_nobody_was_answered(client, tenant):
    call = final(client, tenant, phone_call(client, tenant, sandbox_outcome="voicemail"))

    assert call["latency"] is None
    assert [e["role"] for e in call["transcript_object"]] == ["assistant"]


# -- disconnection_reason casing -------------------------------------------------------------------
def test_disconnection_reason_is_upper_where_a_call_is_shown_as_listed(client, tenant):
    call_id = completed(client, tenant)["call_id"]

    got = client.get(f"/api/calls/{call_id}", headers=tenant.headers).json()["data"]
    listed = client.get("/api/calls", headers=tenant.headers).json()["data"]["calls"]
    searched = client.post("/api/calls", json={}, headers=tenant.headers).json()["data"]["calls"]

    assert got["disconnection_reason"] == "USER_HANGUP"
    assert listed[0]["disconnection_reason"] == searched[0]["disconnection_reason"] == "USER_HANGUP"


def test_disconnection_reason_is_lower_in_an_update_answer_as_its_other_enums(client, tenant):
    call_id = completed(client, tenant)["call_id"]

    response = client.put(
        f"/api/calls/{call_id}", json={"metadata": {"x": 1}}, headers=tenant.headers
    )

    updated = response.json()["data"]["call"]
    assert (updated["call_status"], updated["disconnection_reason"]) == ("ended", "user_hangup")


def test_a_disconnection_reason_put_in_upper_case_is_stored_in_lower_case(client, tenant, store):
    created = client.post("/api/calls/create", json={"agent_id": "a"}, headers=tenant.headers)
    call_id = created.json()["data"]["call"]["call_id"]
    body = {"call_status": "ENDED", "disconnection_reason": "VOICEMAIL_REACHED"}

    client.put(f"/api/calls/{call_id}", json=body, headers=tenant.headers)

    assert store.get_call(tenant.organization_id, call_id)["disconnection_reason"] == (
        "voicemail_reached"
    )
    got = client.get(f"/api/calls/{call_id}", headers=tenant.headers).json()["data"]
    assert got["disconnection_reason"] == "VOICEMAIL_REACHED"


# -- calls never answered --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("outcome", "status", "reason"),
    [
        ("no_answer", "ENDED", "DIAL_NO_ANSWER"),
        ("busy", "ENDED", "DIAL_BUSY"),
        ("failed", "ERROR", "DIAL_FAILED"),
    ],
)
def test_a_phone_call_never_answered_has_no_start_no_duration_and_nothing_said(
    client, tenant, outcome, status, reason
):
    call = final(client, tenant, phone_call(client, tenant, sandbox_outcome=outcome))

    assert (call["call_status"], call["disconnection_reason"]) == (status, reason)
    assert (call["start_timestamp"], call["call_duration"]) == (None, None)
    assert call["end_timestamp"] is not None
    assert (call["transcript"], call["transcript_object"]) == (None, [])
    assert (call["latency"], call["recording_url"]) == (None, None)
    assert call["call_cost"] == {"combined_cost": 0}


def test_a_web_call_nobody_joins_ends_without_ever_being_ongoing_or_started(client, tenant):
    created = web_call(client, tenant, sandbox_outcome="no_answer")

    call = final(client, tenant, created["data"]["call"]["call_id"])

    statuses = [e["data"]["new_status"] for e in call["events"] if "new_status" in e["data"]]
    assert statuses == ["ended"]
    assert (call["start_timestamp"], call["call_duration"]) == (None, None)


# -- web calls -------------------------------------------------------------------------------------
def test_web_calls_are_never_drawn_into_voicemail_or_a_busy_line(store):
    sandbox = SandboxDialer(store, "http://x", seed=7)
    web = {"call_id": "call_1", "call_type": "web_call", "metadata": {}}

    outcomes = {sandbox.plan(web, f"call:{n}").outcome for n in range(500)}

    assert outcomes == {"completed", "no_answer", "failed"}


def test_a_web_call_scripted_to_voicemail_does_not_end_in_voicemail(client, tenant):
    created = web_call(client, tenant, sandbox_outcome="voicemail")

    call = final(client, tenant, created["data"]["call"]["call_id"])

    assert call["disconnection_reason"] != "VOICEMAIL_REACHED"
    assert call["call_analysis"]["in_voicemail"] is False


def test_a_sandbox_web_call_is_created_with_upstreams_message_and_a_token(client, tenant):
    body = web_call(client, tenant)

    data = body["data"]
    room = data["call"]["call_id"]
    token = data["web_call_info"]["access_token"]
    assert body["message"] == "Web call created successfully"
    assert data["livekit_connection"] == {
        "server_url": SANDBOX_SERVER_URL,
        "token": token,
        "room_name": room,
    }
    assert data["web_call_info"]["room_name"] == room


def test_a_sandbox_web_call_token_is_signed_with_the_sandbox_key_for_its_room(client, tenant):
    data = web_call(client, tenant)["data"]

    token = data["web_call_info"]["access_token"]
    claims = api.TokenVerifier(SANDBOX_API_KEY, SANDBOX_API_SECRET).verify(token)
    assert claims.video.room == data["call"]["call_id"]
    assert claims.video.room_join is True
    assert claims.attributes == {"call_id": data["call"]["call_id"], "agent_id": "agent-123"}


def test_web_call_info_shows_the_session_ongoing_while_the_call_is_registered(client, tenant):
    data = web_call(client, tenant)["data"]

    assert (data["call"]["call_status"], data["call"]["call_type"]) == ("REGISTERED", "WEB_CALL")
    assert (data["call_type"], data["web_call_info"]["call_status"]) == ("web_call", "ongoing")


# -- recordings ------------------------------------------------------------------------------------
def test_the_recording_lasts_as_long_as_the_call(client, tenant):
    call = completed(client, tenant, duration_ms=1_500_000)  # 1.5 s here
    path = "/" + call["recording_url"].split("://", 1)[1].split("/", 1)[1]

    response = client.get(path)

    with wave.open(io.BytesIO(response.content)) as wav:
        assert wav.getframerate() == 8000
        assert wav.getnframes() == call["call_duration"] * 8  # 8 frames a millisecond


def test_an_hour_long_recording_lasts_the_hour():
    made = recording("call_hour", 3_600_000)

    with wave.open(io.BytesIO(made)) as wav:
        assert wav.getnframes() == 3600 * 8000


# -- phone-number import ---------------------------------------------------------------------------
IMPORT = {
    "phone_number": "+14155551234",
    "provider": "twilio",
    "account_sid": "ACxxxxxxxx",
    "auth_token": "secret",
    "nickname": "Main Office Line",
}


def test_a_sandbox_import_is_validated_as_upstream_answers_a_validated_number(client, tenant):
    response = client.post("/api/phone-numbers/import", json=IMPORT, headers=tenant.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "Phone number validated and imported successfully"
    assert body["data"]["validation_result"] == {
        "phone_number": "+14155551234",
        "friendly_name": "Main Office Line",
        "capabilities": {"voice": True, "sms": True},
        "status": "active",
        "message": "Phone number validated successfully",
    }
    number = body["data"]["phone_number"]
    assert number["inbound_trunk_id"].startswith("trunk_inbound_")
    assert number["outbound_trunk_id"].startswith("trunk_outbound_")
    assert number["dispatch_rule_id"].startswith("dispatch_")


@pytest.mark.parametrize(
    ("number", "why"),
    [("+15005550001", "invalid phone number"), ("+15005550007", "not a number of the carrier")],
)
def test_an_import_of_a_number_scripted_to_fail_validation_is_refused_and_not_stored(
    client, tenant, number, why
):
    response = client.post(
        "/api/phone-numbers/import", json={**IMPORT, "phone_number": number}, headers=tenant.headers
    )

    body = assert_error(response, 400, why)
    assert body["message"] == "Validation error"
    assert_error(client.get(f"/api/phone-numbers/{number}", headers=tenant.headers), 404)


# -- the draw: the order of creation, not the random ids -------------------------------------------
def test_unscripted_calls_in_a_row_are_each_drawn_on_their_own(client, tenant):
    ids = [phone_call(client, tenant) for _ in range(12)]

    played = [final(client, tenant, call_id) for call_id in ids]

    assert len({(c["disconnection_reason"], c["call_duration"]) for c in played}) > 1


def test_a_restarted_server_draws_on_from_the_last_draw_recorded(store, data_dir, tenant):
    with app_client(store, data_dir=data_dir, **SANDBOX) as client:
        before = [web_call(client, tenant)["data"]["call"]["call_id"] for _ in range(3)]
    with app_client(store, data_dir=data_dir, **SANDBOX) as client:
        after = web_call(client, tenant)["data"]["call"]["call_id"]

    draws = [recorded_draw(store.get_call(tenant.organization_id, c)) for c in [*before, after]]
    assert draws == [0, 1, 2, 3]


class RunningClock:
    """The wall clock, moved on by `advance` (to bring retries due without waiting)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += int(seconds * 1000)


RETRIES = {
    "retry_config": {"enabled": True, "max_attempts": 3},
    "retry_rules": [
        {"condition": c, "enabled": True, "retry_timing": {"type": "AFTER", "duration_minutes": 1}}
        for c in ("no_answer", "busy", "failed", "voicemail")
    ],
}
# What differs from server to server however alike they play: ids, and times of the clock.
UNCOMPARED = {"id", "call_id", "agent_id", "created_at", "updated_at", "start_timestamp"}
UNCOMPARED |= {"end_timestamp", "recording_url", "events", "metadata"}


def comparable(call: dict[str, Any]) -> dict[str, Any]:
    """`call` without ids and clock times (event names and the recording's presence kept)."""
    shown = {k: v for k, v in call.items() if k not in UNCOMPARED}
    shown["events"] = [e["event"] for e in call["events"]]
    shown["recorded"] = call["recording_url"] is not None
    shown["transcript_object"] = [
        {k: v for k, v in entry.items() if k != "timestamp"} for entry in call["transcript_object"]
    ]
    kept = ("batch_call_id", "task_id")
    shown["metadata"] = {k: v for k, v in call["metadata"].items() if k not in kept}
    return shown


def scenario(store: EmbeddedStore, data_dir: Any) -> dict[str, Any]:
    """Phone calls, web calls and a batch with retries, unscripted, on a fresh server with
    seed 42; what came of them, in the order they were asked for."""
    tenant = add_tenant(store, "test-org-123")
    h, clock = tenant.headers, RunningClock()
    settings = {**SANDBOX, "sandbox_seed": 42, "scheduler_interval": 0.05}
    with app_client(store, clock=clock, data_dir=data_dir, **settings) as client:
        agent = client.post("/api/agents/create", json={"agent_name": "Campaigner"}, headers=h)
        agent_id = agent.json()["data"]["agent_id"]
        ids = [phone_call(client, tenant) for _ in range(4)]
        ids += [web_call(client, tenant)["data"]["call"]["call_id"] for _ in range(3)]
        batch = {
            "name": "Renewals",
            "from_number": "+14157774444",
            "agent_id": agent_id,
            "tasks": [{"to_number": f"+1555000{n:04d}"} for n in range(8)],
            **RETRIES,
        }
        sent = client.post("/batch-call", json=batch, headers=h)
        assert sent.status_code == 200, sent.text
        batch_id = sent.json()["data"]["batch_call_id"]
        ids += [phone_call(client, tenant) for _ in range(3)]
        ids.append(web_call(client, tenant)["data"]["call"]["call_id"])
        calls = [final(client, tenant, call_id) for call_id in ids]

        def batch_done() -> bool:
            clock.advance(61)  # the next retries fall due
            got = client.get(f"/batch-call/{batch_id}", headers=h).json()["data"]
            return got["status"] in ("completed", "failed")

        wait_for(batch_done, timeout=30)
        shown = client.get(f"/batch-call/{batch_id}", headers=h).json()["data"]
        tasks = client.get(f"/batch-call/{batch_id}/tasks", headers=h).json()["data"]["tasks"]
        listed = client.get("/api/calls?limit=100", headers=h).json()["data"]["calls"]
    attempts = sorted(
        (c for c in listed if c["metadata"].get("batch_call_id") == batch_id),
        key=lambda c: (c["to_number"], c["metadata"]["attempt"]),
    )
    counters = ("status", "total", "sent", "picked_up", "completed", "failed", "pending")
    return {
        "calls": [comparable(c) for c in calls],
        "batch": {k: shown[k] for k in counters},
        "tasks": [(t["index"], t["status"], t["attempts"], t["outcome"]) for t in tasks],
        "attempts": [comparable(c) for c in attempts],
    }


@pytest.mark.embedded_only
def test_two_fresh_servers_with_one_seed_play_the_same_requests_the_same_way(tmp_path):
    first_store, second_store = EmbeddedStore(tmp_path / "a"), EmbeddedStore(tmp_path / "b")
    try:
        first = scenario(first_store, tmp_path / "a")
        second = scenario(second_store, tmp_path / "b")
    finally:
        first_store.close()
        second_store.close()

    assert first == second
    outcomes = {c["disconnection_reason"] for c in first["calls"] + first["attempts"]}
    assert len(outcomes) > 1  # drawn, not all alike
    assert max(t[2] for t in first["tasks"]) > 1  # some task was retried
