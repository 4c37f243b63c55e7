"""What every answer carries (nosniff, no-store, the request id in errors), what listings
of keys show, and liveness and readiness."""

from __future__ import annotations

from calls_server.domain.errors import StoreUnavailable
from tests.conftest import assert_error


def test_every_answer_says_nosniff(client, tenant):
    for response in (
        client.get("/api/calls", headers=tenant.headers),
        client.get("/api/calls/missing", headers=tenant.headers),
        client.get("/api/health"),
        client.get("/api/ui/"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"


def test_api_answers_are_never_cached(client, tenant, admin_headers):
    created = client.post(
        f"/api/organizations/{tenant.organization_id}/api-keys", json={}, headers=admin_headers
    )
    listed = client.get("/api/calls", headers=tenant.headers)
    refused = client.get("/api/calls")

    for response in (created, listed, refused):
        assert response.headers["cache-control"] == "no-store"


def test_swagger_ui_files_may_be_cached(client):
    response = client.get("/api/ui/swagger-ui.css")

    assert response.status_code == 200
    assert "no-store" not in response.headers.get("cache-control", "")


def test_an_error_carries_the_request_id_sent(client, tenant):
    response = client.get(
        "/api/calls/missing", headers={**tenant.headers, "X-Request-ID": "trace-42"}
    )

    body = assert_error(response, 404)
    assert body["request_id"] == "trace-42"


def test_an_error_carries_a_request_id_made_up_for_it(client):
    response = client.get("/api/calls")

    body = assert_error(response, 401)
    assert len(body["request_id"]) == 32


def test_listed_keys_show_only_their_last_four_characters(client, tenant, admin_headers):
    created = client.post(
        f"/api/organizations/{tenant.organization_id}/api-keys", json={}, headers=admin_headers
    ).json()["data"]

    listed = client.get(
        f"/api/organizations/{tenant.organization_id}/api-keys", headers=admin_headers
    ).json()["data"]["api_keys"]

    shown = next(k for k in listed if k["api_key_id"] == created["api_key_id"])
    assert shown["api_key"] == f"sk_…{created['api_key'][-4:]}"
    assert all(len(k["api_key"]) == 8 for k in listed)
    assert "api_secret" not in shown


def test_a_revoked_key_is_shown_cut_too(client, tenant, admin_headers):
    path = f"/api/organizations/{tenant.organization_id}/api-keys/{tenant.api_key_id}"

    revoked = client.delete(path, headers=admin_headers).json()["data"]

    assert revoked["api_key"] == f"sk_…{tenant.headers['X-API-KEY'][-4:]}"


def test_a_created_key_is_shown_whole_once(client, tenant, admin_headers):
    created = client.post(
        f"/api/organizations/{tenant.organization_id}/api-keys", json={}, headers=admin_headers
    ).json()["data"]

    assert len(created["api_key"]) == 35
    assert created["api_secret"].startswith("s3cr3t_")


def test_ready_when_the_store_is(client):
    response = client.get("/api/ready")

    assert response.status_code == 200
    assert response.json()["data"] == {"status": "ready", "checks": {"store": "ok"}}


def test_not_ready_when_the_store_cannot_serve(client, store, monkeypatch):
    def failed() -> None:
        raise StoreUnavailable("The store cannot take this request: the disk is full")

    monkeypatch.setattr(store, "check_ready", failed)

    response = client.get("/api/ready")

    assert_error(response, 503, "the disk is full")
    assert client.get("/api/health").status_code == 200  # alive, only not ready
