"""Handlers of the `admin` tag: organizations and their API keys (admin token required)."""

from __future__ import annotations

from typing import Any

from calls_server.domain import keys
from calls_server.domain.calls import now_ms
from calls_server.domain.errors import Conflict
from calls_server.handlers.envelope import Envelope, success
from calls_server.handlers.scope import store

Response = tuple[Envelope, int]


def create_organization(body: dict[str, Any]) -> Response:
    """POST /api/organizations"""
    organization = keys.new_organization(now_ms(), body.get("organization_id"), body.get("name"))
    store().add_organization(organization)
    return success("Organization created successfully", organization), 200


def create_api_key(organization_id: str, body: dict[str, Any]) -> Response:
    """POST /api/organizations/{organizationId}/api-keys"""
    record, secret = keys.new_api_key(
        organization_id, now_ms(), body.get("name"), body.get("description")
    )
    store().add_api_key(record)
    data = {**keys.public_view(record), "api_secret": secret, "warning": keys.SECRET_WARNING}
    return success("API key generated successfully", data), 200


def list_api_keys(organization_id: str) -> Response:
    """GET /api/organizations/{organizationId}/api-keys"""
    found = [keys.public_view(key) for key in store().list_api_keys(organization_id)]
    data = {"organization_id": organization_id, "api_keys": found, "count": len(found)}
    return success("API keys retrieved successfully", data), 200


def revoke_api_key(organization_id: str, api_key_id: str) -> Response:
    """DELETE /api/organizations/{organizationId}/api-keys/{apiKeyId}"""
    now = now_ms()

    def revoke(key: keys.ApiKey) -> keys.ApiKey:
        if key["status"] == "REVOKED":
            raise Conflict(f"API key '{api_key_id}' is already revoked", message="Already revoked")
        return keys.revoked(key, now)

    key = store().change_api_key(organization_id, api_key_id, revoke)
    return success("API key revoked successfully", keys.public_view(key)), 200
