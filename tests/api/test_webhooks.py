"""The `webhooks` handlers, and delivery of status events to a real receiver on loopback."""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest
from starlette.testclient import TestClient

from calls_server.app import create_app
from calls_server.domain import calls, webhooks
from calls_server.domain.errors import CallNotFound, StoreUnavailable
from calls_server.domain.webhooks import RetryPolicy
from calls_server.integrations.clock import wall_clock
from calls_server.integrations.egress import EgressPolicy
from calls_server.integrations.signing import (
    LEGACY_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    legacy_signature,
    verify,
)
from calls_server.services.webhooks import WebhookDeliverer
from calls_server.settings import Settings
from calls_server.storage.embedded import EmbeddedStore
from calls_server.storage.journal import JournalFailed
from calls_server.storage.tinydb_table import raw_documents
from tests.conftest import Receiver, add_tenant, app_client, assert_error, create_call, wait_for

# The receivers of these tests listen on loopback (an operator's allowance), and failures
# are retried after tenths of seconds instead of minutes.
LOOPBACK_SETTINGS = {
    "webhook_allow_http": True,
    "webhook_allow_networks": "127.0.0.0/8",
    "webhook_retry_first_delay": 0.05,
    "webhook_retry_max_delay": 0.1,
}
QUICK_RETRIES = RetryPolicy(first_delay=0.05, max_delay=0.1)


@pytest.fixture
def client(store, data_dir):
    with app_client(store, data_dir=data_dir, **LOOPBACK_SETTINGS) as test_client:
        yield test_client


LOOPBACK = EgressPolicy(
    allow_http=True, allowed_networks=EgressPolicy.parse_networks("127.0.0.0/8")
)


def register(client, tenant, url: str, **fields) -> dict:
    """A webhook that hears every status change (this server's extension), unless told
    otherwise; the post-call rule upstream follows has tests of its own below."""
    body = {"name": "hook", "url": url, "status_events": True, **fields}
    response = client.post("/api/post-call-webhooks/create", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    hook: dict = response.json()["data"]
    return hook


def events(receiver) -> list[str]:
    return [json.loads(r.body)["event"] for r in receiver.received]


def event_ids(receiver) -> list[str]:
    return [json.loads(r.body)["event_id"] for r in receiver.received]


def hook_events(client, tenant, hook, **params) -> list[dict]:
    url = f"/api/post-call-webhooks/{hook['id']}/events"
    response = client.get(url, params=params, headers=tenant.headers)
    assert response.status_code == 200, response.text
    found: list[dict] = response.json()["data"]["events"]
    return found


def add_hook(store, tenant, url: str) -> dict:
    hook = webhooks.new_webhook(
        tenant.organization_id,
        {"name": "hook", "url": url, "is_active": True, "status_events": True},
        now=1,
        existing=0,
        limit=16,
    )
    store.add_webhook(hook)
    return hook


def add_web_call(store, tenant, now: int = 1) -> dict:
    call = calls.new_call(
        organization_id=tenant.organization_id, agent_id="a", now=now, call_type="web_call"
    )
    store.add_call(call)
    return call


# -- the resource -----------------------------------------------------------------------------


def test_create_webhook_returns_it_with_its_secret_once(client, tenant):
    hook = register(client, tenant, "https://crm.example.com/hooks", description="CRM")

    assert hook["id"].startswith("webhook_")
    assert hook["secret"].startswith("whsec_")
    assert (hook["organization_id"], hook["is_active"], hook["description"]) == (
        tenant.organization_id,
        True,
        "CRM",
    )
    shown = client.get(f"/api/post-call-webhooks/{hook['id']}", headers=tenant.headers).json()
    assert "secret" not in shown["data"]
    assert shown["data"] == {k: v for k, v in hook.items() if k != "secret"}


def test_create_webhook_requires_https(store, data_dir, tenant):
    with TestClient(create_app(Settings(data_dir=data_dir), store)) as strict:
        response = strict.post(
            "/api/post-call-webhooks/create",
            json={"name": "h", "url": "http://crm.example.com"},
            headers=tenant.headers,
        )

    assert_error(response, 400, "Webhook URL must be HTTPS")
    assert store.list_webhooks(tenant.organization_id) == []


def test_list_webhooks_can_show_only_the_active_ones(client, tenant):
    on = register(client, tenant, "https://a.example.com")
    off = register(client, tenant, "https://b.example.com", is_active=False)

    everything = client.get("/api/post-call-webhooks", headers=tenant.headers).json()["data"]
    active = client.get("/api/post-call-webhooks?activeOnly=true", headers=tenant.headers)

    assert [h["id"] for h in everything["webhooks"]] == [on["id"], off["id"]]
    assert everything["count"] == 2
    assert [h["id"] for h in active.json()["data"]["webhooks"]] == [on["id"]]


def test_update_and_toggle_webhook(client, tenant):
    hook = register(client, tenant, "https://a.example.com")
    url = f"/api/post-call-webhooks/{hook['id']}"

    updated = client.patch(url, json={"name": "renamed"}, headers=tenant.headers).json()["data"]
    toggled = client.post(f"{url}/toggle", headers=tenant.headers).json()["data"]

    assert updated["name"] == "renamed"
    assert toggled["is_active"] is False
    assert client.get(url, headers=tenant.headers).json()["data"]["is_active"] is False


def test_delete_webhook_removes_it(client, tenant):
    hook = register(client, tenant, "https://a.example.com")
    url = f"/api/post-call-webhooks/{hook['id']}"

    assert client.delete(url, headers=tenant.headers).status_code == 200

    assert_error(client.get(url, headers=tenant.headers), 404, hook["id"])


def test_another_organizations_webhook_is_404_and_unchanged(client, tenant, other_tenant, store):
    hook = register(client, tenant, "https://a.example.com")
    url = f"/api/post-call-webhooks/{hook['id']}"

    for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
        response = client.request(method, url, json=body, headers=other_tenant.headers)
        assert_error(response, 404, hook["id"])
    assert_error(client.post(f"{url}/toggle", headers=other_tenant.headers), 404)
    assert store.get_webhook(tenant.organization_id, hook["id"])["name"] == "hook"
    listed = client.get("/api/post-call-webhooks", headers=other_tenant.headers).json()
    assert listed["data"]["count"] == 0


# -- delivery -------------------------------------------------------------------------------


def test_status_changes_are_delivered_in_order_and_signed(client, tenant, receiver):
    hook = register(client, tenant, receiver.url + "/events")
    call = create_call(client, tenant)
    call_url = f"/api/calls/{call['call_id']}"
    client.put(call_url, json={"call_status": "ongoing"}, headers=tenant.headers)
    client.put(call_url, json={"transcript": "no status change"}, headers=tenant.headers)
    client.put(call_url, json={"call_status": "ended"}, headers=tenant.headers)
    client.delete(call_url, headers=tenant.headers)

    wait_for(lambda: len(receiver.received) == 4)

    assert events(receiver) == ["call_registered", "call_started", "call_ended", "call_deleted"]
    for request in receiver.received:
        assert request.path == "/events"
        assert verify(hook["secret"], request.body, request.headers[SIGNATURE_HEADER])
        legacy = request.headers[LEGACY_SIGNATURE_HEADER]
        assert legacy == legacy_signature(hook["secret"], request.body)
        payload = json.loads(request.body)
        assert payload["webhook_id"] == hook["id"]
        assert payload["organization_id"] == tenant.organization_id
        assert payload["call"]["call_id"] == call["call_id"]
        assert request.headers["X-Calls-Event"] == payload["event"]
    assert json.loads(receiver.received[2].body)["call"]["call_status"] == "ended"


def test_a_scheduled_call_is_announced(client, tenant, receiver):
    register(client, tenant, receiver.url)
    body = {
        "from_number": "+14157774444",
        "to_number": "+12137774445",
        "override_agent_id": "ag",
        "scheduled_timestamp": 4102444800,
    }
    client.post("/api/calls/create-phone-call", json=body, headers=tenant.headers)

    wait_for(lambda: len(receiver.received) == 1)
    assert events(receiver) == ["call_scheduled"]


def test_inactive_webhooks_and_other_organizations_are_owed_nothing(
    client, tenant, other_tenant, receiver
):
    inactive = register(client, tenant, receiver.url + "/inactive", is_active=False)
    other = register(client, other_tenant, receiver.url + "/other")
    active = register(client, tenant, receiver.url + "/active")

    create_call(client, tenant)

    # Recorded delivered a moment after the receiver has it (the answer, then the record).
    wait_for(lambda: [e["status"] for e in hook_events(client, tenant, active)] == ["delivered"])
    assert [request.path for request in receiver.received] == ["/active"]
    assert hook_events(client, tenant, inactive) == []
    assert hook_events(client, other_tenant, other) == []


def test_one_event_id_per_change_shared_by_every_webhook_it_is_owed_to(client, tenant, receiver):
    register(client, tenant, receiver.url + "/a")
    register(client, tenant, receiver.url + "/b")

    create_call(client, tenant)

    wait_for(lambda: len(receiver.received) == 2)
    first, second = (json.loads(r.body) for r in receiver.received)
    assert first["event_id"] == second["event_id"]
    assert {first["webhook_id"], second["webhook_id"]} == {
        hook["id"]
        for hook in client.get("/api/post-call-webhooks", headers=tenant.headers).json()["data"][
            "webhooks"
        ]
    }


def test_a_failed_delivery_is_retried_with_the_same_event_id_and_each_attempt_recorded(
    client, tenant, receiver
):
    receiver.replies = [(500, 0.0), (503, 0.0)]
    hook = register(client, tenant, receiver.url)

    create_call(client, tenant)

    wait_for(lambda: len(receiver.received) == 3)
    assert events(receiver) == ["call_registered"] * 3
    assert len(set(event_ids(receiver))) == 1
    wait_for(lambda: hook_events(client, tenant, hook)[0]["status"] == "delivered")
    (event,) = hook_events(client, tenant, hook)
    assert event["attempt_count"] == 3
    assert [a["status_code"] for a in event["attempts"]] == [500, 503, 202]
    assert all(a["latency_ms"] >= 0 and a["error"] is None for a in event["attempts"])
    assert event["next_attempt_at"] is None
    assert event["delivered_at"] >= event["created_at"]
    assert event["payload"] == json.loads(receiver.received[-1].body)


def test_events_of_a_webhook_wait_behind_one_being_retried(client, tenant, receiver):
    receiver.replies = [(500, 0.0), (500, 0.0)]
    register(client, tenant, receiver.url)
    call = create_call(client, tenant)

    client.put(f"/api/calls/{call['call_id']}", json={"call_status": "ongoing"},
               headers=tenant.headers)  # fmt: skip

    wait_for(lambda: len(receiver.received) == 4)
    assert events(receiver) == ["call_registered"] * 3 + ["call_started"]


def test_a_call_whose_event_hangs_holds_up_no_other_calls_events(client, tenant, receiver):
    receiver.replies = [(200, 2.0)]  # the first call's event hangs for 2 s
    register(client, tenant, receiver.url)
    first = create_call(client, tenant)
    wait_for(lambda: len(receiver.received) == 1)

    second = create_call(client, tenant)

    wait_for(lambda: len(receiver.received) == 2, timeout=1.5)
    arrived = [json.loads(r.body)["call"]["call_id"] for r in receiver.received]
    assert arrived == [first["call_id"], second["call_id"]]


def test_an_event_is_given_up_after_the_retry_window_and_the_next_one_is_sent(
    store, data_dir, tenant, receiver
):
    # The receiver refuses the call's first event, and takes the next.
    receiver.reply_to = lambda request: (
        (500, 0.0) if b"call_registered" in request.body else (200, 0.0)
    )
    # A window of 1 s: retries 0.05 s apart fit in it even when an attempt and its record
    # take a few hundred ms on a loaded machine (0.3 s once left room for the first alone).
    settings = {**LOOPBACK_SETTINGS, "webhook_retry_for": 1.0}
    with app_client(store, data_dir=data_dir, **settings) as client:
        hook = register(client, tenant, receiver.url)
        call = create_call(client, tenant)
        client.delete(f"/api/calls/{call['call_id']}", headers=tenant.headers)

        wait_for(lambda: hook_events(client, tenant, hook)[0]["status"] == "delivered")

        deleted, registered = hook_events(client, tenant, hook)
    assert (registered["event"], registered["status"]) == ("call_registered", "failed")
    assert registered["next_attempt_at"] is None
    # Retried until the window closed (how many times fit in it depends on the machine's load).
    assert registered["attempt_count"] == len(registered["attempts"]) >= 2
    assert set(a["status_code"] for a in registered["attempts"]) == {500}
    assert (deleted["event"], deleted["status"]) == ("call_deleted", "delivered")


def test_a_receiver_that_does_not_answer_is_recorded_as_a_timeout(
    store, data_dir, tenant, receiver
):
    receiver.replies = [(200, 1.0)]
    with app_client(store, data_dir=data_dir, webhook_timeout=0.2, **LOOPBACK_SETTINGS) as client:
        hook = register(client, tenant, receiver.url)
        create_call(client, tenant)

        wait_for(lambda: hook_events(client, tenant, hook)[0]["status"] == "delivered")
        (event,) = hook_events(client, tenant, hook)
    first = event["attempts"][0]
    assert first["status_code"] is None
    assert first["error"] == "no answer within 0.2 s"
    assert event["attempts"][-1]["status_code"] == 202


def test_an_endpoint_failing_for_long_is_switched_off_with_the_reason_and_on_again_by_toggle(
    store, data_dir, tenant, receiver
):
    receiver.replies = [(500, 0.0)] * 1000
    settings = {**LOOPBACK_SETTINGS, "webhook_disable_after": 0.3}
    with app_client(store, data_dir=data_dir, **settings) as client:
        hook = register(client, tenant, receiver.url)
        create_call(client, tenant)
        url = f"/api/post-call-webhooks/{hook['id']}"

        wait_for(
            lambda: client.get(url, headers=tenant.headers).json()["data"]["is_active"] is False
        )
        disabled = client.get(url, headers=tenant.headers).json()["data"]
        assert disabled["disabled_reason"].startswith("Switched off automatically")
        assert "HTTP 500" in disabled["disabled_reason"]
        assert disabled["failing_since"] is not None
        (event,) = hook_events(client, tenant, hook)
        assert event["status"] == "pending"  # kept, not dropped
        attempts = len(receiver.received)
        time.sleep(0.3)
        assert len(receiver.received) == attempts  # nothing is sent to a switched-off webhook

        receiver.replies = []
        enabled = client.post(url + "/toggle", headers=tenant.headers).json()["data"]
        assert (enabled["is_active"], enabled["disabled_reason"]) == (True, None)
        assert enabled["failing_since"] is None
        wait_for(lambda: hook_events(client, tenant, hook)[0]["status"] == "delivered")


def test_a_slow_receiver_never_holds_up_the_api(client, tenant, receiver):
    receiver.replies = [(200, 2.0)]
    register(client, tenant, receiver.url)

    started = time.monotonic()
    first = create_call(client, tenant)
    second = create_call(client, tenant)
    elapsed = time.monotonic() - started

    assert elapsed < 1.5
    wait_for(lambda: len(receiver.received) == 2)
    arrived = {json.loads(r.body)["call"]["call_id"] for r in receiver.received}
    assert arrived == {first["call_id"], second["call_id"]}


def test_a_hanging_endpoint_never_slows_another_or_the_api(client, tenant, other_tenant, receiver):
    hanging = Receiver()
    try:
        hanging.replies = [(200, 3.0)] * 10
        register(client, other_tenant, hanging.url)
        register(client, tenant, receiver.url)
        create_call(client, other_tenant)
        wait_for(lambda: len(hanging.received) == 1)  # it is hanging now

        started = time.monotonic()
        create_call(client, tenant)
        api_latency = time.monotonic() - started
        wait_for(lambda: len(receiver.received) == 1, timeout=2.0)
        delivered_after = time.monotonic() - started

        assert api_latency < 1.0
        assert delivered_after < 2.0  # well before the hanging answer (3 s)
        assert client.get("/api/health").status_code == 200
    finally:
        hanging.close()


def test_a_deleted_webhook_takes_its_events_with_it(client, store, tenant, receiver):
    receiver.replies = [(500, 0.0)] * 1000
    hook = register(client, tenant, receiver.url)
    create_call(client, tenant)
    wait_for(lambda: len(receiver.received) >= 1)

    client.delete(f"/api/post-call-webhooks/{hook['id']}", headers=tenant.headers)

    assert store.pending_webhook_events() == []
    attempts = len(receiver.received)
    time.sleep(0.3)
    assert len(receiver.received) <= attempts + 1  # at most the attempt under way


# -- the outbox: recorded with the change, kept across stops and restarts ---------------------


def test_an_event_is_written_in_the_same_journal_record_as_its_change(store, data_dir, tenant):
    hook = add_hook(store, tenant, "https://crm.example.com/hooks")
    store.record_webhook_events(
        lambda old, new, hooks, assigned: webhooks.owed_events(
            old, new, hooks, assigned, 5, "ev-1"
        ),
        lambda _: None,
    )

    call = add_web_call(store, tenant)

    segment = sorted(data_dir.glob("journal-*.jsonl"))[-1]
    last = json.loads(segment.read_bytes().splitlines()[-1].split(b" ", 1)[1])
    assert [(table, doc and doc.get("call_id")) for table, _, doc in last["changes"]] == [
        ("calls", call["call_id"]),
        ("webhook_events", call["call_id"]),
    ]
    assert last["changes"][1][2]["webhook_id"] == hook["id"]


def test_a_change_whose_events_cannot_be_recorded_is_not_made(store, tenant):
    add_hook(store, tenant, "https://crm.example.com/hooks")

    def broken(old, new, hooks, assigned):
        raise RuntimeError("no events today")

    store.record_webhook_events(broken, lambda _: None)
    call = calls.new_call(
        organization_id=tenant.organization_id, agent_id="a", now=1, call_type="web_call"
    )
    with pytest.raises(RuntimeError):
        store.add_call(call)

    with pytest.raises(CallNotFound):
        store.get_call(tenant.organization_id, call["call_id"])
    assert store.pending_webhook_events() == []


@pytest.mark.embedded_only
def test_a_change_and_its_events_are_undone_together_when_the_journal_refuses_them(
    store, tenant, monkeypatch
):
    add_hook(store, tenant, "https://crm.example.com/hooks")
    store.record_webhook_events(
        lambda old, new, hooks, assigned: webhooks.owed_events(
            old, new, hooks, assigned, 5, "ev-1"
        ),
        lambda _: None,
    )
    journal = store._journal

    def full_disk(changes):
        raise JournalFailed("the record could not be written (No space left on device)")

    monkeypatch.setattr(journal, "_append", full_disk)
    call = calls.new_call(
        organization_id=tenant.organization_id, agent_id="a", now=1, call_type="web_call"
    )
    with pytest.raises(StoreUnavailable):
        store.add_call(call)
    monkeypatch.undo()

    with pytest.raises(CallNotFound):
        store.get_call(tenant.organization_id, call["call_id"])
    assert store.pending_webhook_events() == []
    assert raw_documents(store._events) == {}


def test_a_stop_keeps_pending_events_and_the_next_start_delivers_them(tmp_path, receiver, caplog):
    receiver.replies = [(200, 1.0)]  # the first delivery hangs; the rest wait for a slot
    data_dir = tmp_path / "restarted"
    first_run = EmbeddedStore(data_dir)
    tenant = add_tenant(first_run, "acme")
    hook = add_hook(first_run, tenant, receiver.url)
    deliverer = WebhookDeliverer(first_run, LOOPBACK, QUICK_RETRIES, per_endpoint=1)
    deliverer.start()
    for n in range(4):
        add_web_call(first_run, tenant, now=n)
    wait_for(lambda: len(receiver.received) == 1)

    with caplog.at_level(logging.INFO, logger="calls_server.webhooks"):
        deliverer.stop()
    first_run.close()

    assert f"3 webhook events are pending ({hook['id']}: 3)" in caplog.text
    assert "kept and delivered after the next start" in caplog.text
    second_run = EmbeddedStore(data_dir)
    try:
        assert len(second_run.pending_webhook_events()) == 3
        deliverer = WebhookDeliverer(second_run, LOOPBACK, QUICK_RETRIES)
        deliverer.start()
        wait_for(lambda: len(receiver.received) == 4)
        deliverer.stop()
    finally:
        second_run.close()
    assert len(set(event_ids(receiver))) == 4


def test_an_attempt_under_way_at_stop_is_finished_and_recorded(store, tenant, receiver):
    receiver.replies = [(500, 0.5)]  # a slow failure
    hook = add_hook(store, tenant, receiver.url)
    deliverer = WebhookDeliverer(store, LOOPBACK, QUICK_RETRIES)
    deliverer.start()
    add_web_call(store, tenant)
    wait_for(lambda: len(receiver.received) == 1)

    deliverer.stop()

    (event,) = store.pending_webhook_events()
    assert [a["status_code"] for a in event["attempts"]] == [500]
    assert event["webhook_id"] == hook["id"]
    assert len(receiver.received) == 1  # no further attempt after stop


@pytest.mark.embedded_only
def test_finished_events_past_their_retention_are_pruned(store, tenant, receiver):
    add_hook(store, tenant, receiver.url)
    deliverer = WebhookDeliverer(store, LOOPBACK, QUICK_RETRIES)
    deliverer.start()
    add_web_call(store, tenant)
    wait_for(lambda: len(receiver.received) == 1)
    deliverer.stop()
    wait_for(lambda: not store.pending_webhook_events())

    assert store.prune_webhook_events(settled_before=0) == 0
    assert store.pending_webhook_events() == []
    assert store.prune_webhook_events(settled_before=wall_clock() + 1) == 1
    assert raw_documents(store._events) == {}


class RedeliveredOnceRecorded:
    """The store, but a redelivery of the first event recorded as delivered lands right
    after that record, before the deliverer has finished the attempt's lane (as the API's
    redeliver can, from another thread)."""

    def __init__(self, store) -> None:
        self._store = store
        self.redelivered = False

    def change_webhook_events(self, changes):
        recorded = self._store.change_webhook_events(changes)
        for event in recorded:
            if event is not None and event["status"] == "delivered" and not self.redelivered:
                self.redelivered = True
                self._store.change_webhook_event(
                    event["organization_id"],
                    event["webhook_id"],
                    event["event_id"],
                    lambda e: webhooks.redelivered(e, wall_clock()),
                )
        return recorded

    def __getattr__(self, name: str):
        return getattr(self._store, name)


def test_a_redelivery_landing_while_the_attempt_is_recorded_is_delivered(store, tenant, receiver):
    add_hook(store, tenant, receiver.url)
    racing = RedeliveredOnceRecorded(store)
    deliverer = WebhookDeliverer(racing, LOOPBACK, QUICK_RETRIES)
    deliverer.start()
    try:
        add_web_call(store, tenant)
        wait_for(lambda: len(receiver.received) == 2)
        wait_for(lambda: not store.pending_webhook_events())
    finally:
        deliverer.stop()

    assert racing.redelivered
    assert len(set(event_ids(receiver))) == 1  # the same event, twice


# -- the events API ---------------------------------------------------------------------------


def test_events_are_listed_newest_first_with_filters_and_pages(client, tenant, receiver):
    hook = register(client, tenant, receiver.url)
    call = create_call(client, tenant)
    client.put(f"/api/calls/{call['call_id']}", json={"call_status": "ongoing"},
               headers=tenant.headers)  # fmt: skip
    wait_for(lambda: len(receiver.received) == 2)
    wait_for(lambda: all(e["status"] == "delivered" for e in hook_events(client, tenant, hook)))
    started, registered = hook_events(client, tenant, hook)

    assert (started["event"], registered["event"]) == ("call_started", "call_registered")
    assert hook_events(client, tenant, hook, status="pending") == []
    assert hook_events(client, tenant, hook, since=started["created_at"] + 1) == []
    url = f"/api/post-call-webhooks/{hook['id']}/events"
    second_page = client.get(url, params={"limit": 1, "page": 1}, headers=tenant.headers).json()
    assert [e["event_id"] for e in second_page["data"]["events"]] == [registered["event_id"]]
    assert second_page["data"]["pagination"]["total_count"] == 2
    assert second_page["data"]["pagination"]["has_previous_page"] is True


def test_the_events_of_one_call_are_listed_by_its_id(client, tenant, receiver):
    hook = register(client, tenant, receiver.url)
    first, second = create_call(client, tenant), create_call(client, tenant)
    client.put(f"/api/calls/{first['call_id']}", json={"call_status": "ongoing"},
               headers=tenant.headers)  # fmt: skip
    wait_for(lambda: len(hook_events(client, tenant, hook)) == 3)

    mine = hook_events(client, tenant, hook, call_id=first["call_id"])

    assert [e["event"] for e in mine] == ["call_started", "call_registered"]
    assert {e["call_id"] for e in mine} == {first["call_id"]}
    assert len(hook_events(client, tenant, hook, call_id=second["call_id"])) == 1
    assert hook_events(client, tenant, hook, call_id="call_none") == []


def test_an_event_is_shown_by_its_id_and_another_organizations_is_404(
    client, tenant, other_tenant, receiver
):
    hook = register(client, tenant, receiver.url)
    create_call(client, tenant)
    wait_for(lambda: len(hook_events(client, tenant, hook)) == 1)
    (listed,) = hook_events(client, tenant, hook)
    url = f"/api/post-call-webhooks/{hook['id']}/events/{listed['event_id']}"

    shown = client.get(url, headers=tenant.headers)
    elsewhere = client.get(url, headers=other_tenant.headers)
    unknown = client.get(
        url[: -len(listed["event_id"])] + str(uuid.uuid4()), headers=tenant.headers
    )

    assert shown.status_code == 200
    assert shown.json()["data"]["event_id"] == listed["event_id"]
    assert_error(elsewhere, 404, f"Webhook with ID '{hook['id']}' does not exist")
    assert_error(unknown, 404, "does not exist for this webhook")


def test_a_delivered_event_can_be_redelivered_with_its_event_id(client, tenant, receiver):
    hook = register(client, tenant, receiver.url)
    create_call(client, tenant)
    wait_for(lambda: hook_events(client, tenant, hook)[0]["status"] == "delivered")
    (event,) = hook_events(client, tenant, hook)
    url = f"/api/post-call-webhooks/{hook['id']}/events/{event['event_id']}/redeliver"

    queued = client.post(url, headers=tenant.headers)

    assert queued.status_code == 200
    assert queued.json()["data"]["status"] == "pending"
    wait_for(lambda: len(receiver.received) == 2)
    assert event_ids(receiver) == [event["event_id"]] * 2
    wait_for(lambda: hook_events(client, tenant, hook)[0]["status"] == "delivered")
    assert hook_events(client, tenant, hook)[0]["attempt_count"] == 2


def test_every_failed_event_since_a_time_can_be_redelivered(store, data_dir, tenant, receiver):
    receiver.replies = [(500, 0.0)] * 1000
    settings = {**LOOPBACK_SETTINGS, "webhook_retry_for": 0.1}
    with app_client(store, data_dir=data_dir, **settings) as client:
        hook = register(client, tenant, receiver.url)
        for _ in range(3):
            create_call(client, tenant)
        wait_for(lambda: [e["status"] for e in hook_events(client, tenant, hook)] == ["failed"] * 3)
        oldest = hook_events(client, tenant, hook)[-1]
        receiver.replies = []
        url = f"/api/post-call-webhooks/{hook['id']}/redeliver"

        answered = client.post(
            url, json={"since": oldest["created_at"] + 1}, headers=tenant.headers
        )

        data = answered.json()["data"]

        def redelivered() -> bool:
            return len(hook_events(client, tenant, hook, status="delivered")) == 2

        wait_for(redelivered)
        statuses = {e["event_id"]: e["status"] for e in hook_events(client, tenant, hook)}
    assert answered.status_code == 200
    assert data["redelivered"] == len(data["event_ids"]) == 2
    assert oldest["event_id"] not in data["event_ids"]
    assert all(statuses[event_id] == "delivered" for event_id in data["event_ids"])
    assert statuses[oldest["event_id"]] == "failed"


def test_redelivering_needs_a_since_time(client, tenant):
    hook = register(client, tenant, "https://crm.example.com/hooks")

    response = client.post(
        f"/api/post-call-webhooks/{hook['id']}/redeliver", json={}, headers=tenant.headers
    )

    assert_error(response, 400, "'since' is a required property")


def test_the_host_header_carries_the_receivers_port(client, tenant, receiver):
    register(client, tenant, receiver.url + "/host")
    create_call(client, tenant)

    wait_for(lambda: len(receiver.received) == 1)

    port = receiver.server.server_address[1]
    assert receiver.received[0].headers["Host"] == f"127.0.0.1:{port}"
