"""The outbound dialer: phone calls are handed to the operator's dialer over HTTP.

The job is POSTed as JSON, signed with HMAC-SHA256 of the exact body bytes under the
configured secret (header `X-Calls-Signature: sha256=<hex>`), with a timeout per attempt.
A 2xx accepts the call. Another 4xx (but 408 and 429) refuses it at once; a 5xx, 408, 429,
timeout or connection error is retried, with exponential backoff, up to the configured
number of attempts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

SIGNATURE_HEADER = "X-Calls-Signature"
_RETRIED = frozenset({408, 429})


@dataclass(frozen=True)
class DialOutcome:
    """What the dialer said: accepted or not, why, after how many attempts."""

    accepted: bool
    reason: str
    attempts: int


class Dialer(Protocol):
    """Hands one phone call to whatever places it."""

    def dial(self, job: Mapping[str, Any]) -> DialOutcome:
        """Deliver `job`; never raises for the dialer's own failures."""


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class HttpDialer:
    """A dialer reached by an HTTP POST of the job."""

    url: str
    secret: str
    timeout: float = 5.0
    attempts: int = 3
    backoff: float = 0.5  # seconds before the second attempt; doubles each time

    def dial(self, job: Mapping[str, Any]) -> DialOutcome:
        body = json.dumps(job, separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)}
        reason = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout)
            except httpx.TimeoutException:
                reason = f"no answer within {self.timeout:g} s"
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
            if attempt < self.attempts:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        return DialOutcome(False, f"{reason} after {self.attempts} attempts", self.attempts)


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
