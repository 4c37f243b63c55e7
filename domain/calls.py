"""The call record and the rules that change it.

A call is a plain JSON-able dict, stored and answered as is. Every function here is pure:
it takes a call (and the time) and returns a new call, never mutating its argument, so a
rule that raises leaves the stored call untouched. Storage applies these functions
atomically; handlers never edit a call themselves.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from calls_server.domain.errors import BadRequest, Conflict, IllegalTransition

Call = dict[str, Any]

# Which `call_status` a PUT may move a call to, from each status. Leaving `scheduled` for
# `registered` is the schedule-cancel endpoint's job; entering `scheduled` is the
# phone-call create's (a schedule needs a time). `registered -> ended` is a record written
# after the fact (a dialer that reports only the final state, an import of past calls).
# What stays illegal is leaving a final state, or going back.
TRANSITIONS: dict[str, frozenset[str]] = {
    "registered": frozenset({"ongoing", "ended", "error"}),
    "scheduled": frozenset({"ongoing", "error"}),
    "ongoing": frozenset({"ended", "error"}),
    "ended": frozenset(),
    "error": frozenset(),
}

# How much one call may hold (documented in openapi.yaml, "Limits"). Each update adds an
# event, so a call updated without end would grow without end: past MAX_EVENTS the oldest
# events but the first are dropped, and one event says how many.
MAX_EVENTS = 200
MAX_METADATA_KEYS = 100
MAX_CALL_BYTES = 2 * 1024 * 1024  # the whole call as JSON
EVENTS_OMITTED = "Earlier events omitted"


def copy_of(call: Call) -> Call:
    """A private deep copy of `call`. A call is plain JSON (stored and answered as is), so a
    JSON round trip is one, and orjson's takes a tenth of copy.deepcopy's time: every
    change of a call starts with one (about 3 us against 30 us for an ended call)."""
    copied: Call = orjson.loads(orjson.dumps(call))
    return copied


# Metadata keys the server keeps for scheduled calls, as upstream shows them.
CLAIM_EVENT = "Scheduled call due"
# The events of a schedule changed through its own endpoint, named as upstream's pages name
# them, with the `endpoint_used` their data carries there.
RESCHEDULED_EVENT = "Scheduled call time updated via dedicated endpoint"
SCHEDULE_CANCELLED_EVENT = "Scheduled call cancelled - converted to regular call"
SCHEDULE_METADATA_KEYS = ("is_scheduled", "scheduled_timestamp", "execution_status")
# The event of a call the server ended itself (`cut_off`).
CUT_OFF_EVENT = "Call ended by the server"
# The event of a call the sandbox dialer of a process plays from then on (`played_by`).
PLAYED_EVENT = "Call played by the sandbox dialer"
# The statuses of a call under way: a player may still move it on.
UNDER_WAY = ("registered", "ongoing")

# Enum values a PUT may set, stored in lower case like `call_status` (input in either case;
# responses case them as domain/casing.py says).
_ENUM_UPDATE_FIELDS = ("direction", "disconnection_reason")
# Fields a PUT copies as given (after enum values are lower-cased).
_PLAIN_UPDATE_FIELDS = (
    "agent_id",
    "direction",
    "from_number",
    "to_number",
    "disconnection_reason",
    "transcript",
    "transcript_object",
    "transcript_with_tool_calls",
    "recording_url",
    "public_log_url",
    "latency",
    "call_analysis",
    "call_cost",
    "telephony_identifier",
    "opt_out_sensitive_data_storage",
)


def with_dynamic_variables(body: Mapping[str, Any]) -> dict[str, Any]:
    """A create request's body with its `dynamic_variables` (the values an agent's prompts
    are filled with) kept in `metadata.dynamic_variables`, where the calls a batch places
    carry their task's."""
    kept = {k: v for k, v in body.items() if k != "dynamic_variables"}
    if body.get("dynamic_variables") is not None:
        metadata = dict(body.get("metadata") or {})
        metadata["dynamic_variables"] = copy.deepcopy(body["dynamic_variables"])
        kept["metadata"] = metadata
    return kept


def new_call_id() -> str:
    """A generated call id: `call_<uuid4>`."""
    return f"call_{uuid.uuid4()}"


def enum_value(value: str | None) -> str | None:
    """How every enum value is stored and answered: lower case (input may be either)."""
    return None if value is None else value.lower()


def event(now: int, call: Call, name: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One timeline entry; `session_time` counts milliseconds since the call started."""
    started = call.get("start_timestamp")
    session_time = max(0, now - started) if started is not None else 0
    return {"timestamp": now, "event": name, "session_time": session_time, "data": dict(data or {})}


def check_size(call_id: str, size: int) -> None:
    """Raise BadRequest if a call of `size` bytes (as JSON) is larger than a call may be."""
    if size > MAX_CALL_BYTES:
        raise BadRequest(
            f"Call '{call_id}' would take {size} bytes, more than the {MAX_CALL_BYTES} a "
            "call may hold; store less (metadata, transcript) in it"
        )


def new_call(
    *,
    organization_id: str,
    agent_id: str,
    now: int,
    call_type: str,
    call_id: str | None = None,
    direction: str | None = None,
    from_number: str | None = None,
    to_number: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    event_name: str = "Call created via API",
    event_data: Mapping[str, Any] | None = None,
) -> Call:
    """A new call in status `registered`, with its creation event. (Schedule keys in
    `metadata` are the server's: ignored.)"""
    metadata = _client_metadata(metadata)
    _check_metadata(metadata)
    call: Call = {
        "id": str(uuid.uuid4()),
        "call_id": call_id or new_call_id(),
        "agent_id": agent_id,
        "organization_id": organization_id,
        "call_status": "registered",
        "call_type": enum_value(call_type),
        "direction": enum_value(direction),
        "from_number": from_number,
        "to_number": to_number,
        "created_at": now,
        "updated_at": now,
        "scheduled_timestamp": None,
        "start_timestamp": None,
        "end_timestamp": None,
        "call_duration": None,
        "disconnection_reason": None,
        "recording_url": None,
        "public_log_url": None,
        "opt_out_sensitive_data_storage": False,
        "metadata": copy.deepcopy(metadata),
        "events": [],
        "transcript": None,
        "transcript_object": [],
        "transcript_with_tool_calls": [],
        "latency": None,
        "call_analysis": None,
        "call_cost": None,
        "telephony_identifier": None,
    }
    _record(call, now, event_name, event_data)
    return call


def new_web_call(
    *,
    organization_id: str,
    agent_id: str,
    now: int,
    metadata: Mapping[str, Any] | None = None,
    is_widget_call: bool | None = None,
) -> Call:
    """A new web call; whether it comes from the widget, when the request says, is kept in
    its metadata (`is_widget_call`)."""
    kept = dict(metadata or {})
    if is_widget_call is not None:
        kept["is_widget_call"] = is_widget_call
    return new_call(
        organization_id=organization_id,
        agent_id=agent_id,
        now=now,
        call_type="web_call",
        metadata=kept,
        event_name="Web call created via API",
    )


def schedule(call: Call, scheduled_timestamp: int, now: int) -> Call:
    """A freshly created call, put in status `scheduled` for `scheduled_timestamp` (seconds)."""
    _require_future(scheduled_timestamp, now)
    scheduled = copy_of(call)
    scheduled["call_status"] = "scheduled"
    scheduled["scheduled_timestamp"] = scheduled_timestamp
    scheduled["metadata"].update(
        is_scheduled=True, scheduled_timestamp=scheduled_timestamp, execution_status="pending"
    )
    _record(scheduled, now, "Call scheduled", {"scheduled_timestamp": scheduled_timestamp})
    return scheduled


def reschedule(call: Call, scheduled_timestamp: int, now: int) -> Call:
    """The scheduled `call` moved to a new future time (seconds)."""
    _require_scheduled(call)
    _require_future(scheduled_timestamp, now)
    previous = call["scheduled_timestamp"]
    moved = copy_of(call)
    moved["scheduled_timestamp"] = scheduled_timestamp
    moved["metadata"]["scheduled_timestamp"] = scheduled_timestamp
    moved["updated_at"] = now
    _record(
        moved,
        now,
        RESCHEDULED_EVENT,
        {
            "previous_scheduled_timestamp": previous,
            "new_scheduled_timestamp": scheduled_timestamp,
            "updated_at": now,
            "endpoint_used": "/schedule",
        },
    )
    return moved


def cancel_schedule(call: Call, now: int) -> Call:
    """The scheduled `call` turned back into a regular, `registered` call: its metadata
    without the schedule's keys (as upstream's page shows it, the caller's own keys only)."""
    _require_scheduled(call)
    cancelled = copy_of(call)
    previous = cancelled["scheduled_timestamp"]
    cancelled["call_status"] = "registered"
    cancelled["scheduled_timestamp"] = None
    for key in SCHEDULE_METADATA_KEYS:
        cancelled["metadata"].pop(key, None)
    cancelled["updated_at"] = now
    _record(
        cancelled,
        now,
        SCHEDULE_CANCELLED_EVENT,
        {
            "previous_scheduled_timestamp": previous,
            "cancelled_at": now // 1000,
            "endpoint_used": "/schedule DELETE",
        },
    )
    return cancelled


def update(call: Call, changes: Mapping[str, Any], now: int) -> Call:
    """`call` with a PUT body applied: fields set, metadata merged, status moved, event added.

    Raises IllegalTransition for a status change the lifecycle does not allow, and
    BadRequest when the timestamps would put the end before the start.
    """
    updated = copy_of(call)
    changed = sorted(changes)
    event_data: dict[str, Any] = {"updated_fields": changed}

    for field in _PLAIN_UPDATE_FIELDS:
        if field in changes:
            value = changes[field]
            enum = field in _ENUM_UPDATE_FIELDS and isinstance(value, str)
            updated[field] = enum_value(value) if enum else copy.deepcopy(value)

    for key, value in _client_metadata(changes.get("metadata")).items():
        if value is None:
            updated["metadata"].pop(key, None)
        else:
            updated["metadata"][key] = copy.deepcopy(value)
    _check_metadata(updated["metadata"])

    for field in ("start_timestamp", "end_timestamp"):
        if field in changes:
            updated[field] = changes[field]

    new_status = enum_value(changes.get("call_status"))
    old_status = call["call_status"]
    if new_status is not None and new_status != old_status:
        if new_status not in TRANSITIONS[old_status]:
            raise IllegalTransition(
                f"Cannot change call_status from '{old_status}' to '{new_status}'"
                + _allowed_hint(old_status)
            )
        updated["call_status"] = new_status
        event_data["previous_status"] = old_status
        event_data["new_status"] = new_status
        _stamp_status_times(updated, new_status, now)
        if old_status == "scheduled":
            _leave_schedule(updated, "executed" if new_status == "ongoing" else "failed")

    start, end = updated["start_timestamp"], updated["end_timestamp"]
    if start is not None and end is not None and end < start:
        raise BadRequest(f"end_timestamp ({end}) is before start_timestamp ({start})")
    updated["call_duration"] = end - start if start is not None and end is not None else None
    updated["updated_at"] = now
    _record(updated, now, "Call updated via API", event_data)
    return updated


def claim_due(call: Call, now: int, claimant: str) -> Call:
    """The scheduled `call`, due, marked as being dispatched (so that it is dialed once) by
    the process `claimant` (recorded in the claim's event)."""
    _require_scheduled(call)
    if call["scheduled_timestamp"] * 1000 > now:
        raise Conflict(f"Call '{call['call_id']}' is not due yet", message="Call is not due")
    claimed = copy_of(call)
    claimed["metadata"]["execution_status"] = "dispatching"
    claimed["updated_at"] = now
    late = max(0, now // 1000 - call["scheduled_timestamp"])
    data = {
        "scheduled_timestamp": call["scheduled_timestamp"],
        "late_by_seconds": late,
        "claimed_by": claimant,
    }
    _record(claimed, now, CLAIM_EVENT, data)
    return claimed


def claimant(call: Call) -> str | None:
    """The process that claimed `call` for dispatching (None: claimed by a version that did
    not record it, or not claimed)."""
    for event in reversed(call["events"]):
        if event["event"] == CLAIM_EVENT:
            return event["data"].get("claimed_by")  # type: ignore[no-any-return]
    return None


def abandoned(call: Call, claimed_by: str | None, reason: str, now: int) -> Call:
    """`call`, claimed by the process `claimed_by` that stopped before recording the
    outcome, as `error` (not dialed again). Raises Conflict if it is no longer that claim."""
    if not being_dispatched(call) or claimant(call) != claimed_by:
        raise Conflict(
            f"Call '{call['call_id']}' is no longer claimed by process {claimed_by}",
            message="Call is not being dispatched",
        )
    return dispatched(call, False, reason, 0, now)


def being_dispatched(call: Call) -> bool:
    """Whether the scheduler has claimed `call` and not yet recorded the outcome."""
    claimed = call["metadata"].get("execution_status") == "dispatching"
    return bool(call["call_status"] == "scheduled" and claimed)


def dispatched(call: Call, accepted: bool, reason: str, attempts: int, now: int) -> Call:
    """`call` after the dialer accepted it (`ongoing`) or did not (`error`)."""
    if call["call_status"] not in ("registered", "scheduled"):
        raise Conflict(
            f"Call '{call['call_id']}' cannot be dialed in status '{call['call_status']}'",
            message="Call cannot be dialed",
        )
    result = copy_of(call)
    status = "ongoing" if accepted else "error"
    result["call_status"] = status
    _stamp_status_times(result, status, now)
    if not accepted:
        result["disconnection_reason"] = "dial_failed"
    if call["call_status"] == "scheduled":
        _leave_schedule(result, "executed" if accepted else "failed")
    result["updated_at"] = now
    name = "Call dispatched to dialer" if accepted else "Dialing failed"
    data = {"result": reason, "attempts": attempts, "previous_status": call["call_status"]}
    _record(result, now, name, data)
    return result


def played_by(call: Call, process: str, now: int, data: Mapping[str, Any] | None = None) -> Call:
    """`call`, about to be played by the sandbox dialer of `process` (recorded in an event,
    with `data`, the sandbox's draw: whoever finds the call under way once that process has
    stopped ends it)."""
    played = copy_of(call)
    played["updated_at"] = now
    _record(played, now, PLAYED_EVENT, {"played_by": process, **(data or {})})
    return played


def player(call: Call) -> str | None:
    """The process whose sandbox dialer plays `call`, while the call is under way (None:
    ended, or not the sandbox's)."""
    if call["call_status"] not in UNDER_WAY:
        return None
    for event in reversed(call["events"]):
        if event["event"] == PLAYED_EVENT:
            return event["data"].get("played_by")  # type: ignore[no-any-return]
    return None


def cut_off(call: Call, disconnection_reason: str, why: str, now: int) -> Call:
    """`call`, under way, ended now in `error` with `disconnection_reason` by the server
    itself, `why` in its event: a call whose player stopped with the process that played
    it (the sandbox's, after a kill). Raises Conflict if the call is not under way."""
    if call["call_status"] not in UNDER_WAY:
        raise Conflict(
            f"Call '{call['call_id']}' is not under way (status '{call['call_status']}')",
            message="Call is not under way",
        )
    ended = copy_of(call)
    ended["call_status"] = "error"
    ended["disconnection_reason"] = disconnection_reason
    _stamp_status_times(ended, "error", now)
    start, end = ended["start_timestamp"], ended["end_timestamp"]
    if start is not None:
        ended["end_timestamp"] = end = max(start, end)
        ended["call_duration"] = end - start
    ended["updated_at"] = now
    data = {
        "reason": why,
        "disconnection_reason": disconnection_reason,
        "previous_status": call["call_status"],
        "new_status": "error",
    }
    _record(ended, now, CUT_OFF_EVENT, data)
    return ended


def _leave_schedule(call: Call, execution_status: str) -> None:
    """Mark `call` as no longer scheduled, saying how its schedule ended."""
    call["scheduled_timestamp"] = None
    call["metadata"].update(is_scheduled=False, execution_status=execution_status)


def _stamp_status_times(call: Call, status: str, now: int) -> None:
    if status == "ongoing" and call["start_timestamp"] is None:
        call["start_timestamp"] = now
    if status in ("ended", "error") and call["end_timestamp"] is None:
        call["end_timestamp"] = now


def _allowed_hint(status: str) -> str:
    allowed = sorted(TRANSITIONS[status])
    if not allowed:
        return f": '{status}' is final"
    return ": allowed from '{}' are {}".format(status, ", ".join(f"'{s}'" for s in allowed))


def _require_scheduled(call: Call) -> None:
    if call["call_status"] != "scheduled":
        raise Conflict(
            f"Call '{call['call_id']}' is not scheduled (status '{call['call_status']}')",
            message="Call is not scheduled",
        )
    if being_dispatched(call):
        raise Conflict(
            f"Call '{call['call_id']}' is being dispatched to the dialer",
            message="Call is being dispatched",
        )


def _require_future(scheduled_timestamp: int, now: int) -> None:
    if scheduled_timestamp * 1000 <= now:
        raise BadRequest(
            f"scheduled_timestamp {scheduled_timestamp} is not in the future "
            f"(now is {now // 1000}, Unix seconds)"
        )


def _record(call: Call, now: int, name: str, data: Mapping[str, Any] | None = None) -> None:
    """Append an event to `call` (a private copy), keeping its timeline within MAX_EVENTS:
    the first event, one that counts the omitted ones, then the latest."""
    events = call["events"]
    events.append(event(now, call, name, data))
    if len(events) <= MAX_EVENTS:
        return
    first, rest = events[0], events[1:]
    omitted = 0
    if rest[0]["event"] == EVENTS_OMITTED:
        omitted, rest = rest[0]["data"]["omitted"], rest[1:]
    drop = len(rest) - (MAX_EVENTS - 2)
    marker = {
        "timestamp": rest[drop - 1]["timestamp"],
        "event": EVENTS_OMITTED,
        "session_time": rest[drop - 1]["session_time"],
        "data": {"omitted": omitted + drop},
    }
    call["events"] = [first, marker, *rest[drop:]]


def _client_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """`metadata` from a request without the schedule keys the server keeps itself, so that
    what a GET returned can be sent back as it is (its schedule keys are ignored)."""
    return {k: v for k, v in (metadata or {}).items() if k not in SCHEDULE_METADATA_KEYS}


def _check_metadata(metadata: Mapping[str, Any]) -> None:
    """Raise BadRequest if `metadata` holds more client keys than a call may hold."""
    keys = len([key for key in metadata if key not in SCHEDULE_METADATA_KEYS])
    if keys > MAX_METADATA_KEYS:
        raise BadRequest(f"metadata would have {keys} keys, more than {MAX_METADATA_KEYS}")
