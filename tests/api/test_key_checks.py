"""A key pair's check against the store on every request, when this process has read the
key before: revoked elsewhere (another process on the same database), the key is refused at
its next request, whatever that request reads (domain/key_checks.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from calls_server.domain import keys
from calls_server.storage import Store
from calls_server.storage.postgres import PostgresStore
from tests.conftest import Tenant, assert_error


@pytest.fixture
def revoke_elsewhere(
    backend: str, store: Store, request: pytest.FixtureRequest
) -> Iterator[Callable[[Tenant], None]]:
    """Revokes a tenant's key as another process would: on PostgreSQL through a store of its
    own on the same database (this app's store has read the key before), on the embedded
    store (one process) through the store itself."""
    other = (
        PostgresStore(request.getfixturevalue("migrated_database_url"))
        if backend == "postgres"
        else store
    )

    def revoke(tenant: Tenant) -> None:
        other.change_api_key(
            tenant.organization_id, tenant.api_key_id, lambda key: keys.revoked(key, 2)
        )

    yield revoke
    if other is not store:
        other.close()


def made_call(client: Any, tenant: Tenant) -> str:
    response = client.post("/api/calls/create", json={"agent_id": "a"}, headers=tenant.headers)
    assert response.status_code == 200, response.text
    call_id: str = response.json()["data"]["call"]["call_id"]
    return call_id


def test_a_key_revoked_elsewhere_is_401_at_the_next_read_of_a_call(
    client, tenant, revoke_elsewhere
):
    call_id = made_call(client, tenant)
    assert client.get(f"/api/calls/{call_id}", headers=tenant.headers).status_code == 200

    revoke_elsewhere(tenant)

    assert_error(client.get(f"/api/calls/{call_id}", headers=tenant.headers), 401, "revoked")


def test_a_key_revoked_elsewhere_is_401_not_404_for_a_call_that_does_not_exist(
    client, tenant, revoke_elsewhere
):
    call_id = made_call(client, tenant)
    assert client.get(f"/api/calls/{call_id}", headers=tenant.headers).status_code == 200

    revoke_elsewhere(tenant)

    assert_error(client.get("/api/calls/call-none", headers=tenant.headers), 401, "revoked")


def test_a_key_revoked_elsewhere_is_401_at_the_next_list(client, tenant, revoke_elsewhere):
    assert client.get("/api/calls", headers=tenant.headers).status_code == 200

    revoke_elsewhere(tenant)

    assert_error(client.get("/api/calls", headers=tenant.headers), 401, "revoked")


def test_a_wrong_secret_for_a_key_read_before_is_401(client, tenant):
    call_id = made_call(client, tenant)
    assert client.get(f"/api/calls/{call_id}", headers=tenant.headers).status_code == 200
    headers = {**tenant.headers, "X-API-SECRET": "s3cr3t_" + "x" * 40}

    assert_error(client.get(f"/api/calls/{call_id}", headers=headers), 401, "Invalid API key")


def test_the_other_keys_of_the_organization_keep_working(client, tenant, store, revoke_elsewhere):
    call_id = made_call(client, tenant)
    record, secret = keys.new_api_key(tenant.organization_id, 1)
    store.add_api_key(record)
    second = {"X-API-KEY": record["api_key"], "X-API-SECRET": secret}
    assert client.get(f"/api/calls/{call_id}", headers=second).status_code == 200

    revoke_elsewhere(tenant)

    assert client.get(f"/api/calls/{call_id}", headers=second).status_code == 200


def test_on_postgresql_a_read_of_a_call_reads_the_key_in_the_same_statement(
    backend, client, tenant, store, monkeypatch
):
    if backend != "postgres":
        pytest.skip("the embedded store reads keys from memory")
    call_id = made_call(client, tenant)
    assert client.get(f"/api/calls/{call_id}", headers=tenant.headers).status_code == 200
    reads_of_the_key_alone: list[str] = []
    find_api_key = store.find_api_key

    def counted(api_key: str) -> Any:
        reads_of_the_key_alone.append(api_key)
        return find_api_key(api_key)

    monkeypatch.setattr(store, "find_api_key", counted)

    for _ in range(3):
        assert client.get(f"/api/calls/{call_id}", headers=tenant.headers).status_code == 200
    assert reads_of_the_key_alone == []
    assert client.get("/api/calls", headers=tenant.headers).status_code == 200
    assert reads_of_the_key_alone == [tenant.headers["X-API-KEY"]]


def test_a_key_revoked_elsewhere_is_401_at_the_next_create_which_makes_no_call(
    client, tenant, store, revoke_elsewhere
):
    made_call(client, tenant)
    record, secret = keys.new_api_key(tenant.organization_id, 1)
    store.add_api_key(record)
    second = {"X-API-KEY": record["api_key"], "X-API-SECRET": secret}

    revoke_elsewhere(tenant)
    refused = client.post("/api/calls/create", json={"agent_id": "a"}, headers=tenant.headers)

    assert_error(refused, 401, "revoked")
    listed = client.get("/api/calls", headers=second).json()["data"]
    assert listed["pagination"]["total_count"] == 1


def test_a_key_revoked_elsewhere_is_401_not_400_for_a_create_with_a_bad_body(
    client, tenant, revoke_elsewhere
):
    made_call(client, tenant)

    revoke_elsewhere(tenant)
    refused = client.post("/api/calls/create", json={"agent_id": 5}, headers=tenant.headers)

    assert_error(refused, 401, "revoked")


def test_a_key_revoked_elsewhere_is_401_at_the_next_change_of_a_call(
    client, tenant, revoke_elsewhere
):
    call_id = made_call(client, tenant)

    revoke_elsewhere(tenant)
    refused = client.put(
        f"/api/calls/{call_id}", json={"metadata": {"k": "v"}}, headers=tenant.headers
    )

    assert_error(refused, 401, "revoked")


def test_a_key_changed_elsewhere_but_still_active_creates_its_call_once(
    backend, client, tenant, store, request
):
    made_call(client, tenant)
    other = (
        PostgresStore(request.getfixturevalue("migrated_database_url"))
        if backend == "postgres"
        else store
    )
    try:
        other.change_api_key(
            tenant.organization_id, tenant.api_key_id, lambda key: {**key, "description": "x"}
        )
    finally:
        if other is not store:
            other.close()

    created = client.post("/api/calls/create", json={"agent_id": "a"}, headers=tenant.headers)

    assert created.status_code == 200, created.text
    listed = client.get("/api/calls", headers=tenant.headers).json()["data"]
    assert listed["pagination"]["total_count"] == 2


def test_on_postgresql_a_create_reads_the_key_in_the_same_statement(
    backend, client, tenant, store, monkeypatch
):
    if backend != "postgres":
        pytest.skip("the embedded store reads keys from memory")
    made_call(client, tenant)
    reads_of_the_key_alone: list[str] = []
    find_api_key = store.find_api_key

    def counted(api_key: str) -> Any:
        reads_of_the_key_alone.append(api_key)
        return find_api_key(api_key)

    monkeypatch.setattr(store, "find_api_key", counted)

    for _ in range(3):
        made_call(client, tenant)
    assert reads_of_the_key_alone == []
