"""Handlers of the `schedule` tag: reschedule or cancel a scheduled call."""

from __future__ import annotations

from typing import Any

from calls_server.domain import calls, iso8601, versions
from calls_server.domain.envelope import Envelope, success
from calls_server.handlers.scope import organization_id, services

Versioned = tuple[Envelope, int, dict[str, str]]  # with the call's ETag


def update_call_schedule(
    call_id: str, body: dict[str, Any], token_info: dict[str, Any], if_match: str | None = None
) -> Versioned:
    """PUT /api/calls/{call_id}/schedule"""
    org = organization_id(token_info)
    now = services().clock()
    new_time = body["scheduled_timestamp"]
    previous: list[int] = []

    def move(stored: calls.Call) -> calls.Call:
        versions.check_if_match(stored, if_match)
        previous.append(stored["scheduled_timestamp"])  # the time this change replaces
        return calls.reschedule(stored, new_time, now)

    call = services().store.change_call(org, call_id, move)
    data = {
        "operation": "schedule_update",
        "organization_id": org,
        "call_id": call_id,
        "previous_scheduled_timestamp": previous[-1],
        "new_scheduled_timestamp": new_time,
        "scheduled_for_human": iso8601.utc(new_time * 1000),
        "call": services().casing.call(call),
    }
    message = "Scheduled call time updated successfully"
    return success(message, data), 200, {"ETag": versions.etag(call)}


def cancel_call_schedule(
    call_id: str, token_info: dict[str, Any], if_match: str | None = None
) -> Versioned:
    """DELETE /api/calls/{call_id}/schedule"""
    org = organization_id(token_info)
    now = services().clock()
    cancelled: list[int] = []

    def cancel(stored: calls.Call) -> calls.Call:
        versions.check_if_match(stored, if_match)
        cancelled.append(stored["scheduled_timestamp"])  # the time this change cancels
        return calls.cancel_schedule(stored, now)

    call = services().store.change_call(org, call_id, cancel)
    data = {
        "operation": "schedule_cancelled",
        "organization_id": org,
        "call_id": call_id,
        "cancelled_scheduled_timestamp": cancelled[-1],
        "call": services().casing.call(call),
    }
    message = "Scheduled call cancelled successfully - converted to regular call"
    return success(message, data), 200, {"ETag": versions.etag(call)}
