"""Faults an organization orders of the sandbox (`sandbox_faults` operations): rules that
make the server misbehave on purpose, for that organization only, so that a client's
retries, timeouts and idempotency can be tested.

A rule applies to an operation of the API (by `operationId`) or to outbound traffic
(`webhook_delivery`, `dial`), fires every time, the next `times` times, or with a
`probability` drawn from a generator of its own seeded with its `seed` (so the same rules
and the same requests fault the same ones), and says what happens (`action`). The rules
live in memory, per organization (`FaultRules`); the app applies them (the request path's
guard, the webhook deliverer, the sandbox dialer) and marks what they touched with
`FAULT_HEADER`.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from calls_server.domain import iso8601
from calls_server.domain.errors import ApiError, BadRequest, NotFound

# The header on every answer, and every webhook delivery, a rule faulted or delayed.
FAULT_HEADER = "Sandbox-Fault"
# What each target may have happen to it.
ACTIONS = {
    "operation": ("error", "latency", "drop"),
    "webhook_delivery": ("duplicate", "delay", "reorder"),
    "dial": ("timeout", "refuse"),
}
# The fields that go with one action only (the others are refused with it).
ACTION_FIELDS = {
    "status": ("error",),
    "message": ("error",),
    "error": ("error",),
    "headers": ("error",),
    "latency_ms": ("latency", "delay"),
    "after": ("drop",),
}
DEFAULT_STATUS = 503
DEFAULT_LATENCY_MS = 1000


class FaultNotFound(NotFound):
    message = "Sandbox fault not found"

    def __init__(self, fault_id: str) -> None:
        super().__init__(f"Fault with ID '{fault_id}' does not exist")


class FaultAnswer(ApiError):
    """The answer a rule with `action: error` makes instead of the operation's."""

    def __init__(self, rule: Fault) -> None:
        assert rule.status is not None
        super().__init__(
            rule.error or f"Fault {rule.fault_id} of the sandbox ({rule.status})",
            message=rule.message or _phrase(rule.status),
            headers={**rule.headers, FAULT_HEADER: rule.fault_id},
        )
        self.status_code = rule.status


@dataclass
class Fault:
    """One rule. `times` counts down as it fires (None: every time)."""

    fault_id: str
    action: str
    operation_id: str | None
    outbound: str | None
    status: int | None
    message: str | None
    error: str | None
    headers: dict[str, str]
    latency_ms: int | None
    after: bool
    times: int | None
    probability: float
    seed: int
    created_at: int
    fired: int = 0
    draws: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.draws = random.Random(self.seed)

    def as_answered(self) -> dict[str, Any]:
        """The rule as the API answers it."""
        return {
            "fault_id": self.fault_id,
            "operation_id": self.operation_id,
            "outbound": self.outbound,
            "action": self.action,
            "status": self.status,
            "message": self.message,
            "error": self.error,
            "headers": dict(self.headers),
            "latency_ms": self.latency_ms,
            "after": self.after,
            "times": self.times,
            "probability": self.probability,
            "seed": self.seed,
            "fired": self.fired,
            "created_at": iso8601.utc(self.created_at),
        }

    def fires(self) -> bool:
        """Whether it fires on this match (counted if so)."""
        if self.times == 0:
            return False
        # Drawn on every match, even at probability 1, so that the draws of a seed stay
        # the same whatever the probability.
        if self.draws.random() >= self.probability:
            return False
        self.fired += 1
        if self.times is not None:
            self.times -= 1
        return True


def new_fault(fields: Mapping[str, Any], now: int, operation_ids: Collection[str]) -> Fault:
    """A rule from a request's fields (valid under the spec's schema), or BadRequest for one
    that names an unknown operation or pairs an action with a target it does not fit.
    `operation_ids`: those a rule may name."""
    operation_id, outbound = fields.get("operation_id"), fields.get("outbound")
    if (operation_id is None) == (outbound is None):
        raise BadRequest("A fault names exactly one of 'operation_id' and 'outbound'")
    if operation_id is not None and operation_id not in operation_ids:
        raise BadRequest(
            f"Unknown operation_id '{operation_id}': a fault names an operation of this API "
            "(its operationId in openapi.yaml), but not the sandbox's own"
        )
    target: str = "operation" if operation_id is not None else str(outbound)
    action = fields["action"]
    if action not in ACTIONS[target]:
        what = f"operation '{operation_id}'" if operation_id else f"outbound '{outbound}'"
        raise BadRequest(
            f"Action '{action}' does not go with {what}: it takes "
            + ", ".join(f"'{a}'" for a in ACTIONS[target])
        )
    for name, actions in ACTION_FIELDS.items():
        if name in fields and action not in actions:
            raise BadRequest(
                f"'{name}' goes with action '{actions[0]}' only"
                + (f" or '{actions[1]}'" if len(actions) > 1 else "")
            )
    return Fault(
        fault_id=f"fault_{uuid.uuid4().hex}",
        action=action,
        operation_id=operation_id,
        outbound=outbound,
        status=fields.get("status", DEFAULT_STATUS) if action == "error" else None,
        message=fields.get("message"),
        error=fields.get("error"),
        headers=dict(fields.get("headers") or {}),
        latency_ms=(
            fields.get("latency_ms", DEFAULT_LATENCY_MS) if action in ("latency", "delay") else None
        ),
        after=bool(fields.get("after", False)),
        times=fields.get("times"),
        probability=float(fields.get("probability", 1)),
        seed=int(fields.get("seed", 0)),
        created_at=now,
    )


class FaultRules:
    """Every organization's rules, in the order they were added, for the operations named
    `operation_ids` and outbound traffic. Safe from many threads."""

    def __init__(self, operation_ids: Collection[str]) -> None:
        self.operation_ids = frozenset(operation_ids)
        self._rules: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()

    def add(self, organization_id: str, fields: Mapping[str, Any], now: int) -> dict[str, Any]:
        """Put the rule `fields` describe (`new_fault`) in force for the organization; the
        rule as answered."""
        fault = new_fault(fields, now, self.operation_ids)
        with self._lock:
            self._rules.setdefault(organization_id, []).append(fault)
            return fault.as_answered()

    def listed(self, organization_id: str) -> list[dict[str, Any]]:
        """The organization's rules as answered, oldest first."""
        with self._lock:
            return [rule.as_answered() for rule in self._rules.get(organization_id, [])]

    def remove(self, organization_id: str, fault_id: str) -> dict[str, Any]:
        """Take the rule out of force; FaultNotFound if the organization has no such rule."""
        with self._lock:
            rules = self._rules.get(organization_id, [])
            for n, rule in enumerate(rules):
                if rule.fault_id == fault_id:
                    del rules[n]
                    return rule.as_answered()
        raise FaultNotFound(fault_id)

    def clear(self, organization_id: str) -> list[dict[str, Any]]:
        """Take every rule of the organization out of force; those removed."""
        with self._lock:
            return [rule.as_answered() for rule in self._rules.pop(organization_id, [])]

    def draw(
        self, organization_id: str, operation_id: str | None = None, outbound: str | None = None
    ) -> Fault | None:
        """The first of the organization's rules for the operation (or the outbound
        traffic) that fires on this match, if one does."""
        if not self._rules:  # no rule anywhere: the usual case, without the lock
            return None
        with self._lock:
            for rule in self._rules.get(organization_id, []):
                matches = rule.operation_id == operation_id and rule.outbound == outbound
                if matches and rule.fires():
                    return rule
        return None


def _phrase(status: int) -> str:
    """The envelope's usual `message` for `status` ("Service unavailable")."""
    try:
        return HTTPStatus(status).phrase.capitalize()
    except ValueError:
        return "Error"
