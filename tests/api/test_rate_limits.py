"""Rate limits: per API key and per organization (off by default), failed authentications
(wrong key pairs and wrong admin tokens) per client network (300 a minute by default) and
from all networks together; 429 with Retry-After and RateLimit headers."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from calls_server.domain.errors import RateLimited
from calls_server.domain.listing import CallQuery
from calls_server.domain.rate_limits import Buckets
from tests.conftest import ADMIN_TOKEN, app_client, assert_error

WRONG = {"X-API-KEY": "sk_unknownkey000", "X-API-SECRET": "s3cr3t_wrongsecret00"}
WRONG_ADMIN = {"Authorization": "Bearer not-the-admin-token-0000"}
RIGHT_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_without_limits_no_rate_limit_headers_are_sent(client, tenant):
    response = client.get("/api/calls", headers=tenant.headers)

    assert response.status_code == 200
    assert "ratelimit-limit" not in response.headers


def test_an_allowed_request_says_what_is_left(store, tenant, clock):
    with app_client(store, clock=clock, rate_limit_per_key=5) as client:
        response = client.get("/api/calls", headers=tenant.headers)

    assert response.status_code == 200
    assert response.headers["ratelimit-limit"] == "5"
    assert response.headers["ratelimit-remaining"] == "4"
    assert response.headers["ratelimit-policy"] == "5;w=60"
    assert int(response.headers["ratelimit-reset"]) == 12  # one token back in 60/5 s


def test_past_the_key_limit_requests_are_429_with_retry_after(store, tenant, clock):
    with app_client(store, clock=clock, rate_limit_per_key=3) as client:
        answers = [client.get("/api/calls", headers=tenant.headers) for _ in range(4)]

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert_error(refused, 429, "More than 3 requests a minute for this API key")
    assert refused.headers["retry-after"] == "20"
    assert refused.headers["ratelimit-remaining"] == "0"


def test_the_allowance_comes_back_with_time(store, tenant, clock):
    with app_client(store, clock=clock, rate_limit_per_key=2) as client:
        for _ in range(2):
            client.get("/api/calls", headers=tenant.headers)
        refused = client.get("/api/calls", headers=tenant.headers)
        clock.advance(30)
        allowed = client.get("/api/calls", headers=tenant.headers)

    assert (refused.status_code, allowed.status_code) == (429, 200)


def test_a_refused_request_does_nothing(store, tenant, clock):
    with app_client(store, clock=clock, rate_limit_per_key=1) as client:
        client.get("/api/calls", headers=tenant.headers)
        refused = client.post("/api/calls/create", json={"agent_id": "a"}, headers=tenant.headers)

    assert refused.status_code == 429
    assert store.list_calls(tenant.organization_id, _every())[1] == 0


def test_each_key_has_its_own_allowance(store, tenant, clock, client):
    other_key = _second_key(client, tenant)
    with app_client(store, clock=clock, rate_limit_per_key=1) as limited:
        first = limited.get("/api/calls", headers=tenant.headers)
        second = limited.get("/api/calls", headers=other_key)

    assert (first.status_code, second.status_code) == (200, 200)


def test_the_organization_limit_counts_all_its_keys(store, tenant, clock, client):
    other_key = _second_key(client, tenant)
    with app_client(store, clock=clock, rate_limit_per_organization=1) as limited:
        first = limited.get("/api/calls", headers=tenant.headers)
        second = limited.get("/api/calls", headers=other_key)

    assert first.status_code == 200
    assert_error(second, 429, "for this organization")


def test_other_organizations_are_not_limited_by_one(store, tenant, other_tenant, clock):
    with app_client(store, clock=clock, rate_limit_per_organization=1) as client:
        client.get("/api/calls", headers=tenant.headers)
        theirs = client.get("/api/calls", headers=other_tenant.headers)

    assert theirs.status_code == 200


def test_failed_authentications_are_limited_per_address(store, tenant, clock):
    with app_client(store, clock=clock, rate_limit_auth_failures=3) as client:
        failures = [client.get("/api/calls", headers=WRONG).status_code for _ in range(3)]
        # Past the limit even the right pair waits: a guesser cannot tell a hit.
        refused = client.get("/api/calls", headers=tenant.headers)
        clock.advance(60)
        allowed = client.get("/api/calls", headers=tenant.headers)

    assert failures == [401, 401, 401]
    assert_error(refused, 429, "Too many failed authentications from this address")
    assert int(refused.headers["retry-after"]) > 0
    assert allowed.status_code == 200


def test_successful_authentications_are_not_counted_as_failures(store, tenant, clock):
    with app_client(store, clock=clock, rate_limit_auth_failures=2) as client:
        answers = [client.get("/api/calls", headers=tenant.headers) for _ in range(10)]

    assert {a.status_code for a in answers} == {200}


def test_a_bucket_refuses_below_one_token():
    buckets = Buckets(60, "for this API key")
    for _ in range(60):
        buckets.take("k", 0)

    with pytest.raises(RateLimited) as refused:
        buckets.take("k", 0)
    assert refused.value.headers["Retry-After"] == "1"
    assert buckets.take("k", 1000).remaining == 0


def test_wrong_admin_tokens_are_limited_as_failed_authentications(store, tenant, clock):
    keys = f"/api/organizations/{tenant.organization_id}/api-keys"
    with app_client(store, clock=clock, admin_token=ADMIN_TOKEN, rate_limit_auth_failures=3) as c:
        failures = [c.get(keys, headers=WRONG_ADMIN).status_code for _ in range(3)]
        # Past the limit the right token waits too: a guesser cannot tell a hit.
        refused = c.get(keys, headers=RIGHT_ADMIN)
        clock.advance(60)
        allowed = c.get(keys, headers=RIGHT_ADMIN)

    assert failures == [401, 401, 401]
    assert_error(refused, 429, "Too many failed authentications")
    assert int(refused.headers["retry-after"]) > 0
    assert allowed.status_code == 200


def test_wrong_admin_tokens_at_the_metrics_endpoint_are_limited_too(store, clock):
    with app_client(store, clock=clock, admin_token=ADMIN_TOKEN, rate_limit_auth_failures=2) as c:
        failures = [c.get("/metrics", headers=WRONG_ADMIN).status_code for _ in range(2)]
        refused = c.get("/metrics", headers=RIGHT_ADMIN)

    assert failures == [401, 401]
    assert_error(refused, 429, "Too many failed authentications")
    assert int(refused.headers["retry-after"]) > 0


def test_wrong_key_pairs_and_wrong_admin_tokens_share_one_limit(store, tenant, clock):
    with app_client(store, clock=clock, admin_token=ADMIN_TOKEN, rate_limit_auth_failures=2) as c:
        c.get("/api/calls", headers=WRONG)
        c.get(f"/api/organizations/{tenant.organization_id}/api-keys", headers=WRONG_ADMIN)
        refused = c.get("/api/calls", headers=tenant.headers)

    assert_error(refused, 429, "Too many failed authentications")


def test_failures_from_many_addresses_of_one_ipv4_network_are_limited_together(
    store, tenant, clock
):
    with app_client(store, clock=clock, rate_limit_auth_failures=3) as c:
        failures = [
            _from(c, f"203.0.113.{n}").get("/api/calls", headers=WRONG).status_code
            for n in range(1, 4)
        ]
        same_network = _from(c, "203.0.113.200").get("/api/calls", headers=tenant.headers)
        other_network = _from(c, "203.0.114.1").get("/api/calls", headers=tenant.headers)

    assert failures == [401, 401, 401]
    assert_error(same_network, 429, "Too many failed authentications from this address's network")
    assert other_network.status_code == 200


def test_failures_from_many_addresses_of_one_ipv6_network_are_limited_together(
    store, tenant, clock
):
    with app_client(store, clock=clock, rate_limit_auth_failures=2) as c:
        for n in range(2):
            _from(c, f"2001:db8:1:2::{n + 1:x}").get("/api/calls", headers=WRONG)
        same_network = _from(c, "2001:db8:1:2:ffff::9").get("/api/calls", headers=tenant.headers)
        other_network = _from(c, "2001:db8:1:3::1").get("/api/calls", headers=tenant.headers)

    assert_error(same_network, 429, "from this address's network")
    assert other_network.status_code == 200


def test_failures_from_many_networks_are_limited_together_for_those_that_failed(
    store, tenant, clock
):
    # 2 a minute per network: a ceiling of 20 a minute from all networks.
    with app_client(store, clock=clock, rate_limit_auth_failures=2) as c:
        spread = [
            _from(c, f"198.51.{n}.1").get("/api/calls", headers=WRONG).status_code
            for n in range(20)
        ]
        guesser = _from(c, "198.51.100.1")
        first_guess = guesser.get("/api/calls", headers=WRONG)
        second_guess = guesser.get("/api/calls", headers=WRONG)
        # A network that has not failed lately is not locked out by the others' failures.
        bystander = _from(c, "192.0.2.1").get("/api/calls", headers=tenant.headers)

    assert set(spread) == {401}
    assert first_guess.status_code == 401
    assert_error(second_guess, 429, "Too many failed authentications from all addresses")
    assert int(second_guess.headers["retry-after"]) > 0
    assert bystander.status_code == 200


def _second_key(client, tenant):
    created = client.post(
        f"/api/organizations/{tenant.organization_id}/api-keys",
        json={},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ).json()["data"]
    return {"X-API-KEY": created["api_key"], "X-API-SECRET": created["api_secret"]}


def _every():
    return CallQuery(page=0, limit=10, sort_by="created_at", sort_order="descending", filters={})


def _from(client, address):
    """A client of the same running app whose requests come from `address` (the address
    a trusted proxy's X-Forwarded-For names lands in the same place: the scope's client)."""
    other = TestClient(client.app, client=(address, 40000), raise_server_exceptions=False)
    other.app_state.update(client.app_state)  # the running app's services, from its start
    return other
