"""Post-call webhooks: where an organization wants to hear about its calls' status changes."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from calls_server.domain.calls import Call
from calls_server.domain.errors import BadRequest

Webhook = dict[str, Any]

# The event sent when a call enters a status (or, for None, is deleted).
STATUS_EVENTS = {
    "registered": "call_registered",
    "scheduled": "call_scheduled",
    "ongoing": "call_started",
    "ended": "call_ended",
    "error": "call_error",
    None: "call_deleted",
}


def new_webhook(
    organization_id: str, fields: Mapping[str, Any], now: int, existing: int, limit: int
) -> Webhook:
    """A webhook with its signing secret (shown once, when created), for an organization
    that has `existing` webhooks and may have `limit`. (Whether its URL may be called is
    `integrations.egress`' to say: it takes resolving the name.)"""
    if existing >= limit:
        raise BadRequest(
            f"An organization may have at most {limit} webhooks; delete one it no longer needs"
        )
    created = iso_time(now)
    return {
        "id": f"webhook_{uuid.uuid4().hex}",
        "organization_id": organization_id,
        "name": fields["name"],
        "url": fields["url"],
        "description": fields.get("description"),
        "is_active": fields["is_active"],
        "secret": "whsec_" + secrets.token_urlsafe(32),
        "created_at": created,
        "updated_at": created,
    }


def changed(webhook: Webhook, fields: Mapping[str, Any], now: int) -> Webhook:
    """`webhook` with `fields` (a PATCH body) applied."""
    return {**webhook, **fields, "updated_at": iso_time(now)}


def toggled(webhook: Webhook, now: int) -> Webhook:
    """`webhook` switched on if it was off, and off if it was on."""
    return {**webhook, "is_active": not webhook["is_active"], "updated_at": iso_time(now)}


def public_view(webhook: Webhook) -> Webhook:
    """A webhook as listed: without its signing secret."""
    return {k: v for k, v in webhook.items() if k != "secret"}


def listed(webhooks: Iterable[Webhook], active_only: bool) -> list[Webhook]:
    """The webhooks a listing shows, without their secrets: all, or only the active ones."""
    return [public_view(hook) for hook in webhooks if hook["is_active"] or not active_only]


def status_event(old: Call | None, new: Call | None) -> str | None:
    """The event a change of a call is, if it changes the call's status (or its existence)."""
    before = old["call_status"] if old else None
    after = new["call_status"] if new else None
    if before == after:
        return None
    return STATUS_EVENTS[after]


def iso_time(ms: int) -> str:
    """A Unix time in milliseconds as ISO 8601 UTC with milliseconds, as upstream shows it."""
    seconds = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{seconds}.{ms % 1000:03d}Z"
