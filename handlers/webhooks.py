"""Handlers of the `webhooks` tag: an organization's post-call webhooks."""

from __future__ import annotations

from typing import Any

from calls_server.domain import webhooks
from calls_server.domain.envelope import Envelope, success
from calls_server.handlers.scope import organization_id, services

Response = tuple[Envelope, int]


def create_post_call_webhook(body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """POST /api/post-call-webhooks/create: the secret is shown in this response only."""
    running = services()
    org = organization_id(token_info)
    running.egress.check_url(body["url"])
    existing = len(running.store.webhooks(org))
    hook = webhooks.new_webhook(org, body, running.clock(), existing, running.webhook_limit)
    running.store.add_webhook(hook)
    return success("Webhook created successfully", hook), 200


async def list_post_call_webhooks(token_info: dict[str, Any], **params: Any) -> Response:
    """GET /api/post-call-webhooks (`activeOnly=true` for the active ones)."""
    stored = services().store.webhooks(organization_id(token_info))
    found = webhooks.listed(stored, active_only=bool(params.get("activeOnly")))
    return success("Webhooks retrieved successfully", {"webhooks": found, "count": len(found)}), 200


async def get_post_call_webhook(webhook_id: str, token_info: dict[str, Any]) -> Response:
    """GET /api/post-call-webhooks/{webhook_id}"""
    hook = services().store.get_webhook(organization_id(token_info), webhook_id)
    return success("Webhook retrieved successfully", webhooks.public_view(hook)), 200


def update_post_call_webhook(
    webhook_id: str, body: dict[str, Any], token_info: dict[str, Any]
) -> Response:
    """PATCH /api/post-call-webhooks/{webhook_id}"""
    running = services()
    if "url" in body:
        running.egress.check_url(body["url"])
    now = running.clock()
    hook = running.store.change_webhook(
        organization_id(token_info), webhook_id, lambda h: webhooks.changed(h, body, now)
    )
    return success("Webhook updated successfully", webhooks.public_view(hook)), 200


def delete_post_call_webhook(webhook_id: str, token_info: dict[str, Any]) -> Response:
    """DELETE /api/post-call-webhooks/{webhook_id}"""
    hook = services().store.delete_webhook(organization_id(token_info), webhook_id)
    return success("Webhook deleted successfully", webhooks.public_view(hook)), 200


def toggle_post_call_webhook(webhook_id: str, token_info: dict[str, Any]) -> Response:
    """POST /api/post-call-webhooks/{webhook_id}/toggle"""
    now = services().clock()
    hook = services().store.change_webhook(
        organization_id(token_info), webhook_id, lambda h: webhooks.toggled(h, now)
    )
    return success("Webhook toggled successfully", webhooks.public_view(hook)), 200
