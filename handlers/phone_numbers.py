"""Handlers of the `phone_numbers` tag: the organization's numbers and their agents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from calls_server.domain import iso8601, phone_numbers
from calls_server.domain.envelope import Envelope, success
from calls_server.domain.errors import BadRequest
from calls_server.domain.listing import pagination
from calls_server.domain.phone_numbers import PhoneNumber
from calls_server.handlers.idempotency import idempotent
from calls_server.handlers.scope import organization_id, reads, services
from calls_server.services import sandbox

Response = tuple[Envelope, int]

NOT_VALIDATED = "Phone number imported without carrier validation"
VALIDATED_AND_IMPORTED = "Phone number validated and imported successfully"
NO_CARRIER = (
    "Recorded without checking it with the carrier: this server has no carrier access, so "
    "it cannot confirm that the number is yours or can place calls"
)


@reads
def list_phone_numbers(token_info: dict[str, Any], **params: Any) -> Response:
    """GET /api/phone-numbers: the criteria come as query parameters."""
    return _list(token_info, params, params)


@reads
def search_phone_numbers(
    token_info: dict[str, Any], body: dict[str, Any] | None = None
) -> Response:
    """POST /api/phone-numbers/list: the criteria come in the body."""
    criteria = body or {}
    return _list(token_info, criteria, criteria.get("filter_criteria") or {})


def _list(token_info: dict[str, Any], paging: dict[str, Any], filters: dict[str, Any]) -> Response:
    org = organization_id(token_info)
    page, limit = paging.get("page", 0), paging.get("limit", 50)
    sort_by = paging.get("sort_by", "updated_at")
    sort_order = paging.get("sort_order", "descending")
    applied = {k: filters[k] for k in ("nickname", "area_code", "agent_id") if filters.get(k)}
    found = phone_numbers.selected(
        services().store.list_phone_numbers(org), applied, sort_by, sort_order == "descending"
    )
    shown = found[page * limit : (page + 1) * limit]
    block = pagination(page, limit, len(found))
    data = {
        "organization_id": org,
        "phone_numbers": shown,
        "returned_count": len(shown),
        # This family names the flags has_next / has_previous; the others the long names.
        "pagination": {
            **block,
            "has_next": block["has_next_page"],
            "has_previous": block["has_previous_page"],
        },
        "sort_order": sort_order,
        "sort_by": sort_by,
        "applied_filters": applied,
    }
    return success("Phone numbers retrieved successfully", data), 200


def _recover_phone_number(phone_number: str, token_info: dict[str, Any], **_: Any) -> Response:
    """createPhoneNumber's answer for a number stored by a request whose answer was lost."""
    number = services().store.get_phone_number(organization_id(token_info), phone_number)
    return success("Phone number created successfully", number), 200


@idempotent(_recover_phone_number)
def create_phone_number(body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """POST /api/phone-numbers/create"""
    org = organization_id(token_info)
    number = phone_numbers.new_phone_number(org, body, services().clock(), _is_agent(org))
    services().store.add_phone_number(number)
    return success("Phone number created successfully", number), 200


def _recover_import(phone_number: str, token_info: dict[str, Any], **_: Any) -> Response:
    """importPhoneNumber's answer for a number stored by a request whose answer was lost."""
    org = organization_id(token_info)
    number = services().store.get_phone_number(org, phone_number)
    return _imported(org, number, iso8601.parse_utc(number["created_at"]))


@idempotent(_recover_import)
def import_phone_number(body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """POST /api/phone-numbers/import: recorded as CUSTOM; the carrier credentials are used
    for nothing and never stored. In the sandbox, its carrier validates the number (or
    refuses a number scripted to fail: 400, nothing stored) and the trunks are named."""
    org, now = organization_id(token_info), services().clock()
    fields = {k: v for k, v in body.items() if k not in ("account_sid", "auth_token")}
    if services().sandbox is not None:
        refused = sandbox.validate_import(body["phone_number"])
        if refused is not None:
            raise BadRequest(refused, message="Validation error")
        fields.update(sandbox.sip_trunks(org, body["phone_number"]))
    number = phone_numbers.new_phone_number(org, fields, now, _is_agent(org), "custom")
    services().store.add_phone_number(number)
    return _imported(org, number, now)


def _imported(org: str, number: PhoneNumber, now: int) -> Response:
    if services().sandbox is not None:  # validated by the sandbox's carrier, as upstream
        message, status, validation = VALIDATED_AND_IMPORTED, "active", sandbox.VALIDATED
        capabilities: dict[str, bool] | None = {"voice": True, "sms": True}
    else:
        message, status, validation = NOT_VALIDATED, "not_validated", NO_CARRIER
        capabilities = None
    data = {
        "phone_number": number,
        "validation_result": {
            "phone_number": number["phone_number"],
            "friendly_name": number["nickname"],
            "capabilities": capabilities,
            "status": status,
            "message": validation,
        },
        "import_details": {
            "imported_at": now,
            "organization_id": org,
            "provider": number["number_provider"],
        },
    }
    return success(message, data), 200


@reads
def list_available_phone_numbers(token_info: dict[str, Any]) -> Response:
    """GET /api/phone-numbers/available: the organization's numbers bound to no agent."""
    org = organization_id(token_info)
    found = [n for n in services().store.list_phone_numbers(org) if phone_numbers.is_available(n)]
    data = {"organization_id": org, "available_count": len(found), "phone_numbers": found}
    return success("Available phone numbers retrieved successfully", data), 200


@reads
def get_phone_number(phone_number: str, token_info: dict[str, Any]) -> Response:
    """GET /api/phone-numbers/{phone_number}"""
    number = services().store.get_phone_number(
        organization_id(token_info), phone_numbers.path_number(phone_number)
    )
    return success("Phone number retrieved successfully", number), 200


def update_phone_number(
    phone_number: str, body: dict[str, Any], token_info: dict[str, Any]
) -> Response:
    """PATCH /api/phone-numbers/{phone_number}"""
    org, now = organization_id(token_info), services().clock()
    is_agent = _is_agent(org)
    number = services().store.change_phone_number(
        org,
        phone_numbers.path_number(phone_number),
        lambda stored: phone_numbers.changed(stored, body, now, is_agent),
    )
    return success("Phone number updated successfully", number), 200


def delete_phone_number(phone_number: str, token_info: dict[str, Any]) -> Response:
    """DELETE /api/phone-numbers/{phone_number}: there is no trunk or dispatch rule to
    remove, so each clean-up reports done."""
    org = organization_id(token_info)
    number = services().store.delete_phone_number(org, phone_numbers.path_number(phone_number))
    cleanup = {"dispatch_rule": True, "inbound_trunk": True, "outbound_trunk": True}
    data = {
        "phone_number": number["phone_number"],
        "organization_id": org,
        "cleanup_results": cleanup,
    }
    return success("Phone number deleted successfully", data), 200


def _is_agent(organization_id: str) -> Callable[[str], bool]:
    """Whether an agent id is one of the organization's agents (as of now)."""
    known = {agent["agent_id"] for agent in services().store.list_agents(organization_id)}
    return known.__contains__
