"""Handlers of the `schedule` tag: reschedule or cancel a scheduled call."""

from __future__ import annotations

from typing import Any

from calls_server.domain import calls
from calls_server.handlers.envelope import Envelope, success
from calls_server.handlers.scope import organization_id, store


def update_schedule(
    call_id: str, body: dict[str, Any], token_info: dict[str, Any]
) -> tuple[Envelope, int]:
    """PUT /api/calls/{callId}/schedule"""
    org = organization_id(token_info)
    now = calls.now_ms()
    new_time = body["scheduled_timestamp"]
    call = store().change_call(org, call_id, lambda stored: calls.reschedule(stored, new_time, now))
    data = {
        "operation": "schedule_update",
        "organization_id": org,
        "call_id": call_id,
        "previous_scheduled_timestamp": _last_event_data(call)["previous_scheduled_timestamp"],
        "new_scheduled_timestamp": new_time,
        "scheduled_for_human": calls.scheduled_for_human(new_time),
        "call": call,
    }
    return success("Scheduled call time updated successfully", data), 200


def cancel_schedule(call_id: str, token_info: dict[str, Any]) -> tuple[Envelope, int]:
    """DELETE /api/calls/{callId}/schedule"""
    org = organization_id(token_info)
    now = calls.now_ms()
    call = store().change_call(org, call_id, lambda stored: calls.cancel_schedule(stored, now))
    data = {
        "operation": "schedule_cancelled",
        "organization_id": org,
        "call_id": call_id,
        "cancelled_scheduled_timestamp": _last_event_data(call)["previous_scheduled_timestamp"],
        "call": call,
    }
    return success("Scheduled call cancelled successfully - converted to regular call", data), 200


def _last_event_data(call: calls.Call) -> dict[str, Any]:
    """The data of the event the change just appended (it records the previous time)."""
    data: dict[str, Any] = call["events"][-1]["data"]
    return data
