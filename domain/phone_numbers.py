"""Phone numbers: the organization's numbers, each bound to at most one agent per direction.

This server has no carrier: a number is a record. Its `outbound_agent_id` is the agent a
phone call placed from it speaks with when the request names none; its `inbound_agent_id`
would answer calls to it. Telephony plumbing (trunks, dispatch rules, webhook URL) is
stored and shown as given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from calls_server.domain import iso8601
from calls_server.domain.errors import BadRequest

PhoneNumber = dict[str, Any]

# Upstream writes the type two ways (ZUDU_TWILIO on its hand-written pages, zudu-twilio on
# its generated ones); stored and answered in the generated pages' form.
TYPES = {"zudu_twilio": "zudu-twilio", "zudu-twilio": "zudu-twilio", "custom": "custom"}
AGENT_FIELDS = ("inbound_agent_id", "outbound_agent_id")
SORTABLE = ("phone_number", "nickname", "area_code", "updated_at")


def new_phone_number(
    organization_id: str,
    fields: Mapping[str, Any],
    now: int,
    is_agent: Callable[[str], bool],
    phone_number_type: str | None = None,
) -> PhoneNumber:
    """A number of `organization_id` as a create (or import) body describes it; each bound
    agent must be one of the organization's (`is_agent`)."""
    number = fields["phone_number"]
    created = iso8601.utc(now)
    record: PhoneNumber = {
        "phone_number": number,
        "phone_number_pretty": pretty(number),
        "organization_id": organization_id,
        "area_code": fields.get("area_code") or _area_code(number),
        "nickname": fields.get("nickname", fields.get("label")),
        "phone_number_type": _type(phone_number_type or fields.get("phone_number_type")),
        "number_provider": fields.get("number_provider", fields.get("provider", "twilio")),
        "inbound_agent_id": fields.get("inbound_agent_id"),
        "outbound_agent_id": fields.get("outbound_agent_id"),
        "inbound_agent_version": fields.get("inbound_agent_version", 1),
        "outbound_agent_version": fields.get("outbound_agent_version", 1),
        "inbound_webhook_url": fields.get("inbound_webhook_url"),
        "inbound_trunk_id": fields.get("inbound_trunk_id"),
        "outbound_trunk_id": fields.get("outbound_trunk_id"),
        "dispatch_rule_id": fields.get("dispatch_rule_id"),
        "created_at": created,
        "updated_at": created,
        "last_modification_timestamp": now,
    }
    _check_agents(record, is_agent)
    return record


def changed(
    number: PhoneNumber, fields: Mapping[str, Any], now: int, is_agent: Callable[[str], bool]
) -> PhoneNumber:
    """`number` with a PATCH body applied: only the fields sent change; null clears (an
    agent field set to null unbinds that direction)."""
    given = dict(fields)
    if "label" in given:  # upstream's other name for the nickname
        given.setdefault("nickname", given.pop("label"))
    updated = {**number, **given}
    updated["updated_at"] = iso8601.utc(now)
    updated["last_modification_timestamp"] = now
    _check_agents({k: v for k, v in given.items() if k in AGENT_FIELDS}, is_agent)
    return updated


def outbound_agent(
    from_number: str, number: PhoneNumber | None, is_agent: Callable[[str], bool]
) -> str:
    """The agent a phone call placed from `from_number` speaks with when the request names
    none: the outbound agent bound to it (`number`, None when the organization does not
    have it)."""
    agent = number.get("outbound_agent_id") if number else None
    if agent is None:
        raise BadRequest(
            f"No agent specified and phone number '{from_number}' has no outbound agent",
            message="Validation error",
        )
    if not is_agent(agent):
        raise BadRequest(
            f"The outbound agent '{agent}' of phone number '{from_number}' no longer exists",
            message="Validation error",
        )
    return str(agent)


def pretty(number: str) -> str:
    """`+14157774444` as `+1 (415) 777-4444` (North American numbers; others as given)."""
    if number.startswith("+1") and len(number) == 12:
        return f"+1 ({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


def is_available(number: PhoneNumber) -> bool:
    """Whether the number is bound to no agent, in either direction."""
    return all(number.get(field) is None for field in AGENT_FIELDS)


def selected(
    numbers: list[PhoneNumber],
    criteria: Mapping[str, Any],
    sort_by: str,
    descending: bool,
) -> list[PhoneNumber]:
    """`numbers` matching `criteria` (`nickname` contained in any case, `area_code`,
    `agent_id` bound inbound or outbound), sorted."""
    nickname = (criteria.get("nickname") or "").lower()
    area_code, agent = criteria.get("area_code"), criteria.get("agent_id")
    found = [
        n
        for n in numbers
        if (not nickname or nickname in (n.get("nickname") or "").lower())
        and (area_code is None or n.get("area_code") == area_code)
        and (agent is None or agent in (n.get("inbound_agent_id"), n.get("outbound_agent_id")))
    ]
    # None sorts first (nicknames and area codes may be missing).
    return sorted(
        found, key=lambda n: (n[sort_by] is not None, n[sort_by] or 0), reverse=descending
    )


def path_number(segment: str) -> str:
    """The number a `{phone_number}` path segment names: `%2B` arrives decoded; a leading
    space is a `+` that a client form-decoded."""
    return "+" + segment[1:] if segment.startswith(" ") else segment


def _check_agents(fields: Mapping[str, Any], is_agent: Callable[[str], bool]) -> None:
    for field in AGENT_FIELDS:
        agent = fields.get(field)
        if agent is not None and not is_agent(agent):
            raise BadRequest(
                f"{field} '{agent}' is not an agent of this organization",
                message="Validation error",
            )


def _area_code(number: str) -> int | None:
    return int(number[2:5]) if number.startswith("+1") and len(number) == 12 else None


def _type(given: str | None) -> str:
    return TYPES[(given or "zudu-twilio").lower()]
