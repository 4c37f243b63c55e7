"""The sandbox's part in every operation (the request path's `OperationHooks`, with
CALLS_SANDBOX on): the caller's organization read on its test clock
(services/test_clocks.py), and its fault rules applied (domain/faults.py)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
from starlette.types import Message, Scope, Send

from calls_server.domain.faults import FAULT_HEADER, Fault, FaultAnswer
from calls_server.http_protocol import DROP_CONNECTION
from calls_server.request_path.api import OperationHooks
from calls_server.request_path.keys import OPERATION, ORGANIZATION_ID
from calls_server.services.test_clocks import ORGANIZATION


def entered(scope: Scope) -> None:
    """The handler about to run reads its caller's organization's time."""
    ORGANIZATION.set(scope.get(ORGANIZATION_ID))


async def guard(scope: Scope, send: Send) -> Send | None:
    """Apply the first of the caller's organization's rules for this operation that fires:
    its error answered instead (FaultAnswer), its latency waited, or the connection
    dropped (before the operation, or after it with its answer lost)."""
    organization_id = scope.get(ORGANIZATION_ID)
    if organization_id is None:  # the admin, or no credentials
        return send
    rule = scope["state"]["services"].faults.draw(organization_id, operation_id=scope[OPERATION])
    if rule is None:
        return send
    if rule.action == "error":
        raise FaultAnswer(rule)
    if rule.action == "latency":
        assert rule.latency_ms is not None
        await anyio.sleep(rule.latency_ms / 1000)
        return _marked(send, rule)
    drop: Callable[[], None] | None = scope.get(DROP_CONNECTION)
    if drop is None:  # not served by `calls-server serve`: nothing to drop; answered
        return _marked(send, rule)
    if not rule.after:
        drop()
        return None
    return _dropped_at_answer(drop)


def _marked(send: Send, rule: Fault) -> Send:
    """`send`, its answer marked with the rule that touched it."""
    mark = (FAULT_HEADER.lower().encode(), rule.fault_id.encode())

    async def marked(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), mark]}
        await send(message)

    return marked


def _dropped_at_answer(drop: Callable[[], None]) -> Send:
    """A `send` that drops the connection instead of answering."""

    async def dropped(message: Message) -> None:
        if message["type"] == "http.response.start":
            drop()

    return dropped


SANDBOX_HOOKS = OperationHooks(entered=entered, guard=guard)
