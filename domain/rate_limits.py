"""Rate limits: token buckets per API key, per organization, and of failed authentications
per client network and in all.

A bucket holds up to `per_minute` tokens and refills continuously at `per_minute` a
minute; a request takes one. So a client may burst up to the limit, then goes at the
limit's pace. Buckets live in the process's memory: each server process counts for
itself (behind a load balancer over N processes, a client gets up to N times the limit).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import math
import threading
from dataclasses import dataclass

from calls_server.domain.errors import RateLimited

# The key of the request's scope where the security check leaves the caller's allowance,
# for the response's headers.
RATE_LIMIT_HEADERS = "calls.rate_limit_headers"
# The key of the request's scope where the security check names the limit that refused the
# request (`Buckets.limit`), for the metrics.
RATE_LIMIT_REFUSED = "calls.rate_limit_refused"
# Buckets kept at most per limiter; past it, the full (idle) ones are forgotten first.
MAX_BUCKETS = 100_000
# Failed authentications are counted per network, not per address: one holder of a /24
# (IPv4) or a /64 (IPv6, often a single host's) has every address in it to guess from.
IPV4_PREFIX, IPV6_PREFIX = 24, 64
# The ceiling of failed authentications a minute from all networks together, in times the
# per-network limit: guesses spread over many networks are limited too.
ALL_NETWORKS_FACTOR = 10


@dataclass(frozen=True)
class Allowance:
    """What a bucket says after a request: the headers the response carries."""

    limit: int
    remaining: int
    reset: int  # seconds until the bucket is full again

    def headers(self) -> dict[str, str]:
        """The IETF `RateLimit` header fields (draft-ietf-httpapi-ratelimit-headers)."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": f"{self.limit};w=60",
        }


class Buckets:
    """Token buckets of `per_minute` tokens each, by any key (0: no limit). `name` words
    the refusal; `limit` names the limit in metrics (`key`, `organization`, `auth_failures`)."""

    def __init__(self, per_minute: int, name: str, limit: str | None = None) -> None:
        self.per_minute, self.name, self.limit = per_minute, name, limit
        self._rate = per_minute / 60_000  # tokens per millisecond
        self._buckets: dict[str, tuple[float, int]] = {}  # key -> (tokens, at ms)
        self._lock = threading.Lock()

    def level(self, key: str, now: int) -> float:
        """The tokens `key` has at `now`."""
        tokens, at = self._buckets.get(key, (self.per_minute, now))
        return min(float(self.per_minute), tokens + (now - at) * self._rate)

    def take(self, key: str, now: int) -> Allowance:
        """Take a token for `key`; RateLimited (with Retry-After) when none is left."""
        with self._lock:
            tokens = self.level(key, now)
            if tokens < 1:
                wait = math.ceil((1 - tokens) / self._rate / 1000)
                allowance = self._allowance(tokens, now)
                raise RateLimited(
                    f"More than {self.per_minute} requests a minute {self.name}; "
                    f"try again in {wait} s",
                    headers={"Retry-After": str(wait), **allowance.headers()},
                    limit=self.limit,
                )
            self._keep(key, tokens - 1, now)
            return self._allowance(tokens - 1, now)

    def refuse_when_empty(self, key: str, now: int, refusal: str) -> None:
        """RateLimited, worded `refusal`, when `key` has no token left (without taking one)."""
        tokens = self.level(key, now)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self._rate / 1000)
            raise RateLimited(
                f"{refusal}; try again in {wait} s",
                headers={"Retry-After": str(wait)},
                limit=self.limit,
            )

    def _allowance(self, tokens: float, now: int) -> Allowance:
        reset = math.ceil((self.per_minute - tokens) / self._rate / 1000)
        return Allowance(self.per_minute, max(0, math.floor(tokens)), reset)

    def _keep(self, key: str, tokens: float, now: int) -> None:
        if len(self._buckets) >= MAX_BUCKETS and key not in self._buckets:
            # A full bucket is the same as none: forget those first.
            full = [k for k in self._buckets if self.level(k, now) >= self.per_minute]
            for k in full or list(self._buckets)[: MAX_BUCKETS // 10]:
                del self._buckets[k]
        self._buckets[key] = (tokens, now)


class RateLimits:
    """The server's limits: per key and per organization (both must allow a request), and
    failed authentications per client network and from all networks together."""

    def __init__(self, per_key: int, per_organization: int, auth_failures: int) -> None:
        self.per_key = Buckets(per_key, "for this API key", "key") if per_key else None
        self.per_organization = (
            Buckets(per_organization, "for this organization", "organization")
            if per_organization
            else None
        )
        self.auth_failures = (
            Buckets(auth_failures, "failed authentications", "auth_failures")
            if auth_failures
            else None
        )
        # One bucket (key ""), for the failures of every network.
        self.all_auth_failures = (
            Buckets(auth_failures * ALL_NETWORKS_FACTOR, "failed authentications", "auth_failures")
            if auth_failures
            else None
        )

    def admit(self, api_key_id: str, organization_id: str, now: int) -> Allowance | None:
        """Count an authenticated request; the tightest allowance, or None without limits.
        Raises RateLimited when either bucket is empty (then neither is charged)."""
        buckets = [
            (b, k)
            for b, k in ((self.per_key, api_key_id), (self.per_organization, organization_id))
            if b is not None
        ]
        if not buckets:
            return None
        for bucket, key in buckets:  # refuse before charging anything
            if bucket.level(key, now) < 1:
                bucket.take(key, now)
        allowances = [bucket.take(key, now) for bucket, key in buckets]
        return min(allowances, key=lambda a: a.remaining)

    def check_address(self, address: str, now: int) -> None:
        """RateLimited when `address`'s network has failed to authenticate too often lately,
        or when all networks together have and this one has failed lately too (a network
        that has not keeps authenticating: a flood of failures cannot lock everyone out)."""
        if self.auth_failures is None or self.all_auth_failures is None:
            return
        network = network_of(address)
        self.auth_failures.refuse_when_empty(
            network, now, "Too many failed authentications from this address's network"
        )
        if self.auth_failures.level(network, now) < self.auth_failures.per_minute:
            self.all_auth_failures.refuse_when_empty(
                "", now, "Too many failed authentications from all addresses"
            )

    def failed(self, address: str, now: int) -> None:
        """Count a failed authentication from `address` (in its network, and in all)."""
        if self.auth_failures is None or self.all_auth_failures is None:
            return
        # An empty bucket stays empty: the next request from there is refused.
        for bucket, key in (
            (self.auth_failures, network_of(address)),
            (self.all_auth_failures, ""),
        ):
            with contextlib.suppress(RateLimited):
                bucket.take(key, now)


# Asked at every request (the failures' check runs before credentials are known), and
# parsing an address costs several microseconds: the clients seen lately are remembered.
@functools.lru_cache(maxsize=4096)
def network_of(address: str) -> str:
    """The network whose failures `address`'s count with: its /24 (IPv4, also IPv4-mapped
    IPv6) or /64 (IPv6). Anything else (no address known, a test client's name) is itself."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network((ip, prefix), strict=False))
