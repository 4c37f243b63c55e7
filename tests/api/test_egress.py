"""Webhooks cannot be aimed at the server's own network: refused at registration, and
checked again at delivery against the address actually connected to."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from calls_server.domain import calls, webhooks
from calls_server.integrations.egress import EgressPolicy, UnsafeTarget
from calls_server.services.webhooks import WebhookDeliverer
from tests.conftest import app_client, assert_error, wait_for

STRICT = EgressPolicy()

REFUSED = [
    "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "https://10.0.0.1/",
    "https://192.168.1.1/",
    "https://172.16.0.1/hooks",
    "https://localhost:8080/hooks",
    "https://127.1/",
    "https://[::1]/",
    "https://[::ffff:169.254.169.254]/",
    "https://[fd00::1]/",
    "https://[fe80::1]/",
    "https://0x7f000001/",
    "https://2130706433/",
    "https://0.0.0.0/",
    "https://224.0.0.1/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://printer.local/",
    "https://user:pass@example.com/",
    "https://example.com@127.0.0.1/",
    "http://127.0.0.1:6379/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_internal_targets_are_refused(url):
    with pytest.raises(UnsafeTarget):
        EgressPolicy(allow_http=True).check_url(url)


@pytest.mark.parametrize("url", REFUSED)
def test_internal_targets_are_refused_at_delivery_too(url):
    with pytest.raises(UnsafeTarget):
        EgressPolicy(allow_http=True).target(url)


def test_plain_http_is_refused_unless_allowed():
    with pytest.raises(UnsafeTarget, match="must be HTTPS"):
        STRICT.check_url("http://93.184.215.14/hooks")
    EgressPolicy(allow_http=True).check_url("http://93.184.215.14/hooks")


def test_public_addresses_and_names_that_do_not_resolve_yet_are_accepted_at_registration():
    STRICT.check_url("https://93.184.215.14/hooks")
    STRICT.check_url("https://crm.example.com/hooks")  # checked again at each delivery


def test_a_name_that_does_not_resolve_is_not_delivered_to():
    with pytest.raises(UnsafeTarget, match="does not resolve"):
        STRICT.target("https://no-such-host.invalid/hooks")


def test_an_operator_can_allow_a_private_network():
    policy = EgressPolicy(allowed_networks=(ipaddress.ip_network("10.1.0.0/16"),))

    policy.check_url("https://10.1.2.3/hooks")
    with pytest.raises(UnsafeTarget):
        policy.check_url("https://10.2.0.1/hooks")


def test_the_delivery_connects_to_the_address_it_checked():
    policy = EgressPolicy(allow_http=True, allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))

    target = policy.target("http://localhost:8080/hooks?x=1")

    assert target.url == "http://127.0.0.1:8080/hooks?x=1"
    assert target.host == "localhost"


def test_registration_of_an_internal_url_is_a_400(client, tenant):
    body = {"name": "metadata", "url": "https://169.254.169.254/latest/meta-data/"}

    response = client.post("/api/post-call-webhooks/create", json=body, headers=tenant.headers)

    assert_error(response, 400, "link-local")
    assert (
        client.get("/api/post-call-webhooks", headers=tenant.headers).json()["data"]["count"] == 0
    )


def test_changing_a_url_to_an_internal_one_is_a_400(client, tenant):
    body = {"name": "crm", "url": "https://crm.example.com/hooks"}
    hook = client.post("/api/post-call-webhooks/create", json=body, headers=tenant.headers)
    url = f"/api/post-call-webhooks/{hook.json()['data']['id']}"

    response = client.patch(url, json={"url": "https://10.0.0.1/"}, headers=tenant.headers)

    assert_error(response, 400, "private address")
    assert client.get(url, headers=tenant.headers).json()["data"]["url"] == body["url"]


def test_an_organization_has_a_limited_number_of_webhooks(store, tenant):
    with app_client(store, webhooks_per_organization=2) as client:
        made = [
            client.post(
                "/api/post-call-webhooks/create",
                json={"name": f"h{n}", "url": f"https://crm{n}.example.com/"},
                headers=tenant.headers,
            )
            for n in range(3)
        ]

    assert [r.status_code for r in made[:2]] == [200, 200]
    assert_error(made[2], 400, "at most 2 webhooks")


def test_a_delivery_to_an_address_no_longer_allowed_is_not_sent(store, tenant, receiver):
    # Registered while loopback was allowed; delivered by a server that no longer allows it:
    # the check at delivery, on the resolved address, is what stops it.
    hook = webhooks.new_webhook(
        tenant.organization_id,
        {"name": "rebound", "url": receiver.url, "is_active": True, "status_events": True},
        now=1,
        existing=0,
        limit=16,
    )
    store.add_webhook(hook)
    deliverer = WebhookDeliverer(store, EgressPolicy(allow_http=True))
    deliverer.start()
    store.add_call(calls.new_call(organization_id=tenant.organization_id, agent_id="a",
                                  now=1, call_type="web_call"))  # fmt: skip

    def first_attempt() -> dict | None:
        (event,) = store.pending_webhook_events()
        return event["attempts"][0] if event["attempts"] else None

    wait_for(lambda: first_attempt() is not None)
    deliverer.stop()

    assert receiver.received == []
    assert first_attempt()["status_code"] is None
    assert "loopback address" in first_attempt()["error"]


@pytest.mark.parametrize("url", ["http://,}[ytbo-x10GMP}*_;|", "https://[::1/", "https://a:b:c/"])
def test_a_url_that_does_not_parse_is_refused_not_a_crash(url):
    with pytest.raises(UnsafeTarget):
        EgressPolicy(allow_http=True).check_url(url)


def test_concurrent_creates_never_pass_the_webhook_cap(store, tenant, monkeypatch):
    cap, tries = 3, 12
    start = threading.Barrier(tries)
    # A check that takes a while (a loaded server) widens the window between counting the
    # organization's webhooks and inserting one (the handler passes it to the store's insert,
    # which calls it with the count): the cap must hold whatever the timing.
    check = webhooks.within_limit

    def slow_check(existing: int, limit: int) -> None:
        time.sleep(0.05)
        check(existing, limit)

    monkeypatch.setattr(webhooks, "within_limit", slow_check)

    def create(n: int) -> int:
        start.wait()
        body = {"name": f"h{n}", "url": f"https://93.184.215.{n + 1}/hooks"}
        return client.post(
            "/api/post-call-webhooks/create", json=body, headers=tenant.headers
        ).status_code

    with (
        app_client(store, webhooks_per_organization=cap) as client,
        ThreadPoolExecutor(tries) as pool,
    ):
        answers = list(pool.map(create, range(tries)))

    assert sorted(answers) == [200] * cap + [400] * (tries - cap)
    assert len(store.list_webhooks(tenant.organization_id)) == cap


@pytest.mark.parametrize(
    "url",
    [
        "https://168.63.129.16/machine",  # Azure's wire server
        "https://[::ffff:168.63.129.16]/machine",
        "https://192.0.0.192/",  # IANA special-purpose (protocol assignments)
        "https://192.0.0.8/",
    ],
)
def test_special_purpose_and_cloud_host_addresses_are_refused(client, tenant, url):
    response = client.post(
        "/api/post-call-webhooks/create", json={"name": "h", "url": url}, headers=tenant.headers
    )

    assert_error(response, 400, "webhooks go to public addresses only")
    assert (
        client.get("/api/post-call-webhooks", headers=tenant.headers).json()["data"]["count"] == 0
    )


def test_refusing_a_name_does_not_tell_what_it_resolves_to(client, tenant, monkeypatch):
    resolve = socket.getaddrinfo

    def internal_dns(host, port, *args, **kwargs):
        if host == "billing.corp.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.20.30.40", port))]
        return resolve(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", internal_dns)
    body = {"name": "h", "url": "https://billing.corp.example.com/hooks"}

    response = client.post("/api/post-call-webhooks/create", json=body, headers=tenant.headers)

    error = assert_error(response, 400, "billing.corp.example.com")["error"]
    assert "10.20.30.40" not in error
    assert "private" not in error


@pytest.mark.parametrize(
    ("url", "authority"),
    [
        ("https://93.184.215.14:8443/hooks", "93.184.215.14:8443"),
        ("https://93.184.215.14:443/hooks", "93.184.215.14"),  # the scheme's default
        ("https://93.184.215.14/hooks", "93.184.215.14"),
        (
            "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8443/",
            "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:8443",
        ),
    ],
)
def test_the_host_header_names_the_urls_host_and_port(url, authority):
    assert STRICT.target(url).authority == authority
