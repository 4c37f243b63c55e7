"""Handlers of the `webhooks` tag: an organization's post-call webhooks."""

from __future__ import annotations

from typing import Any

from calls_server.domain import webhooks
from calls_server.handlers.envelope import Envelope, success
from calls_server.handlers.scope import organization_id, settings, store

Response = tuple[Envelope, int]


def create_webhook(body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """POST /api/post-call-webhooks/create: the secret is shown in this response only."""
    hook = webhooks.new_webhook(organization_id(token_info), body, settings().webhook_allow_http)
    store().add_webhook(hook)
    return success("Webhook created successfully", hook), 200


async def list_webhooks(token_info: dict[str, Any], **params: Any) -> Response:
    """GET /api/post-call-webhooks (`activeOnly=true` for the active ones)."""
    found = [
        webhooks.public_view(hook)
        for hook in store().webhooks(organization_id(token_info))
        if hook["is_active"] or not params.get("activeOnly")
    ]
    return success("Webhooks retrieved successfully", {"webhooks": found, "count": len(found)}), 200


async def get_webhook(webhook_id: str, token_info: dict[str, Any]) -> Response:
    """GET /api/post-call-webhooks/{webhookId}"""
    hook = store().get_webhook(organization_id(token_info), webhook_id)
    return success("Webhook retrieved successfully", webhooks.public_view(hook)), 200


def update_webhook(webhook_id: str, body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """PATCH /api/post-call-webhooks/{webhookId}"""
    allow_http = settings().webhook_allow_http
    hook = store().change_webhook(
        organization_id(token_info), webhook_id, lambda h: webhooks.changed(h, body, allow_http)
    )
    return success("Webhook updated successfully", webhooks.public_view(hook)), 200


def delete_webhook(webhook_id: str, token_info: dict[str, Any]) -> Response:
    """DELETE /api/post-call-webhooks/{webhookId}"""
    hook = store().delete_webhook(organization_id(token_info), webhook_id)
    return success("Webhook deleted successfully", webhooks.public_view(hook)), 200


def toggle_webhook(webhook_id: str, token_info: dict[str, Any]) -> Response:
    """POST /api/post-call-webhooks/{webhookId}/toggle"""
    hook = store().change_webhook(organization_id(token_info), webhook_id, webhooks.toggled)
    return success("Webhook toggled successfully", webhooks.public_view(hook)), 200
