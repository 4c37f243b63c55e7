"""What a handler needs beyond its arguments: the services the app factory built once, and
the caller's organization. The app puts the services in its lifespan state, which the ASGI
server copies into every request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

# The context variable behind `connexion.context.scope`, which the request path sets for
# every request: read directly, not through that werkzeug proxy (a microsecond a lookup).
# Connexion's private names are listed in calls_server/request_path/connexion_private.py.
from connexion.context import _scope as request_scope

from calls_server.domain.casing import Casing
from calls_server.domain.errors import NotFound
from calls_server.domain.faults import FaultRules
from calls_server.domain.rate_limits import RateLimits
from calls_server.handlers.idempotency_keys import IdempotencyKeys
from calls_server.integrations.clock import Clock
from calls_server.integrations.dialer import Dialer
from calls_server.integrations.egress import EgressPolicy
from calls_server.integrations.livekit import LiveKitRooms
from calls_server.services.sandbox import SandboxDialer
from calls_server.services.test_clocks import Clocks
from calls_server.storage import Store


@dataclass(frozen=True)
class Services:
    """Everything handlers and security functions use, built once when the app starts."""

    store: Store
    clock: Clock
    # The outbound dialer phone calls are handed to; None when none is configured.
    dialer: Dialer | None
    # Issues web calls' LiveKit tokens; None when no LiveKit server is configured.
    rooms: LiveKitRooms | None
    # Where webhooks may be sent (public addresses, and the networks the operator allows).
    egress: EgressPolicy
    # How many webhooks one organization may have.
    webhook_limit: int
    # Worker threads phone calls are placed on (dialing may hang): a pool of their own.
    dial_limiter: anyio.CapacityLimiter
    # The admin API's bearer token; None disables the admin API.
    admin_token: str | None
    # How responses case enum values (as upstream does, or one way throughout).
    casing: Casing
    # Requests per key and organization, and failed authentications per address.
    rate_limits: RateLimits
    # Creates sent with an Idempotency-Key: those running, and the kept answers' lifetime.
    idempotency: IdempotencyKeys
    # The sandbox dialer (also `dialer`), which plays web calls too; None when it is off.
    sandbox: SandboxDialer | None = None
    # The sandbox's test clocks (also `clock`) and the faults organizations ordered; None
    # when it is off.
    test_clocks: Clocks | None = None
    faults: FaultRules | None = None


def services() -> Services:
    """The services of the running app (read from the request's scope directly: building
    Connexion's request object for it would cost more than the rest of a GET)."""
    found: Services = request_scope.get()["state"]["services"]
    return found


def sandbox_off() -> NotFound:
    """What every sandbox operation answers on a server without the sandbox."""
    return NotFound("The sandbox is off on this server (CALLS_SANDBOX)", message="Not found")


def organization_id(token_info: dict[str, Any]) -> str:
    """The organization of the API key that authenticated this request."""
    found: str = token_info["apiKey"]["organization_id"]
    return found


Handler = TypeVar("Handler", bound=Callable[..., Any])


def reads(handler: Handler) -> Handler:
    """Mark `handler` as one that only reads the store. The request path runs it on the
    event loop when the store answers reads from memory (the embedded store: microseconds,
    no hop to a worker thread), and on a worker thread when reads wait for a database
    (`Store.reads_wait`), so that the event loop never waits for the network."""
    handler.reads = True  # type: ignore[attr-defined]
    return handler
