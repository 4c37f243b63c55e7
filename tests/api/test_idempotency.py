"""Idempotency-Key: a create retried with the same key answers what the first one did and
creates nothing more; the same key with another request is 422."""

from __future__ import annotations

import pytest

from calls_server.domain.listing import CallQuery
from calls_server.handlers import idempotency_keys
from calls_server.storage import EmbeddedStore
from calls_server.storage.postgres import PostgresStore
from tests.conftest import ADMIN_TOKEN, add_tenant, app_client, assert_error
from tests.store.test_postgres_store import FaultyProxy


def create(client, tenant, key, body=None):
    headers = {**tenant.headers, "Idempotency-Key": key}
    return client.post("/api/calls/create", json=body or {"agent_id": "agent-1"}, headers=headers)


def test_a_retry_with_the_same_key_answers_the_first_answer(client, tenant):
    first = create(client, tenant, "key-1")

    retry = create(client, tenant, "key-1")

    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["etag"] == first.headers["etag"]
    assert "idempotent-replayed" not in first.headers


def test_a_retry_creates_nothing_more(client, tenant, store):
    create(client, tenant, "key-1")
    create(client, tenant, "key-1")

    total = store.list_calls(tenant.organization_id, _every_call()).total
    assert total == 1


def test_another_key_creates_another_call(client, tenant):
    first = create(client, tenant, "key-1")
    second = create(client, tenant, "key-2")

    assert first.json()["data"]["call"]["call_id"] != second.json()["data"]["call"]["call_id"]


def test_the_same_key_with_another_body_is_422(client, tenant, store):
    create(client, tenant, "key-1", {"agent_id": "agent-1"})

    response = create(client, tenant, "key-1", {"agent_id": "agent-2"})

    assert_error(response, 422, "Idempotency-Key 'key-1' was first used with another request")
    assert store.list_calls(tenant.organization_id, _every_call())[1] == 1


def test_the_same_key_on_another_operation_is_422(client, tenant):
    create(client, tenant, "key-1")

    response = client.post(
        "/api/calls/create-web-call",
        json={"agent_id": "agent-1"},
        headers={**tenant.headers, "Idempotency-Key": "key-1"},
    )

    assert_error(response, 422)


def test_the_same_body_in_another_key_order_is_the_same_request(client, tenant):
    first = client.post(
        "/api/calls/create",
        content=b'{"agent_id": "agent-1", "metadata": {"a": 1, "b": 2}}',
        headers={**tenant.headers, "Idempotency-Key": "k", "Content-Type": "application/json"},
    )
    retry = client.post(
        "/api/calls/create",
        content=b'{"metadata": {"b": 2, "a": 1}, "agent_id": "agent-1"}',
        headers={**tenant.headers, "Idempotency-Key": "k", "Content-Type": "application/json"},
    )

    assert retry.json() == first.json()


def test_keys_are_scoped_to_the_organization(client, tenant, other_tenant):
    mine = create(client, tenant, "shared-key")
    theirs = create(client, other_tenant, "shared-key")

    assert theirs.status_code == 200
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["data"]["organization_id"] == other_tenant.organization_id
    assert mine.json()["data"]["call"]["call_id"] != theirs.json()["data"]["call"]["call_id"]


def test_a_kept_error_is_answered_again(client, tenant):
    body = {"agent_id": "agent-1", "call_id": "call_custom-1"}
    create(client, tenant, "first", body)

    duplicate = create(client, tenant, "second", body)
    retry = create(client, tenant, "second", body)

    assert_error(duplicate, 409)
    assert_error(retry, 409)
    assert retry.json()["error"] == duplicate.json()["error"]
    assert retry.headers["idempotent-replayed"] == "true"


def test_a_request_refused_before_it_ran_is_not_kept(client, tenant):
    refused = create(client, tenant, "key-1", {"agent_id": ""})
    fixed = create(client, tenant, "key-1", {"agent_id": "agent-1"})

    assert_error(refused, 400)
    assert fixed.status_code == 200
    assert "idempotent-replayed" not in fixed.headers


def test_a_key_longer_than_255_characters_is_400(client, tenant):
    response = create(client, tenant, "k" * 256)

    assert_error(response, 400, "Idempotency-Key")


def test_an_expired_key_runs_again(store, tenant, clock):
    with app_client(store, clock=clock, idempotency_ttl=60) as client:
        first = create(client, tenant, "key-1")
        clock.advance(61)
        again = create(client, tenant, "key-1")

    assert again.status_code == 200
    assert "idempotent-replayed" not in again.headers
    assert again.json()["data"]["call"]["call_id"] != first.json()["data"]["call"]["call_id"]


def test_expired_answers_are_dropped_from_the_store(store, tenant, clock):
    with app_client(store, clock=clock, idempotency_ttl=60) as client:
        create(client, tenant, "old")
        clock.advance(61)
        create(client, tenant, "new")

    assert store.find_idempotent(tenant.organization_id, "old") is None
    assert store.find_idempotent(tenant.organization_id, "new") is not None


def test_the_admin_api_keeps_its_creates_too(client, admin_headers):
    headers = {**admin_headers, "Idempotency-Key": "org-once"}

    first = client.post("/api/organizations", json={"name": "Acme"}, headers=headers)
    retry = client.post("/api/organizations", json={"name": "Acme"}, headers=headers)

    assert first.status_code == 200
    assert retry.json() == first.json()


def test_a_webhook_create_is_kept(client, tenant):
    headers = {**tenant.headers, "Idempotency-Key": "hook-once"}
    body = {"name": "CRM", "url": "https://crm.example.com/hook"}

    first = client.post("/api/post-call-webhooks/create", json=body, headers=headers)
    retry = client.post("/api/post-call-webhooks/create", json=body, headers=headers)

    assert first.status_code == 200, first.text
    assert retry.json() == first.json()
    listed = client.get("/api/post-call-webhooks", headers=tenant.headers).json()["data"]
    assert listed["count"] == 1


def test_kept_answers_are_read_back_when_the_store_is_reopened(data_dir, tenant, store):
    with app_client(store) as client:
        first = create(client, tenant, "key-1")
    store.close()
    reopened = EmbeddedStore(data_dir)
    try:
        with app_client(reopened) as client:
            retry = create(client, tenant, "key-1")
    finally:
        reopened.close()

    assert retry.json() == first.json()


def _every_call():
    return CallQuery(page=0, limit=100, sort_by="created_at", sort_order="descending", filters={})


# -- a create whose commit the database may or may not have made (PostgreSQL) ---------------


@pytest.fixture
def behind_faulty_proxy(migrated_database_url):
    """A PostgreSQL store reached through a FaultyProxy, with a tenant; and the proxy."""
    proxy = FaultyProxy(migrated_database_url)
    opened = PostgresStore(proxy.url())
    yield opened, proxy, add_tenant(opened, "acme")
    opened.close()


def test_a_create_whose_commit_answer_is_lost_is_503_outcome_unknown(behind_faulty_proxy):
    store, proxy, tenant = behind_faulty_proxy
    proxy.lose_reply(b"INSERT INTO calls", to_commit=True)
    with app_client(store) as client:
        unknown = create(client, tenant, "key-1")

    body = assert_error(unknown, 503, "may or may not have been stored")
    assert body["message"] == "Outcome unknown"
    assert "same Idempotency-Key" in body["error"]
    assert store.list_calls("acme", _every_call()).total == 1  # it was committed


def test_the_retry_of_a_create_whose_answer_was_lost_answers_the_stored_call(
    behind_faulty_proxy,
):
    store, proxy, tenant = behind_faulty_proxy
    proxy.lose_reply(b"INSERT INTO calls", to_commit=True)
    with app_client(store) as client:
        create(client, tenant, "key-1")
        stored = store.list_calls("acme", _every_call()).calls[0]
        retry = create(client, tenant, "key-1")
        again = create(client, tenant, "key-1")
        read = client.get(f"/api/calls/{stored['call_id']}", headers=tenant.headers)

    assert retry.status_code == 200, retry.text
    assert retry.json()["message"] == "Call created successfully"
    assert retry.json()["data"]["call"]["call_id"] == stored["call_id"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["etag"] == read.headers["etag"]
    assert again.json() == retry.json()  # kept: answered the same from then on
    assert store.list_calls("acme", _every_call()).total == 1  # not created again


def test_a_create_whose_connection_is_lost_before_its_commit_runs_again_on_retry(
    behind_faulty_proxy,
):
    store, proxy, tenant = behind_faulty_proxy
    proxy.lose_reply(b"INSERT INTO calls")  # mid-transaction: the database rolls it back
    with app_client(store) as client:
        lost = create(client, tenant, "key-1")
        stored = store.list_calls("acme", _every_call()).total
        retry = create(client, tenant, "key-1")

    body = assert_error(lost, 503, "database")
    assert body["message"] == "Service unavailable"  # nothing was written: plainly so
    assert stored == 0
    assert retry.status_code == 200
    assert "idempotent-replayed" not in retry.headers  # it ran
    assert store.list_calls("acme", _every_call()).total == 1


# Each create: its body (a batch or web call's is given an agent), the statement that adds
# its record, where its answer names the record, and how many of its kind the store holds.
RECOVERED = {
    "agent": (
        "/api/agents/create",
        {"agent_name": "Ada"},
        b'INSERT INTO "agents"',
        "agent_id",
        lambda s: len(s.list_agents("acme")) - 1,
    ),
    "phone number": (
        "/api/phone-numbers/create",
        {"phone_number": "+14155550100"},
        b'INSERT INTO "phone_numbers"',
        "phone_number",
        lambda s: len(s.list_phone_numbers("acme")),
    ),
    "imported phone number": (
        "/api/phone-numbers/import",
        {"phone_number": "+14155550100"},
        b'INSERT INTO "phone_numbers"',
        "phone_number",
        lambda s: len(s.list_phone_numbers("acme")),
    ),
    "webhook": (
        "/api/post-call-webhooks/create",
        {"name": "CRM", "url": "https://crm.example.com/hook"},
        b'INSERT INTO "webhooks"',
        "id",
        lambda s: len(s.list_webhooks("acme")),
    ),
    "batch call": (
        "/batch-call",
        {"from_number": "+14155550100", "tasks": [{"to_number": "+14155550101"}]},
        b"INSERT INTO batches",
        "batch_call_id",
        lambda s: len(s.list_batches("acme")),
    ),
    "web call": (
        "/api/calls/create-web-call",
        {},
        b"INSERT INTO calls",
        "call",
        lambda s: s.list_calls("acme", _every_call()).total,
    ),
}


@pytest.mark.parametrize("kind", RECOVERED)
def test_every_create_whose_answer_was_lost_is_answered_from_its_record_on_retry(
    behind_faulty_proxy, kind
):
    store, proxy, tenant = behind_faulty_proxy
    path, body, statement, named, stored = RECOVERED[kind]
    headers = {**tenant.headers, "Idempotency-Key": "key-1"}
    with app_client(store) as client:
        agent = client.post("/api/agents/create", json={"agent_name": "A"}, headers=tenant.headers)
        if kind in ("batch call", "web call"):
            body = {**body, "agent_id": agent.json()["data"]["agent_id"]}
        proxy.lose_reply(statement, to_commit=True)
        unknown = client.post(path, json=body, headers=headers)
        retry = client.post(path, json=body, headers=headers)
        again = client.post(path, json=body, headers=headers)

    assert unknown.status_code == 503
    assert unknown.json()["message"] == "Outcome unknown"
    assert retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    data = retry.json()["data"]
    shown = data.get("phone_number", data) if kind == "imported phone number" else data
    assert shown[named]  # the record the first request stored
    assert again.json() == retry.json()
    assert stored(store) == 1  # not created again


def test_a_phone_call_whose_answer_was_lost_before_its_dial_is_dialed_by_the_retry(
    behind_faulty_proxy,
):
    """The sandbox dialer honours the job's Idempotency-Key: the retry dials the call the
    first request stored and never dialed."""
    store, proxy, tenant = behind_faulty_proxy
    body = {"from_number": "+14155550100", "to_number": "+14155550101", "override_agent_id": "a"}
    headers = {**tenant.headers, "Idempotency-Key": "key-1"}
    proxy.lose_reply(b"INSERT INTO calls", to_commit=True)
    with app_client(store, sandbox=True) as client:
        unknown = client.post("/api/calls/create-phone-call", json=body, headers=headers)
        before = store.list_calls("acme", _every_call()).calls[0]["call_status"]
        retry = client.post("/api/calls/create-phone-call", json=body, headers=headers)

    assert unknown.json()["message"] == "Outcome unknown"
    assert before == "registered"  # stored, never dialed
    assert retry.status_code == 200, retry.text
    data = retry.json()["data"]
    assert data["status"] == "call_initiated"
    assert data["call"]["call_status"] == "ongoing"
    assert store.list_calls("acme", _every_call()).total == 1


def test_a_phone_call_whose_answer_was_lost_is_not_dialed_again_by_a_plain_dialer(
    behind_faulty_proxy, receiver
):
    """A dialer that does not vouch for its Idempotency-Key may have taken the call: the
    retry records it as failed, saying why, rather than dial it a second time."""
    store, proxy, tenant = behind_faulty_proxy
    body = {"from_number": "+14155550100", "to_number": "+14155550101", "override_agent_id": "a"}
    headers = {**tenant.headers, "Idempotency-Key": "key-1"}
    proxy.lose_reply(b"INSERT INTO calls", to_commit=True)
    dialer = {"dialer_url": receiver.url, "dialer_secret": "dialer-secret-0123456789"}
    with app_client(store, **dialer) as client:
        client.post("/api/calls/create-phone-call", json=body, headers=headers)
        retry = client.post("/api/calls/create-phone-call", json=body, headers=headers)

    assert retry.status_code == 200, retry.text
    data = retry.json()["data"]
    assert data["status"] == "call_failed"
    assert "not dialed again" in retry.json()["message"]
    assert data["call"]["call_status"] == "error"
    assert receiver.received == []  # never dialed


def test_a_key_whose_creation_answer_was_lost_is_answered_without_its_secret(
    behind_faulty_proxy, admin_headers
):
    store, proxy, _ = behind_faulty_proxy
    headers = {**admin_headers, "Idempotency-Key": "key-1"}
    path = "/api/organizations/acme/api-keys"
    proxy.lose_reply(b"INSERT INTO api_keys", to_commit=True)
    with app_client(store, admin_token=ADMIN_TOKEN) as client:
        unknown = client.post(path, json={"name": "ci"}, headers=headers)
        retry = client.post(path, json={"name": "ci"}, headers=headers)

    assert unknown.json()["message"] == "Outcome unknown"
    assert retry.status_code == 200, retry.text
    data = retry.json()["data"]
    assert data["api_secret"] == ""
    assert "not kept" in data["warning"]
    stored = [key["api_key_id"] for key in store.list_api_keys("acme")]
    assert data["api_key_id"] in stored
    assert len(stored) == 2  # the tenant's, and this one


def test_a_create_whose_answer_was_never_kept_is_answered_from_its_record_on_retry(
    store, tenant, monkeypatch
):
    """The process stopped after the create's record was written and before its answer was
    kept (a kill during the record's fsync): the retry finds the record, on either store,
    and creates nothing again."""

    def killed(*args, **kwargs):
        raise RuntimeError("the process stopped here")

    with app_client(store) as client:
        with monkeypatch.context() as stopped:
            stopped.setattr(idempotency_keys.IdempotencyKeys, "_keep", killed)
            lost = create(client, tenant, "key-1")
        stored = store.list_calls(tenant.organization_id, _every_call()).calls
        retry = create(client, tenant, "key-1")

    assert lost.status_code == 500  # no answer reached the client
    assert len(stored) == 1
    assert retry.status_code == 200, retry.text
    assert retry.json()["data"]["call"]["call_id"] == stored[0]["call_id"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert store.list_calls(tenant.organization_id, _every_call()).total == 1
