"""Authentication with the API key + secret pair."""

from __future__ import annotations

import pytest

from calls_server.domain import keys
from tests.conftest import assert_error


def test_a_valid_pair_authenticates_as_its_organization(client, tenant):
    response = client.get("/api/calls", headers=tenant.headers)

    assert response.status_code == 200
    assert response.json()["data"]["organization_id"] == tenant.organization_id


@pytest.mark.parametrize(
    ("drop", "reason"),
    [
        (("X-API-KEY", "X-API-SECRET"), "Both X-API-KEY and X-API-SECRET headers are required"),
        (("X-API-SECRET",), "Both X-API-KEY and X-API-SECRET headers are required"),
        (("X-API-KEY",), "Both X-API-KEY and X-API-SECRET headers are required"),
    ],
)
def test_a_missing_header_is_401(client, tenant, drop, reason):
    headers = {k: v for k, v in tenant.headers.items() if k not in drop}

    assert_error(client.get("/api/calls", headers=headers), 401, reason)


def test_a_wrong_secret_is_401(client, tenant):
    headers = {**tenant.headers, "X-API-SECRET": "s3cr3t_" + "x" * 40}

    assert_error(client.get("/api/calls", headers=headers), 401, "Invalid API key or secret")


def test_an_unknown_key_is_401(client, tenant):
    headers = {**tenant.headers, "X-API-KEY": "sk_" + "x" * 32}

    assert_error(client.get("/api/calls", headers=headers), 401, "Invalid API key or secret")


def test_a_pair_of_two_different_keys_is_401(client, store, tenant):
    record, secret = keys.new_api_key(tenant.organization_id, 1)
    store.add_api_key(record)
    headers = {"X-API-KEY": tenant.headers["X-API-KEY"], "X-API-SECRET": secret}

    assert_error(client.get("/api/calls", headers=headers), 401, "Invalid API key or secret")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-KEY": "not-a-key", "X-API-SECRET": "s3cr3t_abc"},
        {"X-API-KEY": "sk_abc", "X-API-SECRET": "plain"},
    ],
)
def test_values_without_the_key_or_secret_prefix_are_401(client, tenant, headers):
    assert_error(client.get("/api/calls", headers=headers), 401, "Invalid API key or secret")


def test_a_revoked_key_is_401_at_once(client, store, tenant):
    store.change_api_key(tenant.organization_id, tenant.api_key_id, lambda k: keys.revoked(k, 2))

    assert_error(client.get("/api/calls", headers=tenant.headers), 401, "revoked")


def test_a_non_ascii_header_is_401_not_500(client, tenant):
    headers = {**tenant.headers, "X-API-SECRET": "s3cr3t_\xe9".encode("latin-1")}

    assert_error(client.get("/api/calls", headers=headers), 401)


def test_health_needs_no_credentials(client):
    response = client.get("/api/health")

    assert response.status_code == 200
    assert response.json()["data"]["status"] == "ok"
