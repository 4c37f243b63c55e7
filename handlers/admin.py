"""Handlers of the `admin` tag: organizations and their API keys (admin token required)."""

from __future__ import annotations

from typing import Any

from calls_server.domain import keys
from calls_server.domain.envelope import Envelope, success
from calls_server.handlers.idempotency import idempotent
from calls_server.handlers.scope import services

Response = tuple[Envelope, int]


@idempotent
def create_organization(body: dict[str, Any]) -> Response:
    """POST /api/organizations"""
    now = services().clock()
    organization = keys.new_organization(now, body.get("organization_id"), body.get("name"))
    services().store.add_organization(organization)
    return success("Organization created successfully", organization), 200


@idempotent
def create_api_key(organization_id: str, body: dict[str, Any]) -> Response:
    """POST /api/organizations/{organization_id}/api-keys"""
    record, secret = keys.new_api_key(
        organization_id, services().clock(), body.get("name"), body.get("description")
    )
    services().store.add_api_key(record)
    data = {**keys.created_view(record), "api_secret": secret, "warning": keys.SECRET_WARNING}
    return success("API key generated successfully", data), 200


def list_api_keys(organization_id: str) -> Response:
    """GET /api/organizations/{organization_id}/api-keys"""
    found = [keys.public_view(key) for key in services().store.list_api_keys(organization_id)]
    data = {"organization_id": organization_id, "api_keys": found, "count": len(found)}
    return success("API keys retrieved successfully", data), 200


def revoke_api_key(organization_id: str, api_key_id: str) -> Response:
    """DELETE /api/organizations/{organization_id}/api-keys/{api_key_id}"""
    now = services().clock()
    key = services().store.change_api_key(
        organization_id, api_key_id, lambda key: keys.revoked(key, now)
    )
    return success("API key revoked successfully", keys.public_view(key)), 200
