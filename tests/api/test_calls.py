"""The `calls` handlers: create, get, list, update, delete."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from livekit import api

from tests.conftest import SEED_REQUEST, Tenant, app_client, assert_error, create_call

# The upstream reference page of POST /api/calls/create, as published (a copy: the suite reads
# nothing outside the repository).
SEED_PAGE = Path(__file__).parents[1] / "fixtures" / "seed-create-call.txt"
UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def seed_response() -> dict[str, Any]:
    """The response printed on the reference page for POST /api/calls/create."""
    text = SEED_PAGE.read_text()
    start = text.index('{\n  "message"')
    response, _ = json.JSONDecoder().raw_decode(text[start:])
    return dict(response)


def same_shape(expected: Any, actual: Any, path: str = "") -> None:
    """Every field of `expected` is in `actual` with a value of the same JSON type."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} missing"
            same_shape(value, actual[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), path
        for item, other in zip(expected, actual, strict=False):
            same_shape(item, other, path + "[]")
    elif expected is None:
        assert actual is None, f"{path} is {actual!r}, expected null"
    else:
        assert type(actual) is type(expected), f"{path}: {actual!r} vs {expected!r}"


# -- POST /api/calls/create -------------------------------------------------------------------


def test_create_call_answers_the_seed_request_in_the_seed_response_shape(client, tenant):
    response = client.post("/api/calls/create", json=SEED_REQUEST, headers=tenant.headers)

    assert response.status_code == 200
    body = response.json()
    same_shape(seed_response(), body)
    call = body["data"]["call"]
    assert body["message"] == "Call created successfully"
    assert body["data"]["organization_id"] == tenant.organization_id == call["organization_id"]
    assert re.fullmatch(f"call_{UUID4}", call["call_id"])
    assert (call["call_status"], call["call_type"], call["direction"]) == (
        "registered",
        "phone_call",
        "outbound",
    )
    assert call["metadata"] == SEED_REQUEST["metadata"]
    assert [e["event"] for e in call["events"]] == ["Call created via API"]
    assert call["events"][0]["data"] == {}
    assert call["events"][0]["session_time"] == 0


def test_create_call_stamps_created_and_updated_in_milliseconds(client, tenant):
    before = time.time_ns() // 1_000_000
    call = create_call(client, tenant)
    after = time.time_ns() // 1_000_000

    assert before <= call["created_at"] == call["updated_at"] <= after
    assert call["events"][0]["timestamp"] == call["created_at"]


def test_create_call_is_stored(client, tenant, store):
    call = create_call(client, tenant)

    assert store.get_call(tenant.organization_id, call["call_id"]) == call


def test_create_call_keeps_a_custom_call_id(client, tenant):
    call = create_call(client, tenant, agent_id="a", call_id="call-456")

    assert call["call_id"] == "call-456"


def test_create_call_with_an_existing_call_id_is_409(client, tenant, store):
    first = create_call(client, tenant, agent_id="a", call_id="call-456")

    response = client.post(
        "/api/calls/create", json={"agent_id": "b", "call_id": "call-456"}, headers=tenant.headers
    )

    assert_error(response, 409, "call-456")
    assert store.get_call(tenant.organization_id, "call-456") == first


def test_create_call_accepts_lower_case_enums_and_answers_lower_case(client, tenant):
    call = create_call(client, tenant, agent_id="a", call_type="web_call", direction="inbound")

    assert (call["call_type"], call["direction"]) == ("web_call", "inbound")


def test_create_call_defaults_to_a_phone_call_without_direction(client, tenant):
    call = create_call(client, tenant, agent_id="a")

    assert (call["call_type"], call["direction"]) == ("phone_call", None)


def test_a_json_body_sent_without_a_content_type_is_accepted_as_upstreams_examples_send_it(
    client, tenant
):
    response = client.post(
        "/api/calls/create", content=b'{"agent_id": "agent-123"}', headers=tenant.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["data"]["call"]["agent_id"] == "agent-123"


CURL_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_a_json_object_sent_as_curl_d_labels_it_is_read_as_json(client, tenant, store):
    """`curl -d '{...}'` without -H 'Content-Type: application/json', as the upstream
    pages' examples are written, labels the body form-urlencoded."""
    response = client.post(
        "/api/calls/create",
        content=b'  {"agent_id": "agent-123"}',
        headers={**tenant.headers, **CURL_FORM},
    )

    assert response.status_code == 200, response.text
    call_id = response.json()["data"]["call"]["call_id"]
    assert store.get_call(tenant.organization_id, call_id)["agent_id"] == "agent-123"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/agents/create", b'{"agent_name": "Ada"}'),
        ("post", "/api/post-call-webhooks/create", b'{"name": "C", "url": "https://a.example"}'),
        ("post", "/api/calls", b'{"limit": 5}'),
        ("post", "/api/calls/create-web-call", b'{"agent_id": "a"}'),
    ],
)
def test_every_json_operation_reads_a_curl_d_body_as_json(client, tenant, method, path, body):
    response = client.request(method, path, content=body, headers={**tenant.headers, **CURL_FORM})

    assert response.is_success, response.text


def test_a_curl_d_body_that_is_broken_json_is_400_naming_the_problem(client, tenant, store):
    response = client.post(
        "/api/calls/create", content=b'{"agent_id": ', headers={**tenant.headers, **CURL_FORM}
    )

    assert_error(response, 400, "JSON")
    assert client.get("/api/calls", headers=tenant.headers).json()["data"]["calls"] == []


def test_a_body_declared_as_another_media_type_is_415(client, tenant):
    headers = {**tenant.headers, "Content-Type": "text/plain"}

    response = client.post("/api/calls/create", content=b'{"agent_id": "a"}', headers=headers)

    assert_error(response, 415, "text/plain")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "'agent_id' is a required property"),
        ({"agent_id": ""}, "should be non-empty - 'agent_id'"),
        ({"agent_id": 5}, "is not of type 'string'"),
        ({"agent_id": "a", "call_type": "FAX"}, "'FAX' is not one of"),
        ({"agent_id": "a", "colour": "red"}, "'colour' was unexpected"),
        ({"agent_id": "a", "metadata": []}, "is not of type 'object'"),
        ({"agent_id": "a", "call_id": "has space"}, "does not match"),
    ],
)
def test_create_call_rejects_an_invalid_body_with_400(client, tenant, store, body, reason):
    response = client.post("/api/calls/create", json=body, headers=tenant.headers)

    assert_error(response, 400, reason)
    assert store.list_calls(tenant.organization_id, _all())[1] == 0


# -- POST /api/calls/create-phone-call ---------------------------------------------------------

PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}


def test_create_phone_call_records_an_outbound_call_and_says_it_was_not_dialed(client, tenant):
    response = client.post("/api/calls/create-phone-call", json=PHONE, headers=tenant.headers)

    assert response.status_code == 200
    body = response.json()
    data = body["data"]
    assert "not dialed" in body["message"]
    assert "no outbound dialer" in body["message"]
    assert data["status"] == "dialer_not_configured"
    assert data["call_type"] == "phone_call"
    call = data["call"]
    assert (call["call_status"], call["call_type"], call["direction"]) == (
        "registered",
        "phone_call",
        "outbound",
    )
    assert (call["from_number"], call["to_number"], call["agent_id"]) == (
        "+14157774444",
        "+12137774445",
        "ag",
    )
    assert data["phone_call_info"] == {
        "from_number": "+14157774444",
        "to_number": "+12137774445",
        "direction": "outbound",
        "call_status": "registered",
    }


def test_create_phone_call_with_a_future_time_schedules_it(client, tenant, store):
    at = int(time.time()) + 3600
    response = client.post(
        "/api/calls/create-phone-call",
        json={**PHONE, "scheduled_timestamp": at, "metadata": {"k": "v"}},
        headers=tenant.headers,
    )

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["status"] == "call_scheduled"
    call = data["call"]
    assert call["call_status"] == "scheduled" == data["phone_call_info"]["call_status"]
    assert call["scheduled_timestamp"] == at
    assert call["metadata"] == {
        "k": "v",
        "is_scheduled": True,
        "scheduled_timestamp": at,
        "execution_status": "pending",
    }
    assert [e["event"] for e in call["events"]] == ["Phone call created via API", "Call scheduled"]
    assert store.get_call(tenant.organization_id, call["call_id"]) == call


def test_create_phone_call_with_a_past_time_is_400_and_stores_nothing(client, tenant, store):
    response = client.post(
        "/api/calls/create-phone-call",
        json={**PHONE, "scheduled_timestamp": int(time.time()) - 10},
        headers=tenant.headers,
    )

    assert_error(response, 400, "not in the future")
    assert store.list_calls(tenant.organization_id, _all())[1] == 0


@pytest.mark.parametrize("number", ["4157774444", "+0157774444", "+1415777444455555", "+1 415"])
def test_create_phone_call_rejects_a_number_that_is_not_e164(client, tenant, number):
    response = client.post(
        "/api/calls/create-phone-call", json={**PHONE, "to_number": number}, headers=tenant.headers
    )

    assert_error(response, 400, "does not match")


# -- POST /api/calls/create-web-call -----------------------------------------------------------


def test_create_web_call_records_a_web_call_and_says_no_token_was_issued(client, tenant):
    response = client.post(
        "/api/calls/create-web-call",
        json={"agent_id": "ag", "metadata": {"session_type": "support"}, "is_widget_call": True},
        headers=tenant.headers,
    )

    assert response.status_code == 200
    body = response.json()
    data = body["data"]
    assert "no access token" in body["message"]
    assert "LiveKit" in body["message"]
    call = data["call"]
    assert (call["call_type"], call["call_status"]) == ("web_call", "registered")
    assert call["metadata"] == {"session_type": "support", "is_widget_call": True}
    assert data["web_call_info"] == {
        "room_name": call["call_id"],
        "access_token": None,
        "call_status": "registered",
        "agent_id": "ag",
    }
    assert data["livekit_connection"] == {
        "server_url": None,
        "token": None,
        "room_name": call["call_id"],
    }


def test_create_web_call_without_agent_is_400(client, tenant):
    assert_error(
        client.post("/api/calls/create-web-call", json={}, headers=tenant.headers),
        400,
        "'agent_id' is a required property",
    )


# -- GET /api/calls/{callId} ---------------------------------------------------------------------


def test_get_call_returns_the_whole_call(client, tenant):
    call = create_call(client, tenant)

    response = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers)

    assert response.status_code == 200
    assert response.json() == {
        "message": "Call retrieved successfully",
        "status": "success",
        "error": None,
        "data": call,
    }


def test_get_call_of_an_unknown_id_is_404_naming_it(client, tenant):
    body = assert_error(
        client.get("/api/calls/call_abc123", headers=tenant.headers),
        404,
        "Call with ID 'call_abc123' does not exist",
    )
    assert body["message"] == "Call not found"


# -- GET and POST /api/calls ---------------------------------------------------------------------


def _all() -> Any:
    from calls_server.domain.listing import CallQuery

    return CallQuery(page=0, limit=100, sort_by="created_at", sort_order="ascending", filters={})


def make_calls(client, tenant: Tenant) -> dict[str, dict[str, Any]]:
    """Five calls in different states, keyed by a short name."""
    made = {
        "a1_phone": create_call(client, tenant, agent_id="a1", call_type="PHONE_CALL"),
        "a1_web": create_call(client, tenant, agent_id="a1", call_type="WEB_CALL"),
        "a2_in": create_call(client, tenant, agent_id="a2", direction="INBOUND"),
        "a2_out": create_call(client, tenant, agent_id="a2", direction="OUTBOUND"),
        "a3": create_call(client, tenant, agent_id="a3"),
    }
    changes = {
        "a1_phone": {
            "call_status": "ongoing",
            "start_timestamp": 1_000,
            "transcript": "Hello, I want a REFUND please",
        },
        "a2_in": {"call_status": "ongoing", "start_timestamp": 5_000},
        "a2_out": {
            "call_status": "ongoing",
            "start_timestamp": 10_000,
            "transcript_object": [{"role": "user", "content": "cancel my subscription"}],
        },
    }
    for name, change in changes.items():
        r = client.put(f"/api/calls/{made[name]['call_id']}", json=change, headers=tenant.headers)
        assert r.status_code == 200, r.text
    for name, end in (("a1_phone", 61_000), ("a2_in", 6_000)):
        r = client.put(
            f"/api/calls/{made[name]['call_id']}",
            json={"call_status": "ENDED", "end_timestamp": end},
            headers=tenant.headers,
        )
        assert r.status_code == 200, r.text
    return made


def listed(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [call["call_id"] for call in response.json()["data"]["calls"]]


def names(made: dict[str, dict[str, Any]], *keys: str) -> list[str]:
    return [made[k]["call_id"] for k in keys]


def test_search_calls_defaults_to_20_newest_first(client, tenant):
    made = make_calls(client, tenant)

    response = client.post("/api/calls", headers=tenant.headers)

    assert listed(response) == names(made, "a3", "a2_out", "a2_in", "a1_web", "a1_phone")
    data = response.json()["data"]
    assert response.json()["message"] == "Calls retrieved successfully"
    assert (data["sort_by"], data["sort_order"], data["applied_filters"]) == (
        "created_at",
        "descending",
        {},
    )
    assert data["pagination"] == {
        "page": 0,
        "limit": 20,
        "total": 5,
        "total_count": 5,
        "total_pages": 1,
        "has_next_page": False,
        "has_previous_page": False,
        "next_cursor": None,
    }
    assert data["returned_count"] == 5
    assert data["organization_id"] == tenant.organization_id


def test_search_calls_pages_through_the_results(client, tenant):
    made = make_calls(client, tenant)
    body = {"page": 1, "limit": 2, "sort_order": "ascending"}

    response = client.post("/api/calls", json=body, headers=tenant.headers)

    assert listed(response) == names(made, "a2_in", "a2_out")
    pagination = response.json()["data"]["pagination"]
    assert pagination["total_pages"] == 3
    assert pagination["has_next_page"]
    assert pagination["has_previous_page"]
    assert response.json()["data"]["returned_count"] == 2


def test_search_calls_past_the_last_page_is_empty(client, tenant):
    make_calls(client, tenant)

    response = client.post("/api/calls", json={"page": 9, "limit": 2}, headers=tenant.headers)

    assert listed(response) == []
    assert response.json()["data"]["pagination"]["has_next_page"] is False


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({"call_status": ["ONGOING", "ended"]}, ["a1_phone", "a2_in", "a2_out"]),
        ({"call_status": ["registered"]}, ["a1_web", "a3"]),
        ({"call_type": ["WEB_CALL"]}, ["a1_web"]),
        ({"direction": "inbound"}, ["a2_in"]),
        ({"direction": ["INBOUND", "OUTBOUND"]}, ["a2_in", "a2_out"]),
        ({"agent_id": "a1"}, ["a1_phone", "a1_web"]),
        ({"agent_id": ["a1", "a3"]}, ["a1_phone", "a1_web", "a3"]),
        ({"duration_ms": {"lower_threshold": 2_000}}, ["a1_phone"]),
        ({"duration_ms": {"lower_threshold": 1_000, "upper_threshold": 1_000}}, ["a2_in"]),
        (
            {"start_timestamp": {"lower_threshold": 4_000, "upper_threshold": 10_000}},
            ["a2_in", "a2_out"],
        ),
        ({"transcript_search": "refund"}, ["a1_phone"]),
        ({"transcript_search": "Subscription"}, ["a2_out"]),
        ({"call_status": ["ongoing"], "agent_id": "a1"}, []),
    ],
)
def test_search_calls_filters(client, tenant, criteria, expected):
    made = make_calls(client, tenant)
    body = {"sort_order": "ascending", "filter_criteria": criteria}

    response = client.post("/api/calls", json=body, headers=tenant.headers)

    assert listed(response) == names(made, *expected)


def test_search_calls_filters_on_created_at_range(client, tenant):
    made = make_calls(client, tenant)
    since = made["a2_in"]["created_at"]
    criteria = {"created_at": {"lower_threshold": since}}
    body = {"sort_order": "ascending", "filter_criteria": criteria}

    found = listed(client.post("/api/calls", json=body, headers=tenant.headers))

    assert made["a2_in"]["call_id"] in found
    assert found == [c["call_id"] for c in made.values() if c["created_at"] >= since]


def test_search_calls_echoes_the_applied_filters_as_sent(client, tenant):
    made = make_calls(client, tenant)
    criteria = {"call_status": ["ONGOING", "ENDED"], "agent_id": "a2", "direction": "INBOUND"}

    response = client.post("/api/calls", json={"filter_criteria": criteria}, headers=tenant.headers)

    # As upstream's list page shows them: UPPER stays UPPER, one agent_id stays one string;
    # matching is case-insensitive all the same.
    assert response.json()["data"]["applied_filters"] == criteria
    assert listed(response) == names(made, "a2_in")


def test_search_calls_sorts_by_start_timestamp_with_missing_values_last(client, tenant):
    made = make_calls(client, tenant)
    body = {"sort_by": "start_timestamp", "sort_order": "descending"}

    found = listed(client.post("/api/calls", json=body, headers=tenant.headers))

    assert found[:3] == names(made, "a2_out", "a2_in", "a1_phone")
    assert set(found[3:]) == set(names(made, "a1_web", "a3"))


def test_search_calls_over_the_limit_cap_is_400_naming_it(client, tenant):
    response = client.post("/api/calls", json={"limit": 101}, headers=tenant.headers)

    assert_error(response, 400, "greater than the maximum of 100")


@pytest.mark.parametrize(
    "body",
    [
        {"page": -1},
        {"sort_by": "colour"},
        {"sort_order": "up"},
        {"filter_criteria": {"call_status": ["lost"]}},
        {"filter_criteria": {"duration_ms": {"min": 1}}},
        {"filter_criteria": {"mood": "happy"}},
    ],
)
def test_search_calls_rejects_an_invalid_body_with_400(client, tenant, body):
    assert_error(client.post("/api/calls", json=body, headers=tenant.headers), 400)


def test_list_calls_takes_the_filters_as_query_parameters(client, tenant):
    made = make_calls(client, tenant)
    query = (
        "?call_status=ONGOING&call_status=ended&agent_id=a2&duration_ms_upper_threshold=1000"
        "&sort_order=ascending&limit=5"
    )

    response = client.get("/api/calls" + query, headers=tenant.headers)

    assert listed(response) == names(made, "a2_in")
    data = response.json()["data"]
    assert data["applied_filters"] == {
        "call_status": ["ONGOING", "ended"],
        "agent_id": ["a2"],
        "duration_ms": {"upper_threshold": 1000},
    }
    assert data["pagination"]["limit"] == 5


def test_list_calls_with_an_unknown_query_parameter_is_400_naming_it(client, tenant):
    assert_error(client.get("/api/calls?colour=red", headers=tenant.headers), 400, "colour")


def test_list_calls_with_a_bad_parameter_value_is_400_naming_the_parameter(client, tenant):
    assert_error(
        client.get("/api/calls?limit=1000", headers=tenant.headers),
        400,
        "Invalid query parameter 'limit'",
    )


# -- PUT /api/calls/{callId} ---------------------------------------------------------------------


def put(client, tenant, call_id: str, body: dict[str, Any]):
    return client.put(f"/api/calls/{call_id}", json=body, headers=tenant.headers)


def test_update_call_merges_metadata_and_removes_null_keys(client, tenant, store):
    call = create_call(client, tenant)

    response = put(
        client, tenant, call["call_id"], {"metadata": {"priority": None, "updated_field": "x"}}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Call updated successfully"
    assert body["data"]["operation"] == "update"
    assert body["data"]["organization_id"] == tenant.organization_id
    expected = {"customer_id": "cust-001", "campaign": "summer-2024", "updated_field": "x"}
    assert body["data"]["call"]["metadata"] == expected
    assert store.get_call(tenant.organization_id, call["call_id"])["metadata"] == expected


def test_the_metadata_of_a_scheduled_call_can_be_sent_back_as_a_get_returned_it(
    client, tenant, store
):
    at = int(time.time()) + 3600
    body = {**PHONE, "scheduled_timestamp": at, "metadata": {"k": "v"}}
    created = client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)
    call_id = created.json()["data"]["call"]["call_id"]
    fetched = client.get(f"/api/calls/{call_id}", headers=tenant.headers).json()["data"]
    sent_back = {**fetched["metadata"], "k": "w", "execution_status": "made-up"}

    response = put(client, tenant, call_id, {"metadata": sent_back})

    assert response.status_code == 200, response.text
    expected = {**fetched["metadata"], "k": "w"}  # the server's schedule keys stay its own
    assert response.json()["data"]["call"]["metadata"] == expected
    assert store.get_call(tenant.organization_id, call_id)["metadata"] == expected


def test_schedule_keys_sent_when_creating_a_call_are_ignored(client, tenant):
    body = {"agent_id": "a", "metadata": {"is_scheduled": True, "k": "v"}}

    response = client.post("/api/calls/create", json=body, headers=tenant.headers)

    assert response.status_code == 200
    assert response.json()["data"]["call"]["metadata"] == {"k": "v"}


def test_update_call_appends_an_event_naming_the_changed_fields(client, tenant):
    call = create_call(client, tenant)

    updated = put(client, tenant, call["call_id"], {"call_status": "ONGOING", "transcript": "hi"})

    events = updated.json()["data"]["call"]["events"]
    assert [e["event"] for e in events] == ["Call created via API", "Call updated via API"]
    assert events[1]["data"] == {
        "updated_fields": ["call_status", "transcript"],
        "previous_status": "registered",
        "new_status": "ongoing",
    }


def test_update_call_sets_the_fields_a_dialer_reports(client, tenant):
    call = create_call(client, tenant)
    report = {
        "direction": "INBOUND",
        "from_number": "+14155550100",
        "to_number": "+14155550101",
        "disconnection_reason": "USER_HANGUP",
        "transcript_object": [{"role": "agent", "content": "Hi"}],
        "transcript_with_tool_calls": [{"role": "tool", "name": "lookup"}],
        "recording_url": "https://example.test/rec.wav",
        "public_log_url": "https://example.test/log",
        "latency": {"e2e": {"min": 1, "max": 3, "num": 2, "p50": 2, "values": [1, 3]}},
        "call_analysis": {"call_successful": True, "call_summary": "ok", "in_voicemail": False},
        "call_cost": {"combined_cost": 0.12},
        "telephony_identifier": {"call_sid": "CA1", "conference_sid": "CF1"},
        "opt_out_sensitive_data_storage": True,
    }

    updated = put(client, tenant, call["call_id"], report).json()["data"]["call"]

    lowered = {"direction": "inbound", "disconnection_reason": "user_hangup"}  # stored so
    assert {k: updated[k] for k in report} == {**report, **lowered}


def test_update_call_to_ongoing_then_ended_derives_start_end_and_duration(client, tenant):
    call = create_call(client, tenant)

    ongoing = put(client, tenant, call["call_id"], {"call_status": "ongoing"}).json()
    ended = put(client, tenant, call["call_id"], {"call_status": "ended"}).json()

    start = ongoing["data"]["call"]["start_timestamp"]
    final = ended["data"]["call"]
    assert start is not None
    assert final["start_timestamp"] == start
    assert final["end_timestamp"] >= start
    assert final["call_duration"] == final["end_timestamp"] - start
    assert final["events"][-1]["session_time"] == final["end_timestamp"] - start


def test_update_call_derives_duration_from_given_timestamps(client, tenant):
    call = create_call(client, tenant)
    body = {"call_status": "ongoing", "start_timestamp": 1_000, "end_timestamp": 4_500}

    updated = put(client, tenant, call["call_id"], body).json()["data"]["call"]

    assert updated["call_duration"] == 3_500


def test_update_call_with_end_before_start_is_400_and_changes_nothing(client, tenant, store):
    call = create_call(client, tenant)
    body = {"start_timestamp": 5_000, "end_timestamp": 4_000}

    assert_error(put(client, tenant, call["call_id"], body), 400, "before start_timestamp")
    assert store.get_call(tenant.organization_id, call["call_id"]) == call


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ([], "ongoing"),
        ([], "error"),
        ([], "ended"),
        (["ongoing"], "ended"),
        (["ongoing"], "error"),
        ([], "registered"),
        (["ongoing"], "ongoing"),
    ],
)
def test_update_call_allows_the_lifecycle_transitions(client, tenant, path, target):
    call = create_call(client, tenant)
    for status in path:
        assert put(client, tenant, call["call_id"], {"call_status": status}).status_code == 200

    response = put(client, tenant, call["call_id"], {"call_status": target.upper()})

    assert response.status_code == 200, response.text
    assert response.json()["data"]["call"]["call_status"] == target


@pytest.mark.parametrize(
    ("path", "target", "reason"),
    [
        ([], "scheduled", "from 'registered' to 'scheduled'"),
        (["ongoing"], "registered", "from 'ongoing' to 'registered'"),
        (["ongoing", "ended"], "ongoing", "'ended' is final"),
        (["error"], "ended", "'error' is final"),
    ],
)
def test_update_call_refuses_illegal_transitions_with_409(
    client, tenant, store, path, target, reason
):
    call = create_call(client, tenant)
    for status in path:
        assert put(client, tenant, call["call_id"], {"call_status": status}).status_code == 200
    before = store.get_call(tenant.organization_id, call["call_id"])

    body = assert_error(put(client, tenant, call["call_id"], {"call_status": target}), 409, reason)

    assert body["message"] == "Illegal status transition"
    assert store.get_call(tenant.organization_id, call["call_id"]) == before


def test_a_call_can_be_recorded_after_the_fact_straight_from_registered_to_ended(client, tenant):
    call = create_call(client, tenant)
    body = {
        "call_status": "ended",
        "start_timestamp": 1_700_000_000_000,
        "end_timestamp": 1_700_000_095_000,
        "disconnection_reason": "USER_HANGUP",
    }

    response = put(client, tenant, call["call_id"], body)

    assert response.status_code == 200, response.text
    ended = response.json()["data"]["call"]
    assert (ended["call_status"], ended["call_duration"]) == ("ended", 95_000)
    assert ended["start_timestamp"] == 1_700_000_000_000
    assert ended["events"][-1]["data"]["previous_status"] == "registered"


def test_update_call_still_takes_post_call_data_on_an_ended_call(client, tenant):
    call = create_call(client, tenant)
    put(client, tenant, call["call_id"], {"call_status": "ongoing"})
    put(client, tenant, call["call_id"], {"call_status": "ended"})

    response = put(client, tenant, call["call_id"], {"call_analysis": {"call_summary": "done"}})

    assert response.status_code == 200
    assert response.json()["data"]["call"]["call_analysis"] == {"call_summary": "done"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"call_status": "lost"},
        {"call_id": "other"},
        {"start_timestamp": "soon"},
        {"from_number": "12"},
        {"metadata": "not an object"},
    ],
)
def test_update_call_rejects_an_invalid_body_with_400(client, tenant, store, body):
    call = create_call(client, tenant)

    assert_error(put(client, tenant, call["call_id"], body), 400)
    assert store.get_call(tenant.organization_id, call["call_id"]) == call


def test_update_call_of_an_unknown_id_is_404(client, tenant):
    assert_error(put(client, tenant, "call_nope", {"transcript": "x"}), 404, "'call_nope'")


# -- DELETE /api/calls/{callId} ------------------------------------------------------------------


def test_delete_call_removes_it_everywhere(client, tenant, store):
    call = create_call(client, tenant)
    kept = create_call(client, tenant)

    response = client.delete(f"/api/calls/{call['call_id']}", headers=tenant.headers)

    assert response.status_code == 200
    assert response.json()["message"] == "Call deleted successfully"
    assert response.json()["data"] == {
        "call_id": call["call_id"],
        "organization_id": tenant.organization_id,
    }
    assert client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).status_code == 404
    assert listed(client.get("/api/calls", headers=tenant.headers)) == [kept["call_id"]]
    assert store.list_calls(tenant.organization_id, _all())[1] == 1


def test_delete_call_of_an_unknown_id_is_404_in_the_delete_pages_words(client, tenant):
    response = client.delete("/api/calls/call_nope", headers=tenant.headers)

    body = assert_error(response, 404)
    assert body["message"] == "Call not found"
    org = tenant.organization_id
    assert body["error"] == f"Call with ID 'call_nope' does not exist in organization '{org}'"
    # The get page's words have no organization: each page's own.
    fetched = assert_error(client.get("/api/calls/call_nope", headers=tenant.headers), 404)
    assert fetched["error"] == "Call with ID 'call_nope' does not exist"


def test_delete_call_frees_its_id_for_reuse(client, tenant):
    create_call(client, tenant, agent_id="a", call_id="reused")
    client.delete("/api/calls/reused", headers=tenant.headers)

    again = create_call(client, tenant, agent_id="b", call_id="reused")

    assert again["agent_id"] == "b"


# -- create-web-call with a LiveKit server configured ---------------------------------------


LIVEKIT = {
    "livekit_url": "wss://livekit.example.test",
    "livekit_api_key": "APIkey123",
    "livekit_api_secret": "livekit-secret-livekit-secret-0123456789",
}


@pytest.fixture
def livekit_client(store, data_dir):
    with app_client(store, data_dir=data_dir, livekit_token_ttl=600, **LIVEKIT) as client:
        yield client


def test_create_web_call_issues_a_livekit_token_for_the_calls_room(livekit_client, tenant):
    before = int(time.time())
    response = livekit_client.post(
        "/api/calls/create-web-call", json={"agent_id": "ag"}, headers=tenant.headers
    )

    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Web call created successfully"
    data = body["data"]
    room = data["call"]["call_id"]
    token = data["web_call_info"]["access_token"]
    assert data["livekit_connection"] == {
        "server_url": LIVEKIT["livekit_url"],
        "token": token,
        "room_name": room,
    }
    claims = api.TokenVerifier(LIVEKIT["livekit_api_key"], LIVEKIT["livekit_api_secret"]).verify(
        token
    )
    assert claims.identity == f"web-user-{room}"
    assert claims.video.room == room
    assert claims.video.room_join is True
    assert claims.attributes == {"call_id": room, "agent_id": "ag"}
    decoded = jwt.decode(token, LIVEKIT["livekit_api_secret"], algorithms=["HS256"])
    assert decoded["iss"] == LIVEKIT["livekit_api_key"]
    assert before + 600 <= decoded["exp"] <= int(time.time()) + 600


def test_a_livekit_token_signed_with_another_secret_does_not_verify(livekit_client, tenant):
    response = livekit_client.post(
        "/api/calls/create-web-call", json={"agent_id": "ag"}, headers=tenant.headers
    )
    token = response.json()["data"]["web_call_info"]["access_token"]

    with pytest.raises(jwt.InvalidSignatureError):
        api.TokenVerifier(LIVEKIT["livekit_api_key"], "another-secret-another-secret-00").verify(
            token
        )


# -- fields upstream's clients send --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/calls/create", {"agent_id": "a"}),
        ("/api/calls/create-web-call", {"agent_id": "a"}),
        ("/api/calls/create-phone-call", PHONE),
    ],
)
def test_a_creates_dynamic_variables_are_kept_in_the_calls_metadata(client, tenant, path, body):
    variables = {"customer_name": "John Doe", "order_id": "5001201"}
    sent = {**body, "metadata": {"k": "v"}, "dynamic_variables": variables}

    response = client.post(path, json=sent, headers=tenant.headers)

    assert response.status_code == 200, response.text
    call = response.json()["data"]["call"]
    assert call["metadata"] == {"k": "v", "dynamic_variables": variables}
    assert "dynamic_variables" not in call
    fetched = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers).json()["data"]
    assert fetched["metadata"]["dynamic_variables"] == variables


def test_update_call_takes_an_agent_id_and_reassigns_the_call(client, tenant):
    call = create_call(client, tenant, agent_id="first")

    response = client.put(
        f"/api/calls/{call['call_id']}", json={"agent_id": "second"}, headers=tenant.headers
    )

    assert response.status_code == 200, response.text
    updated = response.json()["data"]["call"]
    assert updated["agent_id"] == "second"
    assert updated["events"][-1]["data"]["updated_fields"] == ["agent_id"]
    listed = client.get("/api/calls?agent_id=second", headers=tenant.headers).json()["data"]
    assert [c["call_id"] for c in listed["calls"]] == [call["call_id"]]
