"""What a delivery attempt does to an event and to its webhook (domain.webhooks)."""

from __future__ import annotations

from calls_server.domain import calls, iso8601, webhooks
from calls_server.domain.webhooks import Attempt, RetryPolicy

POLICY = RetryPolicy(first_delay=30, max_delay=3600, give_up_after=86400, disable_after=86400)
HOUR = 3_600_000


def an_event(now: int = 0) -> dict:
    call = calls.new_call(organization_id="acme", agent_id="a", now=now, call_type="web_call")
    hook = {"id": "webhook_1", "is_active": True, "status_events": True}
    (event,) = webhooks.owed_events(None, call, [hook], [], now, "ev-1")
    return event


def a_webhook() -> dict:
    fields = {"name": "crm", "url": "https://crm.example.com/", "is_active": True}
    return webhooks.new_webhook("acme", fields, now=0, existing=0, limit=16)


def failed_at(ms: int) -> Attempt:
    return Attempt(at=ms, latency_ms=12, status_code=500)


def test_a_change_that_keeps_the_status_owes_nothing():
    call = calls.new_call(organization_id="acme", agent_id="a", now=0, call_type="web_call")
    hooks = [{"id": "webhook_1", "is_active": True, "status_events": True}]

    assert webhooks.owed_events(call, {**call, "transcript": "hi"}, hooks, [], 1, "ev") == []


def test_inactive_webhooks_are_owed_nothing():
    call = calls.new_call(organization_id="acme", agent_id="a", now=0, call_type="web_call")
    hooks = [
        {"id": "webhook_1", "is_active": False, "status_events": True},
        {"id": "webhook_2", "is_active": True, "status_events": True},
    ]

    owed = webhooks.owed_events(None, call, hooks, [], 1, "ev")

    assert [event["webhook_id"] for event in owed] == ["webhook_2"]


def test_a_webhook_assigned_to_the_calls_agent_is_owed_only_the_end_of_the_call():
    call = calls.new_call(organization_id="acme", agent_id="a", now=0, call_type="web_call")
    hooks = [{"id": "webhook_1", "is_active": True}]  # no status events: upstream's rule
    started = {**call, "call_status": "ongoing"}

    assert webhooks.owed_events(None, call, hooks, ["webhook_1"], 1, "ev") == []
    assert webhooks.owed_events(call, started, hooks, ["webhook_1"], 1, "ev") == []
    for status, name in (("ended", "call_ended"), ("error", "call_error")):
        finished = {**started, "call_status": status}
        (event,) = webhooks.owed_events(started, finished, hooks, ["webhook_1"], 1, "ev")
        assert event["event"] == name


def test_a_webhook_assigned_to_no_agent_and_without_status_events_is_owed_nothing():
    call = calls.new_call(organization_id="acme", agent_id="a", now=0, call_type="web_call")
    ended = {**call, "call_status": "ended"}

    owed = webhooks.owed_events(call, ended, [{"id": "webhook_1", "is_active": True}], [], 1, "e")

    assert owed == []


def test_retries_wait_twice_as_long_each_time_up_to_the_maximum():
    policy = RetryPolicy(first_delay=30, max_delay=3600)

    assert [policy.delay(n) for n in (1, 2, 3, 8, 9, 50)] == [30, 60, 120, 3600, 3600, 3600]


def test_a_success_delivers_the_event():
    event = webhooks.attempted(an_event(), Attempt(at=5, latency_ms=3, status_code=204), POLICY)

    assert (event["status"], event["delivered_at"], event["next_attempt_at"]) == (
        "delivered",
        5,
        None,
    )
    assert event["attempts"] == [{"at": 5, "status_code": 204, "latency_ms": 3, "error": None}]


def test_a_failure_schedules_the_next_attempt_after_the_backoff():
    event = webhooks.attempted(
        webhooks.attempted(an_event(), failed_at(0), POLICY), failed_at(30_000), POLICY
    )

    assert event["status"] == "pending"
    assert event["next_attempt_at"] == 30_000 + 60_000
    assert event["attempt_count"] == 2


def test_an_event_is_given_up_once_retrying_would_pass_the_window():
    event = an_event()
    at = 0
    while event["status"] == "pending":
        event = webhooks.attempted(event, failed_at(at), POLICY)
        at = event["next_attempt_at"] or at

    assert event["status"] == "failed"
    assert event["next_attempt_at"] is None
    assert at <= 24 * HOUR
    assert len(event["attempts"]) == webhooks.ATTEMPTS_KEPT < event["attempt_count"]


def test_a_redelivered_event_gets_a_fresh_window_and_keeps_its_attempts():
    failed = {**webhooks.attempted(an_event(), failed_at(0), POLICY), "status": "failed"}

    again = webhooks.redelivered(failed, now=48 * HOUR)

    assert (again["status"], again["next_attempt_at"], again["retry_from"]) == (
        "pending",
        48 * HOUR,
        48 * HOUR,
    )
    assert again["attempts"] == failed["attempts"]
    assert again["event_id"] == failed["event_id"]


def test_a_first_failure_starts_the_webhooks_failing_streak_and_a_success_ends_it():
    hook = a_webhook()

    failing = webhooks.after_attempt(hook, failed_at(HOUR), POLICY)
    healthy = webhooks.after_attempt(
        failing, Attempt(at=2 * HOUR, latency_ms=1, status_code=200), POLICY
    )

    assert failing["failing_since"] == iso8601.utc(HOUR)
    assert healthy["failing_since"] is None
    assert (
        webhooks.after_attempt(healthy, Attempt(at=3 * HOUR, latency_ms=1, status_code=200), POLICY)
        is healthy
    )


def test_a_webhook_failing_for_the_whole_window_is_switched_off_with_the_reason():
    hook = webhooks.after_attempt(a_webhook(), failed_at(HOUR), POLICY)

    still_on = webhooks.after_attempt(hook, failed_at(HOUR + 23 * HOUR), POLICY)
    switched_off = webhooks.after_attempt(
        hook, Attempt(at=25 * HOUR, latency_ms=5000, error="no answer within 5 s"), POLICY
    )

    assert still_on is hook
    assert switched_off["is_active"] is False
    assert "no answer within 5 s" in switched_off["disabled_reason"]


def test_switching_a_webhook_on_clears_why_it_was_switched_off():
    off = {**a_webhook(), "is_active": False, "disabled_reason": "failing", "failing_since": "x"}

    on = webhooks.toggled(off, now=HOUR)

    assert (on["is_active"], on["disabled_reason"], on["failing_since"]) == (True, None, None)


def test_a_settled_event_is_dated_by_its_delivery_or_its_last_attempt():
    delivered = webhooks.attempted(an_event(), Attempt(at=7, latency_ms=1, status_code=200), POLICY)
    failed = {**webhooks.attempted(an_event(), failed_at(9), POLICY), "status": "failed"}

    assert webhooks.settled_at(an_event()) is None
    assert webhooks.settled_at(delivered) == 7
    assert webhooks.settled_at(failed) == 9
