"""The HTTP layer's pure parts (calls_server/http_protocol.py)."""

from __future__ import annotations

import pytest

from calls_server.http_protocol import address_key


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_connections_are_counted_per_ipv4_address_and_per_ipv6_64(peer, key):
    assert address_key(peer) == key


def test_another_ipv6_64_is_counted_apart():
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
