"""Handlers of the `sandbox_faults` tag: the faults an organization orders (domain/faults.py)."""

from __future__ import annotations

from typing import Any

from calls_server.domain.envelope import success
from calls_server.domain.faults import FaultRules
from calls_server.handlers.scope import organization_id, sandbox_off, services


def list_sandbox_faults(token_info: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """GET /api/sandbox/faults."""
    return success("Sandbox faults", _rules().listed(organization_id(token_info))), 200


def create_sandbox_fault(
    token_info: dict[str, Any], body: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    """POST /api/sandbox/faults."""
    rule = _rules().add(organization_id(token_info), body, services().clock())
    return success("Sandbox fault created", rule), 200


def clear_sandbox_faults(token_info: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """DELETE /api/sandbox/faults."""
    return success("Sandbox faults cleared", _rules().clear(organization_id(token_info))), 200


def delete_sandbox_fault(token_info: dict[str, Any], fault_id: str) -> tuple[dict[str, Any], int]:
    """DELETE /api/sandbox/faults/{fault_id}."""
    rule = _rules().remove(organization_id(token_info), fault_id)
    return success("Sandbox fault deleted", rule), 200


def _rules() -> FaultRules:
    rules = services().faults
    if rules is None:
        raise sandbox_off()
    return rules
