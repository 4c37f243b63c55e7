"""The outbox's read of many webhook events at once (`Store.get_webhooks_with_events`, what
the deliverer reads for the attempts it starts together), on both backends (the `store`
fixture, tests/conftest.py)."""

from __future__ import annotations

from calls_server.domain import keys
from tests.store.test_store_contract import a_call, owing, webhook


def one_event(store) -> tuple[dict, dict]:
    """A webhook of organization `acme` and the one event a new call owes it."""
    store.add_organization(keys.new_organization(1, "acme"))
    hook = webhook(status_events=True)
    store.add_webhook(hook)
    store.record_webhook_events(owing, lambda events: None, lambda partitions: None)
    store.add_call(a_call(org="acme"))
    (event,) = store.pending_webhook_events()
    return hook, event


def test_many_webhooks_are_read_with_their_events_in_one_call(store):
    for org in ("acme", "other"):
        store.add_organization(keys.new_organization(1, org))
    acme, other = webhook(org="acme", status_events=True), webhook(org="other", status_events=True)
    store.add_webhook(acme)
    store.add_webhook(other)
    store.record_webhook_events(owing, lambda events: None, lambda partitions: None)
    store.add_call(a_call(org="acme", call_id="c0"))
    store.add_call(a_call(org="other", call_id="o0"))
    store.add_call(a_call(org="acme", call_id="c1"))
    first, other_event, second = store.pending_webhook_events()

    found = store.get_webhooks_with_events(
        [
            ("acme", acme["id"], second["event_id"]),  # in the order asked, not recorded
            ("other", other["id"], other_event["event_id"]),
            ("acme", acme["id"], "evt_none"),  # no such event
            ("acme", "webhook_none", first["event_id"]),  # no such webhook
            ("other", acme["id"], first["event_id"]),  # another organization's webhook
            ("acme", acme["id"], first["event_id"]),
        ]
    )

    assert found == [
        (acme, second),
        (other, other_event),
        (acme, None),
        (None, None),
        (None, None),
        (acme, first),
    ]


def test_what_is_read_at_once_is_the_callers_own_copy(store):
    hook, event = one_event(store)

    ((read_hook, read_event),) = store.get_webhooks_with_events(
        [("acme", hook["id"], event["event_id"])]
    )
    read_hook["url"] = "https://changed.example.com/"
    read_event["payload"]["call"]["call_status"] = "changed by the caller"

    assert store.get_webhook("acme", hook["id"]) == hook
    assert store.get_webhook_event("acme", hook["id"], event["event_id"]) == event


def test_nothing_asked_reads_nothing(store):
    assert store.get_webhooks_with_events([]) == []


def test_a_changed_event_returned_is_the_callers_own_copy(store):
    hook, event = one_event(store)
    key = ("acme", hook["id"], event["event_id"])

    (changed,) = store.change_webhook_events([(*key, lambda e: {**e, "status": "delivered"})])
    changed["payload"]["call"]["call_status"] = "changed by the caller"
    changed["attempts"].append({"at": 1})

    assert store.get_webhook_event(*key) == {**event, "status": "delivered"}
