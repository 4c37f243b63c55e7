"""The outbound dialer: phone calls are handed to the operator's dialer over HTTP.

The job is POSTed as JSON, signed under the configured secret (integrations/signing.py:
`Calls-Signature: t=...,v1=...`, and the deprecated `X-Calls-Signature`), with an
`Idempotency-Key` (the call id, the same on every attempt) and a timeout per attempt.
A 2xx accepts the call. Another 4xx (but 408 and 429) refuses it at once; a 5xx, 408, 429,
timeout or connection error is retried, with exponential backoff, up to the configured
number of attempts, all within the dial's deadline: no attempt starts with less than
`HttpDialer.floor` of it left (nor a back-off that would leave less), and each attempt's
timeouts are cut to what is left of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx

from calls_server.integrations.clock import Clock, wall_clock
from calls_server.integrations.signing import signature_headers

_RETRIED = frozenset({408, 429})
# Seconds of the deadline an attempt needs left to be made at all: one started with less
# would almost surely time out after the dialer had taken the job, so a call it placed
# would be recorded as failed.
MIN_ATTEMPT = 0.5


@dataclass(frozen=True)
class DialOutcome:
    """What the dialer said: accepted or not, why, after how many attempts."""

    accepted: bool
    reason: str
    attempts: int


class Dialer(Protocol):
    """Hands one phone call to whatever places it.

    `idempotent`: whether dialing the same job again (the same `Idempotency-Key`, its
    call id) never places a second call, so that a dial whose outcome a restart lost may
    be made again."""

    @property
    def idempotent(self) -> bool: ...

    def dial(self, job: Mapping[str, Any]) -> DialOutcome:
        """Deliver `job`; never raises for the dialer's own failures."""


@dataclass(frozen=True)
class Unavailable:
    """A dialer that refuses every job with `reason` (dialing was not even tried)."""

    reason: str
    idempotent: bool = True

    def dial(self, job: Mapping[str, Any]) -> DialOutcome:
        return DialOutcome(False, self.reason, 0)


@dataclass(frozen=True)
class HttpDialer:
    """A dialer reached by an HTTP POST of the job."""

    url: str
    secret: str
    timeout: float = 5.0
    attempts: int = 3
    backoff: float = 0.5  # seconds before the second attempt; doubles each time
    clock: Clock = wall_clock  # the time each attempt's signature carries
    # Seconds one dial may take, every attempt and back-off included (CALLS_DIALER_DEADLINE).
    deadline: float = 10.0
    # The operator's word that the dialer places one call per Idempotency-Key
    # (CALLS_DIALER_IDEMPOTENT).
    idempotent: bool = False
    # Called with each HTTP client made for an attempt, before it is used (tracing
    # instruments it: calls_server/tracing.py); None: nothing to do.
    on_client: Callable[[httpx.Client], None] | None = None

    def dial(self, job: Mapping[str, Any]) -> DialOutcome:
        body = json.dumps(job, separators=(",", ":"), sort_keys=True).encode()
        # The same key on every attempt: a dialer that honors it places the call once, even
        # when an attempt timed out after the dialer had taken it.
        headers = {"Content-Type": "application/json", "Idempotency-Key": job["call_id"]}
        ends = time.monotonic() + self.deadline
        reason = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                pause = self.backoff * 2 ** (attempt - 2)
                if time.monotonic() + pause + self.floor > ends:  # no time for another attempt
                    cut = f"at the dial's deadline of {self.deadline:.3g} s"
                    return DialOutcome(
                        False, f"{reason} after {attempt - 1} attempts, {cut}", attempt - 1
                    )
                time.sleep(pause)
            # Above 0: a back-off's sleep may overrun what the check above left by a little.
            timeout = max(0.001, min(self.timeout, ends - time.monotonic()))
            try:
                signed = {**headers, **signature_headers(self.secret, body, self.clock() // 1000)}
                with httpx.Client(timeout=timeout) as client:  # what httpx.post makes
                    if self.on_client is not None:
                        self.on_client(client)
                    response = client.post(self.url, content=body, headers=signed)
            except httpx.TimeoutException:
                reason = f"no answer within {timeout:.3g} s"
            except httpx.TransportError as e:
                reason = f"unreachable ({type(e).__name__})"
            else:
                status = response.status_code
                if response.is_success:
                    return DialOutcome(True, f"accepted (HTTP {status})", attempt)
                if status < 500 and status not in _RETRIED:
                    detail = response.text[:200]
                    return DialOutcome(False, f"refused (HTTP {status}): {detail}", attempt)
                reason = f"failed (HTTP {status})"
        return DialOutcome(False, f"{reason} after {self.attempts} attempts", self.attempts)

    @property
    def floor(self) -> float:
        """Seconds of the deadline an attempt needs left to be made: MIN_ATTEMPT, or less
        when the attempt's timeout or half the deadline is shorter (so that a short
        CALLS_DIALER_DEADLINE still lets a dial start)."""
        return min(MIN_ATTEMPT, self.timeout, self.deadline / 2)

    def within(self, seconds: float) -> HttpDialer | None:
        """This dialer, its dials given at most `seconds` (what is left of a request's);
        None when that is less than its floor: too little to make an attempt."""
        if seconds < self.floor:
            return None
        return replace(self, deadline=min(self.deadline, seconds))


def job_for(call: Mapping[str, Any]) -> dict[str, Any]:
    """The job the dialer receives for `call`."""
    return {
        "call_id": call["call_id"],
        "organization_id": call["organization_id"],
        "agent_id": call["agent_id"],
        "from_number": call["from_number"],
        "to_number": call["to_number"],
        "metadata": call["metadata"],
        "scheduled_timestamp": call["scheduled_timestamp"],
    }
