"""Shared fixtures: a fresh store and app per test, organizations with keys, helpers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from domain import keys
from server.app import create_app
from server.settings import Settings
from storage import EmbeddedStore

ADMIN_TOKEN = "admin-token-for-tests-0123456789"

SEED_REQUEST = {
    "agent_id": "agent-123",
    "call_type": "PHONE_CALL",
    "direction": "OUTBOUND",
    "metadata": {"customer_id": "cust-001", "priority": "high", "campaign": "summer-2024"},
}


@dataclass(frozen=True)
class Tenant:
    """An organization and the headers of one of its active keys."""

    organization_id: str
    api_key_id: str
    headers: dict[str, str]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[EmbeddedStore]:
    opened = EmbeddedStore(data_dir)
    yield opened
    opened.close()


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, admin_token=ADMIN_TOKEN, validate_responses=True)


@pytest.fixture
def client(settings: Settings, store: EmbeddedStore) -> Iterator[TestClient]:
    with TestClient(create_app(settings, store), raise_server_exceptions=False) as c:
        yield c


def add_tenant(store: EmbeddedStore, organization_id: str) -> Tenant:
    """Create an organization with one key, straight in the store."""
    store.add_organization(keys.new_organization(1, organization_id))
    record, secret = keys.new_api_key(organization_id, 1)
    store.add_api_key(record)
    headers = {"X-API-KEY": record["api_key"], "X-API-SECRET": secret}
    return Tenant(organization_id, record["api_key_id"], headers)


@pytest.fixture
def tenant(store: EmbeddedStore) -> Tenant:
    return add_tenant(store, "test-org-123")


@pytest.fixture
def other_tenant(store: EmbeddedStore) -> Tenant:
    return add_tenant(store, "other-org")


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def create_call(client: TestClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    """POST /api/calls/create (the seed's body unless given) and return the call."""
    response = client.post("/api/calls/create", json=body or SEED_REQUEST, headers=tenant.headers)
    assert response.status_code == 200, response.text
    call: dict[str, Any] = response.json()["data"]["call"]
    return call


def assert_error(response: Any, status: int, error_contains: str = "") -> dict[str, Any]:
    """The response is an error envelope with `status` whose `error` mentions the text."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"message", "status", "error", "data"}
    assert body["status"] == "error"
    assert body["data"] is None
    assert body["message"]
    assert error_contains in body["error"], body["error"]
    return body
