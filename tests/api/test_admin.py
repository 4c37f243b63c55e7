"""The `admin` handlers: organizations and API keys, behind the admin token."""

from __future__ import annotations

import re

import pytest

from calls_server.app import create_app
from calls_server.domain import keys
from calls_server.domain.keys import hash_secret
from calls_server.handlers.idempotency import ADMIN_SCOPE
from calls_server.settings import Settings
from tests.conftest import assert_error


def new_key(client, admin_headers, organization_id="acme", **body):
    response = client.post(
        f"/api/organizations/{organization_id}/api-keys", json=body, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


@pytest.fixture
def acme(client, admin_headers):
    body = {"organization_id": "acme", "name": "Acme"}
    response = client.post("/api/organizations", json=body, headers=admin_headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_create_organization_stores_it(client, admin_headers, store, acme):
    assert acme["organization_id"] == "acme"
    assert acme["name"] == "Acme"
    assert store.get_organization("acme") == acme


def test_create_organization_generates_an_id(client, admin_headers):
    response = client.post("/api/organizations", headers=admin_headers)

    assert re.fullmatch(r"org_[0-9a-f]{32}", response.json()["data"]["organization_id"])


def test_create_organization_with_an_existing_id_is_409(client, admin_headers, acme):
    response = client.post(
        "/api/organizations", json={"organization_id": "acme"}, headers=admin_headers
    )

    assert_error(response, 409, "'acme' already exists")


def test_create_api_key_returns_the_secret_once_and_stores_only_its_hash(
    client, admin_headers, store, acme
):
    key = new_key(client, admin_headers, name="ci")

    assert re.fullmatch(r"sk_[A-Za-z0-9]{32}", key["api_key"])
    assert re.fullmatch(r"s3cr3t_[A-Za-z0-9]{40}", key["api_secret"])
    assert (key["organization_id"], key["status"], key["name"]) == ("acme", "ACTIVE", "ci")
    assert "cannot be retrieved" in key["warning"]
    stored = store.find_api_key(key["api_key"])
    assert stored["secret_sha256"] == hash_secret(key["api_secret"])
    assert key["api_secret"] not in str(stored)


def test_a_key_has_upstreams_id_and_time_forms(client, admin_headers, acme):
    key = new_key(client, admin_headers)

    assert re.fullmatch(r"apikey_[0-9a-f]{32}", key["api_key_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", key["created_at"])
    assert key["revoked_at"] is None


def test_a_key_stored_by_an_earlier_version_is_listed_and_revoked_in_the_new_forms(
    client, admin_headers, store, acme
):
    record, _ = keys.new_api_key("acme", 1_795_539_480_657)
    old = {**record, "api_key_id": "key_" + "0" * 32, "created_at": 1_795_539_480_657}
    store.add_api_key(old)

    listed = client.get("/api/organizations/acme/api-keys", headers=admin_headers).json()
    revoked = client.delete(
        f"/api/organizations/acme/api-keys/{old['api_key_id']}", headers=admin_headers
    )

    assert listed["data"]["api_keys"][-1]["created_at"] == "2026-11-24T16:58:00Z"
    assert revoked.status_code == 200
    assert revoked.json()["data"]["status"] == "REVOKED"


def test_create_api_key_makes_a_working_key_pair(client, admin_headers, acme):
    key = new_key(client, admin_headers)
    headers = {"X-API-KEY": key["api_key"], "X-API-SECRET": key["api_secret"]}

    response = client.post("/api/calls/create", json={"agent_id": "a"}, headers=headers)

    assert response.status_code == 200
    assert response.json()["data"]["organization_id"] == "acme"


def test_create_api_key_for_an_unknown_organization_is_404(client, admin_headers):
    response = client.post("/api/organizations/nope/api-keys", headers=admin_headers)

    assert_error(response, 404, "Organization with ID 'nope' does not exist")


def test_list_api_keys_never_shows_secrets(client, admin_headers, acme):
    first = new_key(client, admin_headers, name="one")
    second = new_key(client, admin_headers, name="two")

    response = client.get("/api/organizations/acme/api-keys", headers=admin_headers)

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["count"] == 2
    listed_ids = [k["api_key_id"] for k in data["api_keys"]]
    assert listed_ids == [first["api_key_id"], second["api_key_id"]]
    for listed in data["api_keys"]:
        assert "api_secret" not in listed
        assert "secret_sha256" not in listed
    assert first["api_secret"] not in response.text


def test_revoke_api_key_stops_it_at_once(client, admin_headers, acme):
    key = new_key(client, admin_headers)
    headers = {"X-API-KEY": key["api_key"], "X-API-SECRET": key["api_secret"]}
    assert client.get("/api/calls", headers=headers).status_code == 200

    response = client.delete(
        f"/api/organizations/acme/api-keys/{key['api_key_id']}", headers=admin_headers
    )

    assert response.status_code == 200
    assert response.json()["data"]["status"] == "REVOKED"
    assert response.json()["data"]["revoked_at"] is not None
    assert_error(client.get("/api/calls", headers=headers), 401, "revoked")


def test_revoke_api_key_leaves_the_other_keys_working(client, admin_headers, acme):
    revoked = new_key(client, admin_headers)
    kept = new_key(client, admin_headers)
    url = f"/api/organizations/acme/api-keys/{revoked['api_key_id']}"
    client.delete(url, headers=admin_headers)

    headers = {"X-API-KEY": kept["api_key"], "X-API-SECRET": kept["api_secret"]}
    assert client.get("/api/calls", headers=headers).status_code == 200


def test_revoke_api_key_twice_is_409(client, admin_headers, acme):
    key = new_key(client, admin_headers)
    url = f"/api/organizations/acme/api-keys/{key['api_key_id']}"
    client.delete(url, headers=admin_headers)

    assert_error(client.delete(url, headers=admin_headers), 409, "already revoked")


def test_revoke_api_key_of_another_organization_is_404(client, admin_headers, acme):
    key = new_key(client, admin_headers)
    client.post("/api/organizations", json={"organization_id": "other"}, headers=admin_headers)

    response = client.delete(
        f"/api/organizations/other/api-keys/{key['api_key_id']}", headers=admin_headers
    )

    assert_error(response, 404, key["api_key_id"])


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "'Authorization: Bearer <admin token>' header is required"),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, "Invalid admin token"),
        ({"Authorization": "Basic YTpi"}, ""),
    ],
)
def test_admin_api_without_the_admin_token_is_401(client, headers, reason):
    response = client.post("/api/organizations", headers=headers)

    assert_error(response, 401, reason)


def test_admin_api_refuses_an_api_key_pair(client, tenant):
    assert_error(client.post("/api/organizations", headers=tenant.headers), 401)


def test_admin_api_is_disabled_without_a_configured_token(store, admin_headers):
    from starlette.testclient import TestClient

    app = create_app(Settings(admin_token=None, validate_responses=True), store)
    with TestClient(app) as client:
        response = client.post("/api/organizations", headers=admin_headers)

    assert_error(response, 403, "CALLS_ADMIN_TOKEN")


def test_the_kept_answer_of_a_key_creation_holds_no_secret(client, admin_headers, store, acme):
    headers = {**admin_headers, "Idempotency-Key": "key-once"}

    created = client.post("/api/organizations/acme/api-keys", json={}, headers=headers)

    secret = created.json()["data"]["api_secret"]
    assert re.fullmatch(r"s3cr3t_[A-Za-z0-9]{40}", secret)
    kept = store.find_idempotent(ADMIN_SCOPE, "key-once")
    assert kept is not None
    assert kept["status"] == 200
    assert kept["body"]["data"]["api_secret"] == ""
    assert secret not in str(kept)


def test_a_replayed_key_creation_names_the_key_but_not_its_secret(client, admin_headers, acme):
    headers = {**admin_headers, "Idempotency-Key": "key-once"}
    created = client.post("/api/organizations/acme/api-keys", json={}, headers=headers)

    replay = client.post("/api/organizations/acme/api-keys", json={}, headers=headers)

    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    first, again = created.json()["data"], replay.json()["data"]
    assert again["api_key_id"] == first["api_key_id"]
    assert again["api_key"] == first["api_key"]
    assert again["api_secret"] == ""
    assert "shown once" in again["warning"]
    assert "revoke" in again["warning"]
    assert first["api_secret"] not in replay.text
    listed = client.get("/api/organizations/acme/api-keys", headers=admin_headers)
    assert listed.json()["data"]["count"] == 1  # nothing created again
