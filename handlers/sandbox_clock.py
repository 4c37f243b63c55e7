"""Handlers of the `sandbox_clock` tag: an organization's test clock (services/test_clocks.py)."""

from __future__ import annotations

from typing import Any

from calls_server.domain import iso8601
from calls_server.domain.envelope import success
from calls_server.domain.errors import BadRequest
from calls_server.handlers.scope import organization_id, sandbox_off, services
from calls_server.services.test_clocks import Clocks


def get_sandbox_clock(token_info: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """GET /api/sandbox/clock."""
    org = organization_id(token_info)
    return success("Sandbox clock", _clock(_clocks(), org)), 200


def freeze_sandbox_clock(
    token_info: dict[str, Any], body: dict[str, Any] | None = None
) -> tuple[dict[str, Any], int]:
    """POST /api/sandbox/clock/freeze."""
    org, clocks = organization_id(token_info), _clocks()
    at = (body or {}).get("frozen_at")
    clocks.freeze(org, None if at is None else _time(at, "frozen_at"))
    return success("Sandbox clock frozen", _clock(clocks, org)), 200


def advance_sandbox_clock(
    token_info: dict[str, Any], body: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    """POST /api/sandbox/clock/advance: a plain function, so that what falls due runs on a
    worker thread (webhook deliveries wait for their receivers)."""
    org, clocks = organization_id(token_info), _clocks()
    if ("seconds" in body) == ("to" in body):
        raise BadRequest("Give exactly one of 'seconds' and 'to'")
    now = clocks.now(org)
    to = _time(body["to"], "to") if "to" in body else now + round(body["seconds"] * 1000)
    steps = clocks.advance(org, to)
    return success("Sandbox clock advanced", {**_clock(clocks, org), "steps": steps}), 200


def resume_sandbox_clock(token_info: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """POST /api/sandbox/clock/resume."""
    org, clocks = organization_id(token_info), _clocks()
    clocks.resume(org)
    return success("Sandbox clock resumed", _clock(clocks, org)), 200


def _time(text: str, field: str) -> int:
    """`text` (ISO 8601, shaped by the spec's pattern) in Unix ms; BadRequest for a time
    that does not exist (February 30th)."""
    try:
        return iso8601.parse_utc(text)
    except ValueError:
        raise BadRequest(f"'{field}' is not a time: {text}") from None


def _clocks() -> Clocks:
    clocks = services().test_clocks
    if clocks is None:
        raise sandbox_off()
    return clocks


def _clock(clocks: Clocks, organization_id: str) -> dict[str, Any]:
    now = clocks.now(organization_id)
    return {
        "organization_id": organization_id,
        "frozen": clocks.frozen(organization_id),
        "now": iso8601.utc(now),
        "now_ms": now,
    }
