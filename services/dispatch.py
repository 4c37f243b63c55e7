"""Placing phone calls: recording them, handing them to the dialer, recording the outcome."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from calls_server.domain import calls, phone_numbers
from calls_server.domain.errors import Conflict, PhoneNumberNotFound
from calls_server.domain.phone_numbers import PhoneNumber
from calls_server.integrations.clock import Clock
from calls_server.integrations.dialer import Dialer, DialOutcome, job_for
from calls_server.storage.interface import (
    AgentRecords,
    CallRecords,
    PhoneNumberRecords,
)


class BoundAgentStore(AgentRecords, PhoneNumberRecords, Protocol):
    """What finding a number's outbound agent needs of the store."""


class DispatchStore(CallRecords, AgentRecords, PhoneNumberRecords, Protocol):
    """What placing a phone call needs of the store."""


NOT_DIALED = "Phone call created, but not dialed: no outbound dialer is configured on this server"
# Why a call whose dial may have been made, but was not recorded, is not dialed again.
DIAL_UNKNOWN = (
    "interrupted: the request that created this call lost its answer before the dial's"
    " outcome was recorded; not dialed again, as the dialer does not honour Idempotency-Key"
)


@dataclass(frozen=True)
class PhoneCallPlaced:
    """What became of a new phone call: `status` is what `create-phone-call` answers in
    `data.status` (call_initiated, call_failed, call_scheduled, dialer_not_configured)."""

    call: calls.Call
    status: str
    message: str


def place_phone_call(
    store: DispatchStore,
    dialer: Dialer | None,
    clock: Clock,
    organization_id: str,
    request: Mapping[str, Any],
) -> PhoneCallPlaced:
    """Record the outbound phone call `request` asks for (a create-phone-call body), then
    schedule it, or dial it now when a dialer is configured."""
    now = clock()
    agent_id = request.get("override_agent_id") or bound_agent(
        store, organization_id, request["from_number"]
    )
    call = calls.new_call(
        organization_id=organization_id,
        agent_id=agent_id,
        now=now,
        call_type="phone_call",
        direction="outbound",
        from_number=request["from_number"],
        to_number=request["to_number"],
        metadata=request.get("metadata"),
        event_name="Phone call created via API",
        event_data={"from_number": request["from_number"], "to_number": request["to_number"]},
    )
    if "scheduled_timestamp" in request:
        call = calls.schedule(call, request["scheduled_timestamp"], now)
    store.add_call(call)
    if dialer is not None and call["call_status"] == "registered":
        call, _ = dispatch(store, dialer, clock, organization_id, call["call_id"])
    return placed_as_stored(call, dialer)


def recover_phone_call(
    store: CallRecords, dialer: Dialer | None, clock: Clock, organization_id: str, call_id: str
) -> PhoneCallPlaced:
    """What became of the phone call `call_id`, stored by a create whose answer was lost
    (an unknown commit outcome): as `place_phone_call` would have answered. A call never
    dialed (or whose dial was not recorded) is dialed now when the dialer honours the
    job's Idempotency-Key (a dial already made is then not made twice); otherwise it is
    recorded as failed, not dialed again."""
    call = store.get_call(organization_id, call_id)
    if call["call_status"] == "registered" and dialer is not None:
        try:
            if dialer.idempotent:
                call, _ = dispatch(store, dialer, clock, organization_id, call_id)
            else:
                call = store.change_call(
                    organization_id,
                    call_id,
                    lambda call: calls.dispatched(call, False, DIAL_UNKNOWN, 0, clock()),
                )
        except Conflict:  # another retry recovered it meanwhile: answer what it left
            call = store.get_call(organization_id, call_id)
    return placed_as_stored(call, dialer)


def placed_as_stored(call: calls.Call, dialer: Dialer | None) -> PhoneCallPlaced:
    """What create-phone-call answers for `call`, read off its status (scheduled, not
    dialed, dialed, or failed with the dial's reason from its "Dialing failed" event): for
    a call just placed and for one recovered after a lost answer alike."""
    status = call["call_status"]
    if status == "scheduled":
        return PhoneCallPlaced(call, "call_scheduled", "Phone call scheduled successfully")
    if status == "registered" and dialer is None:
        return PhoneCallPlaced(call, "dialer_not_configured", NOT_DIALED)
    if status == "error" and call.get("disconnection_reason") == "dial_failed":
        failed = [e for e in call["events"] if e["event"] == "Dialing failed"]
        reason = failed[-1]["data"]["result"] if failed else "dialing failed"
        return PhoneCallPlaced(call, "call_failed", f"Phone call created, but not dialed: {reason}")
    return PhoneCallPlaced(call, "call_initiated", "Phone call created and initiated successfully")


def bound_agent(store: BoundAgentStore, organization_id: str, from_number: str) -> str:
    """The agent calls placed from `from_number` speak with when a request names none (the
    number's outbound agent); BadRequest when it has none."""
    try:
        number: PhoneNumber | None = store.get_phone_number(organization_id, from_number)
    except PhoneNumberNotFound:
        number = None
    known = {agent["agent_id"] for agent in store.list_agents(organization_id)}
    return phone_numbers.outbound_agent(from_number, number, known.__contains__)


def dispatch(
    store: CallRecords, dialer: Dialer, clock: Clock, organization_id: str, call_id: str
) -> tuple[calls.Call, DialOutcome]:
    """Hand the call to `dialer` and store the outcome: `ongoing`, or `error` with the reason."""
    outcome = dialer.dial(job_for(store.get_call(organization_id, call_id)))
    call = store.change_call(
        organization_id,
        call_id,
        lambda call: calls.dispatched(
            call, outcome.accepted, outcome.reason, outcome.attempts, clock()
        ),
    )
    return call, outcome
