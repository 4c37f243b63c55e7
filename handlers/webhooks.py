"""Handlers of the `webhooks` tag: an organization's post-call webhooks."""

from __future__ import annotations

from functools import partial
from typing import Any

from calls_server.domain import agents, versions, webhooks
from calls_server.domain.envelope import Envelope, success
from calls_server.domain.listing import pagination
from calls_server.handlers.idempotency import idempotent
from calls_server.handlers.scope import organization_id, reads, services

Response = tuple[Envelope, int]
Versioned = tuple[Envelope, int, dict[str, str]]  # with the webhook's ETag


def _webhook_created(hook: webhooks.Webhook) -> Versioned:
    shown = {**webhooks.public_view(hook), "secret": hook["secret"]}
    return success("Post-call webhook created successfully", shown), 200, _etag(hook)


def _recover_webhook(webhook_id: str, token_info: dict[str, Any], **_: Any) -> Versioned:
    """createPostCallWebhook's answer for a webhook stored by a request whose answer was
    lost (its secret included: it is stored, for signing)."""
    return _webhook_created(services().store.get_webhook(organization_id(token_info), webhook_id))


@idempotent(_recover_webhook)
def create_post_call_webhook(body: dict[str, Any], token_info: dict[str, Any]) -> Versioned:
    """POST /api/post-call-webhooks/create: the secret is shown in this response only."""
    running = services()
    org = organization_id(token_info)
    running.egress.check_url(body["url"])
    hook = webhooks.new_webhook(org, body, running.clock())
    # Counted in the store's insert, atomically: concurrent creates cannot both pass the cap.
    running.store.add_webhook(hook, partial(webhooks.within_limit, limit=running.webhook_limit))
    return _webhook_created(hook)


@reads
def list_post_call_webhooks(token_info: dict[str, Any], **params: Any) -> Response:
    """GET /api/post-call-webhooks (`activeOnly=true` for the active ones)."""
    org = organization_id(token_info)
    stored = services().store.list_webhooks(org)
    found = webhooks.listed(stored, bool(params.get("activeOnly")), _agent_counts(org))
    data = {"webhooks": found, "count": len(found)}
    return success("Post-call webhooks retrieved successfully", data), 200


@reads
def get_post_call_webhook(webhook_id: str, token_info: dict[str, Any]) -> Versioned:
    """GET /api/post-call-webhooks/{webhook_id}"""
    org = organization_id(token_info)
    hook = services().store.get_webhook(org, webhook_id)
    message = "Post-call webhook retrieved successfully"
    return success(message, _shown(org, hook)), 200, _etag(hook)


def update_post_call_webhook(
    webhook_id: str,
    body: dict[str, Any],
    token_info: dict[str, Any],
    if_match: str | None = None,
) -> Versioned:
    """PATCH /api/post-call-webhooks/{webhook_id}"""
    running = services()
    if "url" in body:
        running.egress.check_url(body["url"])
    now, org = running.clock(), organization_id(token_info)

    def change(stored: webhooks.Webhook) -> webhooks.Webhook:
        versions.check_if_match(stored, if_match, "webhook")
        return webhooks.changed(stored, body, now)

    hook = running.store.change_webhook(org, webhook_id, change)
    message = "Post-call webhook updated successfully"
    return success(message, _shown(org, hook)), 200, _etag(hook)


def delete_post_call_webhook(
    webhook_id: str, token_info: dict[str, Any], if_match: str | None = None
) -> Response:
    """DELETE /api/post-call-webhooks/{webhook_id}: its assignments to agents go with it."""
    services().store.delete_webhook(
        organization_id(token_info),
        webhook_id,
        lambda stored: versions.check_if_match(stored, if_match, "webhook"),
    )
    return success("Post-call webhook deleted successfully", None), 200


def toggle_post_call_webhook(
    webhook_id: str, token_info: dict[str, Any], if_match: str | None = None
) -> Versioned:
    """POST /api/post-call-webhooks/{webhook_id}/toggle"""
    now, org = services().clock(), organization_id(token_info)

    def toggle(stored: webhooks.Webhook) -> webhooks.Webhook:
        versions.check_if_match(stored, if_match, "webhook")
        return webhooks.toggled(stored, now)

    hook = services().store.change_webhook(org, webhook_id, toggle)
    return success(webhooks.toggled_message(hook), _shown(org, hook)), 200, _etag(hook)


def _etag(hook: webhooks.Webhook) -> dict[str, str]:
    return {"ETag": versions.etag(hook)}


def _agent_counts(organization_id: str) -> dict[str, int]:
    """How many of the organization's agents each webhook is assigned to."""
    counts: dict[str, int] = {}
    for agent in services().store.list_agents(organization_id):
        for webhook_id in agents.webhook_ids(agent):
            counts[webhook_id] = counts.get(webhook_id, 0) + 1
    return counts


def _shown(organization_id: str, hook: webhooks.Webhook) -> webhooks.Webhook:
    return webhooks.public_view(hook, _agent_counts(organization_id).get(hook["id"], 0))


@reads
def list_post_call_webhook_events(
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
        call_id=filters.get("call_id"),
    )
    data = {
        "events": [webhooks.event_view(event) for event in found],
        "pagination": pagination(page, limit, total),
    }
    return success("Webhook events retrieved successfully", data), 200


@reads
def get_post_call_webhook_event(
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
