"""Handlers of the `webhooks` tag: an organization's post-call webhooks."""

from __future__ import annotations

from typing import Any

from calls_server.domain import webhooks
from calls_server.domain.envelope import Envelope, success
from calls_server.domain.listing import pagination
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


async def list_post_call_webhook_events(
    webhook_id: str, token_info: dict[str, Any], page: int, limit: int, **filters: Any
) -> Response:
    """GET /api/post-call-webhooks/{webhook_id}/events"""
    found, total = services().store.list_webhook_events(
        organization_id(token_info),
        webhook_id,
        status=filters.get("status"),
        since=filters.get("since"),
        offset=page * limit,
        limit=limit,
    )
    data = {
        "events": [webhooks.event_view(event) for event in found],
        "pagination": pagination(page, limit, total),
    }
    return success("Webhook events retrieved successfully", data), 200


async def get_post_call_webhook_event(
    webhook_id: str, event_id: str, token_info: dict[str, Any]
) -> Response:
    """GET /api/post-call-webhooks/{webhook_id}/events/{event_id}"""
    event = services().store.get_webhook_event(organization_id(token_info), webhook_id, event_id)
    return success("Webhook event retrieved successfully", webhooks.event_view(event)), 200


def redeliver_post_call_webhook_event(
    webhook_id: str, event_id: str, token_info: dict[str, Any]
) -> Response:
    """POST /api/post-call-webhooks/{webhook_id}/events/{event_id}/redeliver"""
    now = services().clock()
    event = services().store.change_webhook_event(
        organization_id(token_info), webhook_id, event_id, lambda e: webhooks.redelivered(e, now)
    )
    return success("Webhook event queued for redelivery", webhooks.event_view(event)), 200


def redeliver_post_call_webhook_events(
    webhook_id: str, body: dict[str, Any], token_info: dict[str, Any]
) -> Response:
    """POST /api/post-call-webhooks/{webhook_id}/redeliver"""
    store, org, now = services().store, organization_id(token_info), services().clock()
    failed, _ = store.list_webhook_events(org, webhook_id, status="failed", since=body["since"])
    ids = [event["event_id"] for event in reversed(failed)]  # oldest first
    for event_id in ids:
        store.change_webhook_event(
            org, webhook_id, event_id, lambda e: webhooks.redelivered(e, now)
        )
    data = {"redelivered": len(ids), "event_ids": ids}
    return success("Failed webhook events queued for redelivery", data), 200
