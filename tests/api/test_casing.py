"""Enum values in responses: as upstream answers them by default, or one case throughout."""

from __future__ import annotations

import time

import pytest

from tests.conftest import app_client

SEED = {"agent_id": "agent-123", "call_type": "PHONE_CALL", "direction": "OUTBOUND"}
PHONE = {"from_number": "+14157774444", "to_number": "+12137774445", "override_agent_id": "ag"}


def enums(call: dict) -> tuple:
    return call["call_status"], call["call_type"], call["direction"]


@pytest.fixture
def upstream(store, data_dir):
    with app_client(store, data_dir=data_dir, enum_case="upstream") as client:
        yield client


def test_create_and_update_answer_in_lower_case_as_upstream_does(upstream, tenant):
    created = upstream.post("/api/calls/create", json=SEED, headers=tenant.headers).json()
    call_id = created["data"]["call"]["call_id"]
    updated = upstream.put(
        f"/api/calls/{call_id}", json={"call_status": "ONGOING"}, headers=tenant.headers
    ).json()

    assert enums(created["data"]["call"]) == ("registered", "phone_call", "outbound")
    assert enums(updated["data"]["call"]) == ("ongoing", "phone_call", "outbound")


def test_get_and_both_lists_answer_in_upper_case_as_upstream_does(upstream, tenant):
    created = upstream.post("/api/calls/create", json=SEED, headers=tenant.headers).json()
    call_id = created["data"]["call"]["call_id"]

    got = upstream.get(f"/api/calls/{call_id}", headers=tenant.headers).json()["data"]
    listed = upstream.get("/api/calls", headers=tenant.headers).json()["data"]["calls"]
    searched = upstream.post("/api/calls", json={}, headers=tenant.headers).json()["data"]

    expected = ("REGISTERED", "PHONE_CALL", "OUTBOUND")
    assert enums(got) == enums(listed[0]) == enums(searched["calls"][0]) == expected


def test_phone_create_answers_its_call_in_upper_and_its_wrapper_in_lower_case(upstream, tenant):
    body = {**PHONE, "scheduled_timestamp": int(time.time()) + 3600}

    data = upstream.post("/api/calls/create-phone-call", json=body, headers=tenant.headers).json()[
        "data"
    ]

    assert enums(data["call"]) == ("SCHEDULED", "PHONE_CALL", "OUTBOUND")
    assert data["call_type"] == "phone_call"
    assert data["phone_call_info"]["call_status"] == "scheduled"
    assert data["phone_call_info"]["direction"] == "outbound"


def test_web_create_answers_its_call_in_upper_and_its_wrapper_in_lower_case(upstream, tenant):
    body = {"agent_id": "agent-123"}

    data = upstream.post("/api/calls/create-web-call", json=body, headers=tenant.headers).json()[
        "data"
    ]

    assert enums(data["call"]) == ("REGISTERED", "WEB_CALL", None)
    assert (data["call_type"], data["web_call_info"]["call_status"]) == ("web_call", "registered")


@pytest.mark.parametrize(("mode", "case"), [("upper", str.upper), ("lower", str.lower)])
def test_one_case_throughout_when_the_setting_asks_for_it(store, data_dir, tenant, mode, case):
    with app_client(store, data_dir=data_dir, enum_case=mode) as client:
        created = client.post("/api/calls/create", json=SEED, headers=tenant.headers).json()
        call_id = created["data"]["call"]["call_id"]
        got = client.get(f"/api/calls/{call_id}", headers=tenant.headers).json()["data"]
        phone = client.post(
            "/api/calls/create-phone-call", json=PHONE, headers=tenant.headers
        ).json()["data"]

    expected = tuple(case(v) for v in ("registered", "phone_call", "outbound"))
    assert enums(created["data"]["call"]) == enums(got) == expected
    assert phone["call_type"] == case("phone_call")
    assert phone["phone_call_info"]["direction"] == case("outbound")


def test_filters_take_either_case_whatever_the_answers_case(upstream, tenant):
    upstream.post("/api/calls/create", json=SEED, headers=tenant.headers)

    lower = upstream.get("/api/calls?call_status=registered", headers=tenant.headers).json()
    upper = upstream.get("/api/calls?call_status=REGISTERED", headers=tenant.headers).json()

    assert lower["data"]["pagination"]["total_count"] == 1
    assert upper["data"]["pagination"]["total_count"] == 1


def test_the_call_is_stored_in_lower_case_whatever_the_answers_case(upstream, tenant, store):
    created = upstream.post("/api/calls/create", json=SEED, headers=tenant.headers).json()
    call_id = created["data"]["call"]["call_id"]
    upstream.get(f"/api/calls/{call_id}", headers=tenant.headers)

    assert enums(store.get_call(tenant.organization_id, call_id)) == (
        "registered",
        "phone_call",
        "outbound",
    )
