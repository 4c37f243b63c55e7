"""Where this server may send requests on a tenant's behalf (webhooks): the public internet,
and only the private networks the operator names.

A tenant registering a webhook must not be able to aim the server at its own network:
cloud metadata services, databases on loopback, admin panels on private addresses. URLs
are checked when registered (scheme, no user info, no internal host names, and every
address the name resolves to, if it resolves) and again at each delivery against the
address actually connected to, so a name that resolves elsewhere later (DNS rebinding)
gets nowhere: the delivery connects to the address it checked, never to a fresh lookup.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from calls_server.domain.errors import BadRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Addresses refused beside those `ipaddress` does not count as global: IANA's protocol
# assignments (192.0.0.0/24: Python before 3.11.10 and 3.12.4 counts most of it global) and
# a cloud's host service at a public address (Azure's wire server, reachable from its VMs).
_SPECIAL_NETWORKS = (
    (ipaddress.ip_network("192.0.0.0/24"), "an IANA special-purpose address"),
    (ipaddress.ip_network("168.63.129.16/32"), "a cloud provider's host service address"),
)

_DEFAULT_PORTS = {"https": 443, "http": 80}

# Names that only ever mean something inside a network (metadata services, mDNS, loopback).
_INTERNAL_SUFFIXES = (".internal", ".local", ".localhost", ".localdomain", ".home.arpa")
_INTERNAL_NAMES = {"localhost", "metadata", "metadata.google.internal", "instance-data"}


class UnsafeTarget(BadRequest):
    """A URL this server will not send requests to."""


@dataclass(frozen=True)
class Target:
    """Where one delivery goes: the URL to connect to (an address that was checked), the
    host name to present (TLS server name and certificate check), and the Host header (the
    URL's host and port, the port left out when it is the scheme's default)."""

    url: str
    host: str
    authority: str


@dataclass(frozen=True)
class EgressPolicy:
    """The rules; `allowed_networks` are private ranges the operator allows (on-premises
    receivers, or 127.0.0.0/8 for tests)."""

    allow_http: bool = False
    allowed_networks: tuple[Network, ...] = field(default=())

    @classmethod
    def parse_networks(cls, text: str) -> tuple[Network, ...]:
        """Networks from a comma-separated list of CIDRs (`10.1.0.0/16, 127.0.0.0/8`)."""
        return tuple(ipaddress.ip_network(part.strip()) for part in text.split(",") if part.strip())

    def check_url(self, url: str) -> None:
        """Raise UnsafeTarget unless `url` may receive webhooks (at registration: a name that
        does not resolve yet is accepted, and checked at each delivery)."""
        host, port = self._host_and_port(url)
        self._check_addresses(host, _resolve(host, port, strict=False))

    def target(self, url: str) -> Target:
        """Where to connect to deliver to `url`: a resolved address that passed the checks.
        Raises UnsafeTarget (also when the name does not resolve)."""
        host, port = self._host_and_port(url)
        addresses = _resolve(host, port, strict=True)
        self._check_addresses(host, addresses)
        parts = urlsplit(url)
        address = addresses[0]
        netloc = f"[{address}]" if address.version == 6 else str(address)
        authority = f"[{host}]" if ":" in host else host  # an IPv6 address in brackets
        if parts.port is not None:
            netloc += f":{parts.port}"
            if parts.port != _DEFAULT_PORTS[parts.scheme]:
                authority += f":{parts.port}"
        return Target(urlunsplit(parts._replace(netloc=netloc)), host, authority)

    def _host_and_port(self, url: str) -> tuple[str, int]:
        try:
            parts = urlsplit(url)
            parts.hostname  # noqa: B018 (parses the host: a stray "[" raises here)
        except ValueError:
            raise UnsafeTarget("Webhook URL is not a valid URL") from None
        if parts.scheme != "https" and not (self.allow_http and parts.scheme == "http"):
            raise UnsafeTarget("Webhook URL must be HTTPS")
        if "@" in parts.netloc:
            raise UnsafeTarget("Webhook URL must not carry a user name or password")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise UnsafeTarget("Webhook URL has an invalid port") from None
        host = (parts.hostname or "").rstrip(".").lower()
        if not host:
            raise UnsafeTarget("Webhook URL has no host")
        return host, port

    def _check_addresses(self, host: str, addresses: list[Address]) -> None:
        outside = [a for a in addresses if not any(a in net for net in self.allowed_networks)]
        internal_name = host in _INTERNAL_NAMES or host.endswith(_INTERNAL_SUFFIXES)
        if internal_name and (outside or not addresses):
            raise UnsafeTarget(f"Webhook URL names an internal host ({host})")
        for address in outside:
            reason = _why_private(address)
            if reason:
                # Why an address is refused is told only for an address the URL names: what
                # a name resolves to on the server's network is not the tenant's to learn.
                what = f"is {reason}" if _is_address(host) else "resolves to a non-public address"
                raise UnsafeTarget(
                    f"Webhook URL host {host} {what}; webhooks go to public addresses only "
                    "(an operator can allow networks: CALLS_WEBHOOK_ALLOW_NETWORKS)"
                )


def _is_address(host: str) -> bool:
    """Whether the URL's host is an IP address (in its usual notation) rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _why_private(address: Address) -> str | None:
    """Why `address` is not a public internet address, or None if it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return _why_private(embedded)
    for network, reason in _SPECIAL_NETWORKS:
        if address in network:
            return reason
    for flag, reason in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local (metadata) address"),
        ("is_multicast", "a multicast address"),
        ("is_unspecified", "an unspecified address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(address, flag):
            return reason
    return None if address.is_global else "not a public address"


def _resolve(host: str, port: int, strict: bool) -> list[Address]:
    """Every address `host` resolves to (numeric forms such as 127.1 or 0x7f000001 too).
    A name that does not resolve is [] when not `strict`, else UnsafeTarget."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        if strict:
            raise UnsafeTarget(f"Webhook URL host {host} does not resolve") from None
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in found]
