"""Post-call webhooks: where an organization wants to hear about its calls' status changes,
the events owed to them, and what each delivery attempt does to an event and a webhook."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from calls_server.domain import iso8601
from calls_server.domain.calls import Call
from calls_server.domain.errors import BadRequest

Webhook = dict[str, Any]
# One event owed to one webhook, with its delivery state (schema WebhookEvent).
WebhookEvent = dict[str, Any]

# The most recent attempts an event keeps (their count is kept whole).
ATTEMPTS_KEPT = 20

# The statuses that end a call: entering one is the post-call event upstream sends.
POST_CALL_STATUSES = ("ended", "error")

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
    organization_id: str,
    fields: Mapping[str, Any],
    now: int,
    existing: int = 0,
    limit: int | None = None,
) -> Webhook:
    """A webhook with its signing secret (shown once, when created); with a `limit`, for an
    organization that has `existing` webhooks (`within_limit`). A request's create leaves
    the count to the store's insert instead (`Store.add_webhook`'s check), where concurrent
    creates cannot both pass. (Whether its URL may be called is `integrations.egress`' to
    say: it takes resolving the name.)"""
    if limit is not None:
        within_limit(existing, limit)
    created = iso8601.utc(now)
    return {
        "id": f"webhook_{uuid.uuid4().hex}",
        "organization_id": organization_id,
        "name": fields["name"],
        "url": fields["url"],
        "description": fields.get("description"),
        "is_active": fields["is_active"],
        "status_events": fields.get("status_events", False),
        "disabled_reason": None,
        "failing_since": None,
        "secret": "whsec_" + secrets.token_urlsafe(32),
        "created_at": created,
        "updated_at": created,
    }


def within_limit(existing: int, limit: int) -> None:
    """BadRequest unless an organization that has `existing` webhooks may add one."""
    if existing >= limit:
        raise BadRequest(
            f"An organization may have at most {limit} webhooks; delete one it no longer needs"
        )


def changed(webhook: Webhook, fields: Mapping[str, Any], now: int) -> Webhook:
    """`webhook` with `fields` (a PATCH body) applied; switching it on clears why it was
    switched off and its failing streak."""
    updated = {**webhook, **fields, "updated_at": iso8601.utc(now)}
    return _enabled(updated) if fields.get("is_active") else updated


def toggled(webhook: Webhook, now: int) -> Webhook:
    """`webhook` switched on if it was off, and off if it was on."""
    return changed(webhook, {"is_active": not webhook["is_active"]}, now)


def _enabled(webhook: Webhook) -> Webhook:
    return {**webhook, "disabled_reason": None, "failing_since": None}


def public_view(webhook: Webhook, agent_count: int = 0) -> Webhook:
    """A webhook as shown: without its signing secret, with the number of agents it is
    assigned to (and with the fields webhooks stored by earlier versions lack; those sent
    every status change)."""
    shown = {"disabled_reason": None, "failing_since": None, "status_events": True, **webhook}
    return {**{k: v for k, v in shown.items() if k != "secret"}, "agent_count": agent_count}


def tool(webhook: Webhook) -> dict[str, Any]:
    """A webhook as an agent's post-call tool (upstream keeps assignments as tools)."""
    return {
        "name": webhook["name"],
        "url": webhook["url"],
        "description": webhook.get("description"),
        "trigger": "post_call",
        "webhook_id": webhook["id"],
    }


def toggled_message(webhook: Webhook) -> str:
    """What the toggle answers: which way it went."""
    state = "activated" if webhook["is_active"] else "deactivated"
    return f"Post-call webhook {state} successfully"


def listed(
    webhooks: Iterable[Webhook], active_only: bool, agent_counts: Mapping[str, int]
) -> list[Webhook]:
    """The webhooks a listing shows, without their secrets: all, or only the active ones."""
    return [
        public_view(hook, agent_counts.get(hook["id"], 0))
        for hook in webhooks
        if hook["is_active"] or not active_only
    ]


def status_event(old: Call | None, new: Call | None) -> str | None:
    """The event a change of a call is, if it changes the call's status (or its existence)."""
    before = old["call_status"] if old else None
    after = new["call_status"] if new else None
    if before == after:
        return None
    return STATUS_EVENTS[after]


# -- events and their delivery -----------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed delivery is tried again, when an event is given up, and when an endpoint
    that keeps failing is switched off (seconds)."""

    first_delay: float = 30.0
    max_delay: float = 3600.0
    give_up_after: float = 3 * 86400.0
    disable_after: float = 3 * 86400.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt in a row (1, 2, ...)."""
        return float(min(self.max_delay, self.first_delay * 2 ** min(failures - 1, 60)))


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt got: a status code, or an error instead of an answer."""

    at: int  # Unix milliseconds, when it was sent
    latency_ms: int
    status_code: int | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def problem(self) -> str:
        return self.error or f"HTTP {self.status_code}"


def owed_events(
    old: Call | None,
    new: Call | None,
    hooks: Iterable[Webhook],
    assigned: Collection[str],
    now: int,
    event_id: str,
) -> list[WebhookEvent]:
    """The events a change of a call owes its organization's active webhooks, all with the
    same `event_id`, at most one per webhook.

    As upstream: a call that ends (`ended`, or `error`) is owed to the webhooks `assigned`
    to its agent (the post-call event). This server's extension: every status change is
    owed to the webhooks that asked for `status_events`.
    """
    name = status_event(old, new)
    if name is None:
        return []
    call: Call = new or old  # type: ignore[assignment]
    post_call = new is not None and new["call_status"] in POST_CALL_STATUSES
    hooks = [h for h in hooks if h.get("status_events") or (post_call and h["id"] in assigned)]
    return [
        {
            "event_id": event_id,
            "webhook_id": hook["id"],
            "organization_id": call["organization_id"],
            "call_id": call["call_id"],
            "event": name,
            "created_at": now,
            "status": "pending",
            "attempt_count": 0,
            "failures": 0,  # failed attempts since the event was last (re)queued
            "retry_from": now,
            "next_attempt_at": now,
            "delivered_at": None,
            "attempts": [],
            "payload": {
                "event": name,
                "event_id": event_id,
                "timestamp": now,
                "organization_id": call["organization_id"],
                "webhook_id": hook["id"],
                "call": call,
            },
        }
        for hook in hooks
        if hook["is_active"]
    ]


def attempted(event: WebhookEvent, attempt: Attempt, policy: RetryPolicy) -> WebhookEvent:
    """`event` after `attempt`: delivered; or due again after the policy's delay; or, once
    that would pass the policy's window since it was queued, failed for good."""
    attempts = [*event["attempts"], _attempt_view(attempt)][-ATTEMPTS_KEPT:]
    updated = {**event, "attempts": attempts, "attempt_count": event["attempt_count"] + 1}
    if attempt.succeeded:
        return {
            **updated,
            "status": "delivered",
            "delivered_at": attempt.at,
            "next_attempt_at": None,
        }
    failures = event["failures"] + 1
    next_at = attempt.at + int(policy.delay(failures) * 1000)
    if next_at > event["retry_from"] + policy.give_up_after * 1000:
        return {**updated, "status": "failed", "failures": failures, "next_attempt_at": None}
    return {**updated, "failures": failures, "next_attempt_at": next_at}


def redelivered(event: WebhookEvent, now: int) -> WebhookEvent:
    """`event` queued again for delivery now, with a fresh retry window (attempts kept)."""
    return {**event, "status": "pending", "failures": 0, "retry_from": now, "next_attempt_at": now}


def after_attempt(webhook: Webhook, attempt: Attempt, policy: RetryPolicy) -> Webhook:
    """`webhook` after a delivery attempt: a success ends its failing streak; a failure
    starts one, or, once it has lasted the policy's `disable_after`, switches the webhook
    off with the reason. The same object when nothing changes."""
    since = webhook.get("failing_since")
    if attempt.succeeded:
        return {**webhook, "failing_since": None} if since else webhook
    if since is None:
        return {**webhook, "failing_since": iso8601.utc(attempt.at)}
    failing_for = attempt.at - iso8601.parse_utc(since)
    if webhook["is_active"] and failing_for >= policy.disable_after * 1000:
        reason = (
            f"Switched off automatically: every delivery failed since {since} "
            f"(last: {attempt.problem}). Switch it on again once the endpoint answers 2xx."
        )
        return {
            **webhook,
            "is_active": False,
            "disabled_reason": reason,
            "updated_at": iso8601.utc(attempt.at),
        }
    return webhook


def settled_at(event: WebhookEvent) -> int | None:
    """When the event was delivered or given up (Unix ms); None while it is pending."""
    if event["status"] == "pending":
        return None
    if event["delivered_at"] is not None:
        return int(event["delivered_at"])
    return int(event["attempts"][-1]["at"]) if event["attempts"] else int(event["created_at"])


def event_view(event: WebhookEvent) -> WebhookEvent:
    """An event as the API shows it (without the bookkeeping of its retry window)."""
    return {k: v for k, v in event.items() if k not in ("failures", "retry_from")}


def _attempt_view(attempt: Attempt) -> dict[str, Any]:
    return {
        "at": attempt.at,
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
    }
