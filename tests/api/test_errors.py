"""Every error from every layer answers with the envelope and leaves the store as it was."""

from __future__ import annotations

import pytest

from calls_server.domain.listing import CallQuery
from calls_server.storage import journal
from tests.conftest import SEED_REQUEST, assert_error, create_call

EVERYTHING = CallQuery(page=0, limit=100, sort_by="created_at", sort_order="ascending", filters={})


def test_an_unknown_route_is_404(client, tenant):
    assert_error(client.get("/api/nothing", headers=tenant.headers), 404, "GET /api/nothing")


def test_a_route_outside_the_api_is_404(client):
    assert_error(client.get("/"), 404, "No route matches GET /")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/calls", "GET, HEAD, POST"),
        ("PATCH", "/api/calls/call_x", "DELETE, GET, HEAD, PUT"),
        ("GET", "/api/organizations", "POST"),
        ("POST", "/api/calls/call_x/schedule", "DELETE, PUT"),
    ],
)
def test_a_wrong_method_is_405_listing_every_allowed_method(client, tenant, method, path, allow):
    response = client.request(method, path, headers=tenant.headers)

    assert_error(response, 405, f"{method} is not allowed")
    assert response.headers["allow"] == allow


def test_malformed_json_is_400(client, tenant, store):
    response = client.post(
        "/api/calls/create",
        content=b'{"agent_id": ',
        headers={**tenant.headers, "content-type": "application/json"},
    )

    assert_error(response, 400, "Expecting value")
    assert store.list_calls(tenant.organization_id, EVERYTHING)[1] == 0


def test_a_body_that_is_not_utf8_is_400(client, tenant):
    response = client.post(
        "/api/calls/create",
        content=b'{"agent_id": "\xff"}',
        headers={**tenant.headers, "content-type": "application/json"},
    )

    assert_error(response, 400, "not valid UTF-8")


def test_a_json_array_body_is_400(client, tenant):
    response = client.post("/api/calls", json=[1, 2], headers=tenant.headers)

    assert_error(response, 400, "is not of type 'object'")


def test_a_missing_required_body_is_400(client, tenant):
    response = client.post("/api/calls/create", headers=tenant.headers)

    assert_error(response, 400, "RequestBody is required")


def test_a_body_that_is_not_json_is_415(client, tenant):
    response = client.post(
        "/api/calls/create",
        content=b"agent_id=a",
        headers={**tenant.headers, "content-type": "application/x-www-form-urlencoded"},
    )

    assert_error(response, 415, "Invalid Content-type")


def test_a_body_over_the_limit_is_413(client, tenant, store):
    body = {**SEED_REQUEST, "metadata": {"blob": "x" * 1_100_000}}

    response = client.post("/api/calls/create", json=body, headers=tenant.headers)

    assert_error(response, 413, "larger than the limit of 1048576 bytes")
    assert store.list_calls(tenant.organization_id, EVERYTHING)[1] == 0


def test_a_streamed_body_over_the_limit_is_413(client, tenant):
    def chunks():
        yield b'{"agent_id": "a", "metadata": {"blob": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}}'

    response = client.post(
        "/api/calls/create",
        content=chunks(),
        headers={**tenant.headers, "content-type": "application/json", "content-length": "100"},
    )

    assert_error(response, 413, "larger than the limit")


def test_an_unexpected_failure_is_a_500_envelope_and_changes_nothing(client, tenant, store):
    call = create_call(client, tenant)

    def explode(stored):
        raise RuntimeError("disk on fire")

    original = store.change_call
    store.change_call = lambda org, call_id, change: original(org, call_id, explode)
    try:
        response = client.put(
            f"/api/calls/{call['call_id']}", json={"transcript": "x"}, headers=tenant.headers
        )
    finally:
        store.change_call = original

    body = assert_error(response, 500, "An unexpected error occurred")
    assert "disk on fire" not in body["error"]
    assert store.get_call(tenant.organization_id, call["call_id"]) == call


@pytest.mark.embedded_only
def test_a_full_disk_is_a_503_that_changes_nothing_and_passes(client, tenant, store, monkeypatch):
    call = create_call(client, tenant)

    def no_space(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal.os, "write", no_space)
    response = client.put(
        f"/api/calls/{call['call_id']}",
        json={"call_status": "ongoing", "metadata": {"k": "v"}},
        headers=tenant.headers,
    )
    monkeypatch.undo()
    later = client.put(
        f"/api/calls/{call['call_id']}", json={"metadata": {"k": "v"}}, headers=tenant.headers
    )

    assert_error(response, 503, "No space left on device")
    assert later.status_code == 200  # the cause is gone: writes go on
    assert later.json()["data"]["call"]["call_status"] == "registered"


@pytest.mark.embedded_only
def test_after_a_failed_fsync_every_request_is_a_503(client, tenant, store, monkeypatch):
    call = create_call(client, tenant)

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal.os, "fsync", broken)
    write = client.put(
        f"/api/calls/{call['call_id']}", json={"metadata": {"k": "v"}}, headers=tenant.headers
    )
    monkeypatch.undo()
    read = client.get(f"/api/calls/{call['call_id']}", headers=tenant.headers)

    assert_error(write, 503, "Input/output error")
    assert_error(read, 503, "restart the server")
    store.abandon()  # what the disk holds is unknown: no final snapshot


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/calls/create", "POST"),
        ("PUT", "/api/calls/create-phone-call", "POST"),
        ("PATCH", "/api/post-call-webhooks/create", "POST"),
    ],
)
def test_a_literal_path_refuses_methods_a_template_beside_it_would_take(
    client, tenant, method, path, allow
):
    response = client.request(method, path, headers=tenant.headers)

    assert_error(response, 405, f"{method} is not allowed")
    assert response.headers["allow"] == allow
