"""create-phone-call with an outbound dialer: a real HTTP receiver on loopback stands in."""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from calls_server.app import create_app
from calls_server.handlers import calls as calls_handlers
from calls_server.integrations.dialer import HttpDialer
from calls_server.integrations.signing import (
    LEGACY_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    legacy_signature,
    verify,
)
from calls_server.settings import Settings
from tests.conftest import FakeClock, app_client, assert_error

SECRET = "dialer-secret-0123456789"
PHONE = {
    "from_number": "+14157774444",
    "to_number": "+12137774445",
    "override_agent_id": "ag",
    "metadata": {"campaign": "x"},
}


@pytest.fixture
def client(store, data_dir, receiver):
    """The API with the receiver as its dialer, waited for 5 s an attempt: on a loaded
    machine an answer can take a second, and a retry would be a second attempt."""
    dialer = {"dialer_url": receiver.url + "/jobs", "dialer_secret": SECRET}
    with app_client(store, data_dir=data_dir, dialer_timeout=5, **dialer) as test_client:
        yield test_client


@pytest.fixture
def impatient_client(store, data_dir, receiver):
    """The API with the receiver as its dialer, waited for 0.5 s an attempt."""
    dialer = {"dialer_url": receiver.url + "/jobs", "dialer_secret": SECRET}
    with app_client(store, data_dir=data_dir, dialer_timeout=0.5, **dialer) as test_client:
        yield test_client


def create_phone_call(client, tenant):
    response = client.post("/api/calls/create-phone-call", json=PHONE, headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_accepted_call_is_ongoing_and_says_initiated(client, tenant, store, receiver):
    body = create_phone_call(client, tenant)

    assert body["message"] == "Phone call created and initiated successfully"
    data = body["data"]
    assert data["status"] == "call_initiated"
    call = data["call"]
    assert call["call_status"] == "ongoing" == data["phone_call_info"]["call_status"]
    assert call["start_timestamp"] is not None
    assert call["events"][-1]["event"] == "Call dispatched to dialer"
    assert call["events"][-1]["data"]["attempts"] == 1
    assert store.get_call(tenant.organization_id, call["call_id"]) == call


def test_the_job_is_signed_json_with_the_calls_numbers_agent_and_metadata(client, tenant, receiver):
    call = create_phone_call(client, tenant)["data"]["call"]

    [request] = receiver.received
    assert request.path == "/jobs"
    assert verify(SECRET, request.body, request.headers[SIGNATURE_HEADER])
    assert not verify("another secret", request.body, request.headers[SIGNATURE_HEADER])
    assert request.headers[LEGACY_SIGNATURE_HEADER] == legacy_signature(SECRET, request.body)
    assert request.headers["Idempotency-Key"] == call["call_id"]
    assert json.loads(request.body) == {
        "call_id": call["call_id"],
        "organization_id": tenant.organization_id,
        "agent_id": "ag",
        "from_number": "+14157774444",
        "to_number": "+12137774445",
        "metadata": {"campaign": "x"},
        "scheduled_timestamp": None,
    }


def test_the_job_is_signed_with_the_time_of_the_apps_clock(store, data_dir, tenant, receiver):
    dialer = {"dialer_url": receiver.url, "dialer_secret": SECRET}
    with app_client(store, clock=FakeClock(1_700_000_000_000), data_dir=data_dir, **dialer) as c:
        create_phone_call(c, tenant)

    [request] = receiver.received
    assert request.headers[SIGNATURE_HEADER].startswith("t=1700000000,")
    assert verify(SECRET, request.body, request.headers[SIGNATURE_HEADER], now=1_700_000_000)


def test_a_refusal_is_not_retried_and_the_call_is_in_error(client, tenant, store, receiver):
    receiver.replies = [(400, 0.0)]

    body = create_phone_call(client, tenant)

    assert len(receiver.received) == 1
    assert body["data"]["status"] == "call_failed"
    assert "refused (HTTP 400): no such number" in body["message"]
    call = body["data"]["call"]
    assert (call["call_status"], call["disconnection_reason"]) == ("error", "dial_failed")
    assert call["events"][-1]["event"] == "Dialing failed"
    assert store.get_call(tenant.organization_id, call["call_id"])["call_status"] == "error"


def test_a_server_error_is_retried_until_accepted(client, tenant, receiver):
    receiver.replies = [(503, 0.0), (500, 0.0)]

    body = create_phone_call(client, tenant)

    assert len(receiver.received) == 3
    assert body["data"]["status"] == "call_initiated"
    assert body["data"]["call"]["events"][-1]["data"]["attempts"] == 3


def test_a_dialer_that_never_answers_in_time_fails_after_every_attempt(
    impatient_client, tenant, receiver
):
    receiver.replies = [(202, 1.0)] * 3

    body = create_phone_call(impatient_client, tenant)

    assert len(receiver.received) == 3
    assert body["data"]["status"] == "call_failed"
    assert "no answer within 0.5 s after 3 attempts" in body["message"]


def test_an_unreachable_dialer_fails_the_call(store, data_dir, tenant):
    settings = Settings(
        data_dir=data_dir,
        validate_responses=True,
        dialer_url="http://127.0.0.1:9/jobs",  # discard port: nothing listens
        dialer_secret=SECRET,
        dialer_attempts=2,
    )
    with TestClient(create_app(settings, store)) as client:
        body = create_phone_call(client, tenant)

    assert body["data"]["status"] == "call_failed"
    assert "unreachable (ConnectError) after 2 attempts" in body["message"]


def test_a_scheduled_call_is_not_dialed_at_creation(client, tenant, receiver):
    response = client.post(
        "/api/calls/create-phone-call",
        json={**PHONE, "scheduled_timestamp": 4102444800},
        headers=tenant.headers,
    )

    assert response.json()["data"]["status"] == "call_scheduled"
    assert receiver.received == []


def test_an_invalid_request_reaches_no_dialer(client, tenant, receiver):
    response = client.post(
        "/api/calls/create-phone-call", json={**PHONE, "to_number": "12"}, headers=tenant.headers
    )

    assert_error(response, 400)
    assert receiver.received == []


# -- a bound on the wait --------------------------------------------------------------------------
HANGING = {"dialer_timeout": 5, "dialer_attempts": 3, "dialer_deadline": 1.0}
# How long a hanging dialer hangs: far past the unbounded wait (5 + 0.5 + 5 + 1 + 5 s), so
# that the bounds below, loose enough for a loaded machine, still tell the two apart.
HANG = 30.0


def test_a_hanging_dialer_is_answered_within_the_deadline_as_a_failed_call(
    store, data_dir, tenant, receiver
):
    receiver.reply_to = lambda _: (202, HANG)
    dialer = {"dialer_url": receiver.url, "dialer_secret": SECRET, **HANGING}
    with app_client(store, data_dir=data_dir, **dialer) as client:
        started = time.monotonic()
        body = create_phone_call(client, tenant)
        waited = time.monotonic() - started

    assert waited < 4.0, waited  # 1 s, and the call's writes (was 5 + 0.5 + 5 + 1 + 5 s)
    assert body["data"]["status"] == "call_failed"
    assert "at the dial's deadline" in body["message"]
    call = store.get_call(tenant.organization_id, body["data"]["call"]["call_id"])
    assert (call["call_status"], call["disconnection_reason"]) == ("error", "dial_failed")
    assert call["events"][-1]["event"] == "Dialing failed"


def test_a_call_waiting_for_a_dialing_thread_fails_at_the_deadline_without_dialing(
    store, data_dir, tenant, receiver
):
    receiver.reply_to = lambda _: (202, HANG)
    settings = {"dialer_url": receiver.url, "dialer_secret": SECRET, **HANGING}
    with (
        app_client(store, data_dir=data_dir, dialer_concurrency=1, **settings) as client,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        started = time.monotonic()
        answers = list(pool.map(lambda _: create_phone_call(client, tenant), range(2)))
        waited = time.monotonic() - started

    assert waited < 4.0, waited  # each within 1 s (was one after the other: 2 x 16.5 s)
    assert sorted(a["data"]["status"] for a in answers) == ["call_failed", "call_failed"]
    assert len(receiver.received) == 1  # the second was never handed to the dialer
    (unsent,) = [a for a in answers if "no dialing thread came free within 1 s" in a["message"]]
    call = store.get_call(tenant.organization_id, unsent["data"]["call"]["call_id"])
    assert call["call_status"] == "error"


def test_a_call_whose_dialing_thread_comes_free_with_too_little_time_left_is_not_dialed(
    store, tmp_path, tenant, receiver, monkeypatch
):
    # The request comes at 0 s; its dialing thread starts at 0.9 s of its 1 s deadline.
    readings = itertools.chain([0.0], itertools.repeat(0.9))
    monkeypatch.setattr(calls_handlers, "time", SimpleNamespace(monotonic=lambda: next(readings)))
    settings = {"dialer_url": receiver.url, "dialer_secret": SECRET, **HANGING}
    with app_client(store, data_dir=tmp_path, **settings) as client:
        body = create_phone_call(client, tenant)

    assert receiver.received == []  # was sent with 0.1 s to answer, the call recorded failed
    assert body["data"]["status"] == "call_failed"
    assert "no dialing thread came free within 1 s (all dialing)" in body["message"]
    call = store.get_call(tenant.organization_id, body["data"]["call"]["call_id"])
    assert (call["call_status"], call["disconnection_reason"]) == ("error", "dial_failed")


def test_no_attempt_is_made_with_too_little_of_the_deadline_left(receiver):
    receiver.reply_to = lambda _: (202, HANG)
    dialer = HttpDialer(receiver.url, SECRET, timeout=0.6, attempts=3, deadline=1.2)
    job = {"call_id": "call_1", "to_number": "+12137774445"}

    outcome = dialer.dial(job)

    # After 0.6 s and a back-off of 0.5 s, 0.1 s would be left: less than the floor of 0.5 s.
    assert len(receiver.received) == 1  # was a second attempt, given 0.1 s
    assert (outcome.accepted, outcome.attempts) == (False, 1)
    assert "after 1 attempts, at the dial's deadline of 1.2 s" in outcome.reason
