"""What a running batch dials, and when: exactly once per attempt, from its trigger time,
never in its quiet hours, never past its caps, with retries per outcome; pause, resume and
cancel; claims left behind by a stopped process.

The dispatcher reads the time from a clock the tests move, and the tests run its passes
themselves (`run_once`, then wait for the dials it started). The dialer records the jobs
it is handed; the tests end the calls as a real dialer's updates would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest

from calls_server.domain import agents, batches, calls
from calls_server.domain.batches import Batch, Task
from calls_server.domain.errors import Conflict
from calls_server.domain.quotas import Quota
from calls_server.integrations.dialer import DialOutcome
from calls_server.services.batch_dispatch import BatchDispatcher
from calls_server.services.claimants import Claimants
from calls_server.services.sandbox import SandboxDialer
from calls_server.storage.embedded import EmbeddedStore
from tests.conftest import FakeClock, add_tenant

FROM = "+14157774444"
NOON = int(datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp() * 1000)
# What a dialer reports when a call of each outcome ends (a PUT body, as the sandbox sends).
ENDINGS: dict[str, dict[str, Any]] = {
    "completed": {"call_status": "ended", "disconnection_reason": "user_hangup"},
    "voicemail": {
        "call_status": "ended",
        "disconnection_reason": "voicemail_reached",
        "call_analysis": {"in_voicemail": True},
    },
    "no_answer": {"call_status": "ended", "disconnection_reason": "dial_no_answer"},
    "busy": {"call_status": "ended", "disconnection_reason": "dial_busy"},
    "failed": {"call_status": "error", "disconnection_reason": "dial_failed"},
}


class RecordingDialer:
    """Accepts every job (but those whose number it is told to refuse) and keeps them.
    `idempotent`: whether it says it places one call per Idempotency-Key (it keeps every
    job all the same, so that the tests count what was dialed)."""

    def __init__(self) -> None:
        self.jobs: list[Mapping[str, Any]] = []
        self.refused: set[str] = set()
        self.idempotent = False

    def dial(self, job: Mapping[str, Any]) -> DialOutcome:
        self.jobs.append(job)
        if job["to_number"] in self.refused:
            return DialOutcome(False, "refused (HTTP 422): no such number", 1)
        return DialOutcome(True, "accepted (HTTP 202)", 1)

    def dialed(self) -> Counter[str]:
        return Counter(job["call_id"] for job in self.jobs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOON)


@pytest.fixture
def dialer() -> RecordingDialer:
    return RecordingDialer()


@pytest.fixture
def agent_id(store, tenant, clock) -> str:
    agent = agents.new_agent(tenant.organization_id, {"agent_name": "Campaigner"}, clock())
    store.add_agent(agent)
    return str(agent["agent_id"])


@pytest.fixture
def dispatcher(store, dialer, clock) -> Iterator[BatchDispatcher]:
    running = BatchDispatcher(store, dialer, organization_cap=10, clock=clock)
    yield running
    running.stop()


class Campaign:
    """A batch of the test's organization, and what to do with it."""

    def __init__(self, store: Any, tenant: Any, agent_id: str, clock: FakeClock) -> None:
        self.store, self.org, self.agent_id, self.clock = (
            store,
            tenant.organization_id,
            agent_id,
            clock,
        )

    def create(self, count: int = 3, **settings: Any) -> Batch:
        numbers = [{"to_number": f"+1555000{n:04d}"} for n in range(count)]
        body = {"from_number": FROM, "agent_id": self.agent_id, "tasks": numbers, **settings}
        batch, tasks = batches.new_batch(self.org, body, self.clock(), [self.agent_id])
        self.store.add_batch(batch, tasks)
        return batch

    def batch(self, batch: Batch) -> Batch:
        return self.store.get_batch(self.org, batch["batch_call_id"])

    def tasks(self, batch: Batch, status: str | None = None) -> list[Task]:
        return self.store.batch_tasks(self.org, batch["batch_call_id"], status=status)[0]

    def end(self, call_id: str, outcome: str) -> None:
        """The call ends as a dialer reports it."""
        now = self.clock()
        self.store.change_call(self.org, call_id, lambda c: calls.update(c, ENDINGS[outcome], now))

    def end_all(self, batch: Batch, outcome: str) -> None:
        for task in self.tasks(batch, status="calling"):
            self.end(task["call_id"], outcome)

    def assert_counters_exact(self, batch: Batch) -> None:
        """Every counter of the stored batch equals a count of its stored tasks."""
        stored, tasks = self.batch(batch), self.tasks(batch)
        statuses = Counter(task["status"] for task in tasks)
        for status, counter in batches.COUNTED.items():
            assert stored[counter] == statuses[status], counter
        assert stored["sent"] == sum(task["attempts"] > 0 for task in tasks)
        assert stored["picked_up"] == sum(task["picked_up"] for task in tasks)
        assert stored["total"] == stored["total_task_count"] == len(tasks)


@pytest.fixture
def campaign(store, tenant, agent_id, clock) -> Campaign:
    return Campaign(store, tenant, agent_id, clock)


def run(dispatcher: BatchDispatcher) -> None:
    """One pass, and the dials it started recorded."""
    done, _ = wait(dispatcher.run_once(), timeout=30)
    for dial in done:
        dial.result()


# -- dialing ---------------------------------------------------------------------------------------
def test_each_task_is_dialed_once_as_an_ordinary_call_carrying_batch_and_task(
    campaign, dispatcher, dialer, store, tenant, agent_id
):
    batch = campaign.create(3)

    run(dispatcher)
    run(dispatcher)  # a second pass finds nothing new to dial

    assert len(dialer.jobs) == 3
    assert max(dialer.dialed().values()) == 1
    for task in campaign.tasks(batch):
        assert task["status"] == "calling"
        call = store.get_call(tenant.organization_id, task["call_id"])
        assert (call["call_type"], call["direction"], call["call_status"]) == (
            "phone_call",
            "outbound",
            "ongoing",
        )
        assert (call["from_number"], call["to_number"], call["agent_id"]) == (
            FROM,
            task["to_number"],
            agent_id,
        )
        assert call["metadata"] == {
            "batch_call_id": batch["batch_call_id"],
            "task_id": task["task_id"],
            "attempt": 1,
            "dynamic_variables": {},
        }
    campaign.assert_counters_exact(batch)


def test_a_batch_whose_calls_all_complete_is_completed_with_exact_counters(campaign, dispatcher):
    batch = campaign.create(3)
    run(dispatcher)

    campaign.end_all(batch, "completed")
    run(dispatcher)

    final = campaign.batch(batch)
    assert final["status"] == "completed"
    assert (final["sent"], final["picked_up"], final["completed"], final["pending"]) == (3, 3, 3, 0)
    assert {task["status"] for task in campaign.tasks(batch)} == {"completed"}
    campaign.assert_counters_exact(batch)


def test_a_batch_none_of_whose_tasks_completed_has_failed(campaign, dispatcher):
    batch = campaign.create(2)
    run(dispatcher)

    campaign.end_all(batch, "busy")
    run(dispatcher)

    assert campaign.batch(batch)["status"] == "failed"
    assert {t["error_message"] for t in campaign.tasks(batch)} == {
        "busy: dial_busy (no retry rule for 'busy')"
    }


def test_a_draft_is_never_dialed(campaign, dispatcher, dialer):
    campaign.create(2, status="draft")

    run(dispatcher)

    assert dialer.jobs == []


def test_a_scheduled_batch_starts_at_its_trigger_time_not_before(
    campaign, dispatcher, dialer, clock
):
    batch = campaign.create(2, trigger_timestamp=clock() // 1000 + 60)

    clock.advance(59)
    run(dispatcher)
    before = list(dialer.jobs)
    clock.advance(1)
    run(dispatcher)
    run(dispatcher)

    assert before == []
    assert campaign.batch(batch)["status"] == "sent"
    assert len(dialer.jobs) == 2


def test_a_task_the_dialer_refuses_fails_at_once(campaign, dispatcher, dialer):
    dialer.refused.add("+15550000001")
    batch = campaign.create(2)

    run(dispatcher)

    failed = campaign.tasks(batch, status="failed")
    assert [t["to_number"] for t in failed] == ["+15550000001"]
    assert failed[0]["outcome"] == "failed"
    assert "refused (HTTP 422)" in failed[0]["error_message"]
    campaign.assert_counters_exact(batch)


# -- caps ------------------------------------------------------------------------------------------
def test_a_batch_never_has_more_calls_under_way_than_its_limit(campaign, dispatcher, dialer):
    batch = campaign.create(5, concurrency_limit=2)
    most = 0
    while campaign.batch(batch)["status"] == "sent":
        run(dispatcher)
        most = max(most, campaign.batch(batch)["in_progress"])
        campaign.end_all(batch, "completed")

    assert most == 2
    assert len(dialer.jobs) == 5
    assert campaign.batch(batch)["completed"] == 5


def test_an_organizations_batches_together_stay_within_its_cap(store, campaign, dialer, clock):
    first, second = campaign.create(5), campaign.create(5)
    capped = BatchDispatcher(store, dialer, organization_cap=3, clock=clock)
    try:
        run(capped)
        under_way = [campaign.batch(b)["in_progress"] for b in (first, second)]
        run(capped)  # nothing more while they are under way
        again = len(dialer.jobs)
        campaign.end_all(first, "completed")
        campaign.end_all(second, "completed")
        run(capped)
    finally:
        capped.stop()

    assert sum(under_way) == 3
    assert again == 3
    assert len(dialer.jobs) == 6


# -- quiet hours -----------------------------------------------------------------------------------
QUIET = {"enabled": True, "start_time": "22:00", "end_time": "08:00", "timezone": "Asia/Calcutta"}


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def test_nothing_is_dialed_in_quiet_hours_and_dialing_resumes_at_their_end(
    campaign, dispatcher, dialer, clock
):
    clock.now = at(2026, 12, 7, 17, 0)  # 22:30 in Calcutta (UTC+5:30)
    campaign.create(2, quiet_hours=QUIET)

    run(dispatcher)
    clock.now = at(2026, 12, 8, 2, 29)  # 07:59 next morning
    run(dispatcher)
    quiet_dials = len(dialer.jobs)
    clock.now = at(2026, 12, 8, 2, 30)  # 08:00
    run(dispatcher)

    assert quiet_dials == 0
    assert len(dialer.jobs) == 2


@pytest.mark.parametrize(
    ("utc", "dialed"),
    [
        ((2026, 3, 8, 2, 59), 1),  # 21:59 EST, Saturday evening: before the window
        ((2026, 3, 8, 3, 0), 0),  # 22:00 EST: quiet
        ((2026, 3, 8, 5, 0), 0),  # midnight: still quiet, across it
        ((2026, 3, 8, 7, 30), 0),  # 03:30 EDT: the clock sprang forward at 02:00, quiet
        ((2026, 3, 8, 11, 59), 0),  # 07:59 EDT
        ((2026, 3, 8, 12, 0), 1),  # 08:00 EDT, an hour earlier in UTC than the night before
    ],
)
def test_quiet_hours_follow_the_wall_clock_across_midnight_and_a_dst_change(
    campaign, dispatcher, dialer, clock, utc, dialed
):
    clock.now = at(*utc)
    quiet = {"enabled": True, "start_time": "22:00", "end_time": "08:00"}
    campaign.create(1, timezone="America/New_York", quiet_hours=quiet)

    run(dispatcher)

    assert len(dialer.jobs) == dialed


def test_a_retry_falling_in_quiet_hours_waits_for_their_end(campaign, dispatcher, clock):
    clock.now = at(2026, 12, 7, 16, 0)  # 21:30 in Calcutta
    rule = {"condition": "no_answer", "retry_timing": {"type": "AFTER", "duration_minutes": 60}}
    batch = campaign.create(
        1, quiet_hours=QUIET, retry_config={"enabled": True}, retry_rules=[rule]
    )
    run(dispatcher)

    campaign.end_all(batch, "no_answer")
    run(dispatcher)

    (task,) = campaign.tasks(batch)
    assert task["status"] == "pending"
    assert task["next_attempt_at"] == at(2026, 12, 8, 2, 30)  # 08:00 in Calcutta


# -- retries ---------------------------------------------------------------------------------------
def retrying(*rules: dict[str, Any], max_attempts: int = 3) -> dict[str, Any]:
    return {
        "retry_config": {"enabled": True, "max_attempts": max_attempts},
        "retry_rules": list(rules),
    }


def after(condition: str, minutes: int, **extra: Any) -> dict[str, Any]:
    return {
        "condition": condition,
        "enabled": True,
        "retry_timing": {"type": "AFTER", "duration_minutes": minutes},
        **extra,
    }


def test_no_answer_is_retried_after_its_delay_until_attempts_run_out(
    campaign, dispatcher, dialer, clock
):
    batch = campaign.create(1, **retrying(after("no_answer", 10)))
    call_ids = []
    for attempt in (1, 2, 3):
        run(dispatcher)
        (task,) = campaign.tasks(batch)
        assert (task["status"], task["attempts"]) == ("calling", attempt)
        call_ids.append(task["call_id"])
        campaign.end_all(batch, "no_answer")
        run(dispatcher)  # the outcome recorded; the retry not due yet
        clock.advance(10 * 60)

    (task,) = campaign.tasks(batch)
    assert task["status"] == "failed"
    assert task["error_message"] == "no_answer after 3 attempts (at most 3)"
    assert task["call_ids"] == call_ids
    assert len(set(call_ids)) == 3
    assert list(dialer.dialed()) == call_ids
    assert campaign.batch(batch)["status"] == "failed"
    campaign.assert_counters_exact(batch)


def test_a_retry_is_not_dialed_before_it_is_due(campaign, dispatcher, dialer, clock):
    batch = campaign.create(1, **retrying(after("busy", 30)))
    run(dispatcher)
    campaign.end_all(batch, "busy")
    run(dispatcher)

    clock.advance(30 * 60 - 1)
    run(dispatcher)
    early = len(dialer.jobs)
    clock.advance(1)
    run(dispatcher)

    assert early == 1
    assert len(dialer.jobs) == 2
    assert campaign.tasks(batch)[0]["attempts"] == 2


def test_a_retry_at_a_local_time_is_due_at_the_next_such_time(campaign, dispatcher, clock):
    rule = {"condition": "busy", "retry_timing": {"type": "AT", "time": "14:00"}}
    batch = campaign.create(1, timezone="America/New_York", **retrying(rule))
    run(dispatcher)  # noon UTC is 07:00 in New York

    campaign.end_all(batch, "busy")
    run(dispatcher)

    assert campaign.tasks(batch)[0]["next_attempt_at"] == at(2026, 12, 7, 19, 0)  # 14:00 EST


def test_each_outcome_follows_its_own_rule(campaign, dispatcher, clock):
    rules = retrying(after("busy", 5), after("voicemail", 120, max_attempts=2))
    batch = campaign.create(4, **rules)
    run(dispatcher)
    outcomes = ["busy", "voicemail", "no_answer", "completed"]
    for task, outcome in zip(campaign.tasks(batch), outcomes, strict=True):
        campaign.end(task["call_id"], outcome)

    run(dispatcher)

    busy, voicemail, no_answer, completed = campaign.tasks(batch)
    assert (busy["status"], busy["next_attempt_at"]) == ("pending", clock() + 5 * 60_000)
    assert (voicemail["status"], voicemail["next_attempt_at"]) == (
        "pending",
        clock() + 120 * 60_000,
    )
    assert voicemail["picked_up"] is True
    assert no_answer["status"] == "failed"  # no rule for it
    assert completed["status"] == "completed"
    campaign.assert_counters_exact(batch)


def test_a_rule_s_own_attempt_limit_wins_over_the_batch_s(campaign, dispatcher, clock):
    batch = campaign.create(1, **retrying(after("voicemail", 1, max_attempts=2), max_attempts=5))
    for _ in range(2):
        run(dispatcher)
        campaign.end_all(batch, "voicemail")
        run(dispatcher)
        clock.advance(60)

    (task,) = campaign.tasks(batch)
    assert task["status"] == "failed"
    assert task["error_message"] == "voicemail after 2 attempts (at most 2)"


def test_a_task_s_max_retries_wins_over_every_other_limit(
    store, tenant, agent_id, dispatcher, clock
):
    body = {
        "from_number": FROM,
        "agent_id": agent_id,
        "tasks": [{"to_number": "+15550000000", "max_retries": 0}],
        **retrying(after("busy", 1)),
    }
    batch, tasks = batches.new_batch(tenant.organization_id, body, clock(), [agent_id])
    store.add_batch(batch, tasks)
    run(dispatcher)
    for task in store.batch_tasks(tenant.organization_id, batch["batch_call_id"])[0]:
        store.change_call(
            tenant.organization_id,
            task["call_id"],
            lambda c: calls.update(c, ENDINGS["busy"], clock()),
        )

    run(dispatcher)

    (task,) = store.batch_tasks(tenant.organization_id, batch["batch_call_id"])[0]
    assert task["status"] == "failed"
    assert task["attempts"] == 1


def test_a_voicemail_with_no_rule_completes_the_task(campaign, dispatcher):
    batch = campaign.create(1)
    run(dispatcher)

    campaign.end_all(batch, "voicemail")
    run(dispatcher)

    (task,) = campaign.tasks(batch)
    assert (task["status"], task["outcome"], task["picked_up"]) == ("completed", "voicemail", True)


def test_without_retry_config_enabled_nothing_is_retried(campaign, dispatcher):
    batch = campaign.create(1, retry_rules=[after("no_answer", 1)])
    run(dispatcher)

    campaign.end_all(batch, "no_answer")
    run(dispatcher)

    assert campaign.tasks(batch)[0]["status"] == "failed"


def test_retry_config_without_rules_retries_no_answer_busy_and_failed(campaign, dispatcher, clock):
    batch = campaign.create(3, retry_config={"enabled": True})
    run(dispatcher)
    for task, outcome in zip(campaign.tasks(batch), ["no_answer", "busy", "failed"], strict=True):
        campaign.end(task["call_id"], outcome)

    run(dispatcher)

    assert {t["status"] for t in campaign.tasks(batch)} == {"pending"}
    assert {t["next_attempt_at"] for t in campaign.tasks(batch)} == {clock() + 30 * 60_000}


# -- pause, resume, cancel -------------------------------------------------------------------------
def test_pausing_stops_new_attempts_at_once_and_keeps_following_calls_under_way(
    campaign, dispatcher, dialer, store, tenant, clock
):
    batch = campaign.create(4, concurrency_limit=2)
    run(dispatcher)
    store.change_batch(
        tenant.organization_id, batch["batch_call_id"], lambda b: batches.paused(b, clock())
    )

    campaign.end_all(batch, "completed")
    run(dispatcher)
    paused = campaign.batch(batch)
    store.change_batch(
        tenant.organization_id, batch["batch_call_id"], lambda b: batches.resumed(b, clock())
    )
    run(dispatcher)

    assert (paused["status"], paused["completed"], paused["pending"]) == ("paused", 2, 2)
    assert len(dialer.jobs) == 4
    campaign.assert_counters_exact(batch)


def test_cancelling_dials_nothing_more_and_records_the_calls_under_way(
    campaign, dispatcher, dialer, store, tenant, clock
):
    batch = campaign.create(4, concurrency_limit=2)
    run(dispatcher)
    store.change_batch(
        tenant.organization_id,
        batch["batch_call_id"],
        lambda b: batches.cancelled(b, clock()),
        lambda b, t: batches.task_cancelled(b, t, clock()),
    )

    campaign.end_all(batch, "completed")
    run(dispatcher)
    run(dispatcher)

    final = campaign.batch(batch)
    assert (final["status"], final["completed"], final["cancelled"], final["in_progress"]) == (
        "cancelled",
        2,
        2,
        0,
    )
    assert len(dialer.jobs) == 2
    assert not batches.active(final)
    campaign.assert_counters_exact(batch)


# -- claims left by a stopped process --------------------------------------------------------------
def claim_as(campaign: Campaign, batch: Batch, process: str) -> Task:
    """The batch's first task claimed by `process` (which then stops)."""
    (task, *_) = campaign.tasks(batch)
    claim = lambda b, t, c: batches.claimed(b, t, c, 10, campaign.clock(), process)  # noqa: E731
    return campaign.store.change_batch_task(
        campaign.org, batch["batch_call_id"], task["task_id"], claim
    )[1]


def test_a_claim_whose_call_was_never_created_is_made_again_and_dialed_once(
    campaign, dispatcher, dialer
):
    batch = campaign.create(1)
    claimed = claim_as(campaign, batch, "a-stopped-process")

    run(dispatcher)  # settles the claim: given back
    run(dispatcher)  # dials it

    (task,) = campaign.tasks(batch)
    assert (task["status"], task["attempts"]) == ("calling", 1)
    assert task["call_id"] == claimed["call_id"]  # the same attempt, its same call
    assert dialer.dialed() == Counter({claimed["call_id"]: 1})


def test_a_claim_of_a_process_seen_serving_is_left_to_it_for_the_grace(
    campaign, dispatcher, dialer
):
    ticks = [0.0]
    dispatcher._claimants = Claimants(dispatcher.store, grace=10, monotonic=lambda: ticks[0])
    dispatcher._claimants._seen.add("a-process-seen-serving")  # then gone: a failover's gap
    batch = campaign.create(1)
    claimed = claim_as(campaign, batch, "a-process-seen-serving")

    run(dispatcher)
    run(dispatcher)
    (within_grace,) = campaign.tasks(batch)
    ticks[0] += 10
    run(dispatcher)  # settles the claim: given back
    run(dispatcher)  # dials it

    assert (within_grace["status"], within_grace["claimed_by"]) == (
        "calling",
        "a-process-seen-serving",
    )
    assert dialer.dialed() == Counter({claimed["call_id"]: 1})


def test_a_claim_whose_call_exists_undialed_is_not_dialed_again_and_fails(
    campaign, dispatcher, dialer, store, tenant, clock
):
    batch = campaign.create(1)
    claimed = claim_as(campaign, batch, "a-stopped-process")
    store.add_call(calls.new_call(**batches.attempt_call(campaign.batch(batch), claimed, clock())))

    run(dispatcher)
    run(dispatcher)

    (task,) = campaign.tasks(batch)
    assert (task["status"], task["error_message"]) == ("failed", batches.INTERRUPTED)
    call = store.get_call(tenant.organization_id, claimed["call_id"])
    assert call["call_status"] == "error"
    assert dialer.jobs == []


def test_a_claim_whose_dial_the_call_records_is_followed_to_its_end(
    campaign, dispatcher, dialer, store, tenant, clock
):
    batch = campaign.create(1)
    claimed = claim_as(campaign, batch, "a-stopped-process")
    call = calls.new_call(**batches.attempt_call(campaign.batch(batch), claimed, clock()))
    store.add_call(calls.dispatched(call, True, "accepted (HTTP 202)", 1, clock()))

    run(dispatcher)
    campaign.end(claimed["call_id"], "completed")
    run(dispatcher)

    assert campaign.tasks(batch)[0]["status"] == "completed"
    assert campaign.batch(batch)["status"] == "completed"
    assert dialer.jobs == []


def test_a_claim_of_another_live_process_is_left_to_it(
    campaign, dispatcher, dialer, store, monkeypatch
):
    monkeypatch.setattr(store, "live_processes", lambda: {store.process_id, "another-process"})
    batch = campaign.create(1)
    claimed = claim_as(campaign, batch, "another-process")

    run(dispatcher)
    run(dispatcher)

    assert campaign.tasks(batch) == [claimed]
    assert dialer.jobs == []


def test_a_call_deleted_while_under_way_fails_its_task(campaign, dispatcher, store, tenant):
    batch = campaign.create(1)
    run(dispatcher)
    (task,) = campaign.tasks(batch)

    store.delete_call(tenant.organization_id, task["call_id"])
    run(dispatcher)

    (task,) = campaign.tasks(batch)
    assert (task["status"], task["error_message"]) == ("failed", batches.CALL_DELETED)
    campaign.assert_counters_exact(batch)


def test_an_attempt_whose_call_the_quota_refuses_fails_with_the_reason(tmp_path, dialer, clock):
    store = EmbeddedStore(tmp_path / "data", quota=Quota(max_calls=1))
    tenant = add_tenant(store, "capped-org")
    agent = agents.new_agent(tenant.organization_id, {"agent_name": "a"}, clock())
    store.add_agent(agent)
    capped = Campaign(store, tenant, agent["agent_id"], clock)
    batch = capped.create(2)
    running = BatchDispatcher(store, dialer, organization_cap=10, clock=clock)
    try:
        run(running)
        run(running)
        first, second = capped.tasks(batch)
    finally:
        running.stop()
        store.close()

    assert first["status"] == "calling"
    assert second["status"] == "failed"
    assert second["error_message"].startswith("failed: call not created: The organization")
    assert len(dialer.jobs) == 1


def test_claims_made_at_once_never_exceed_the_organizations_cap(campaign, store, clock):
    first, second = campaign.create(10), campaign.create(10)
    tasks = [(b, t) for b in (first, second) for t in campaign.tasks(b)]

    def claim(pair: tuple[Batch, Task]) -> bool:
        batch, task = pair
        claim = partial(batches.claimed, organization_cap=3, now=clock(), me="a-process")
        try:
            store.change_batch_task(campaign.org, batch["batch_call_id"], task["task_id"], claim)
        except Conflict:
            return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        claimed = list(pool.map(claim, tasks))

    assert sum(claimed) == 3
    assert campaign.batch(first)["in_progress"] + campaign.batch(second)["in_progress"] == 3


def test_an_organizations_older_batch_is_served_first_under_its_cap(store, campaign, dialer, clock):
    older = campaign.create(3)
    clock.advance(1)
    newer = campaign.create(3)
    capped = BatchDispatcher(store, dialer, organization_cap=2, clock=clock)
    try:
        run(capped)
    finally:
        capped.stop()

    assert campaign.batch(older)["in_progress"] == 2
    assert campaign.batch(newer)["in_progress"] == 0


# -- what a killed process left under way ----------------------------------------------------------
def dialed_as(campaign: Campaign, batch: Batch, process: str) -> Task:
    """The batch's first task claimed and dialed by `process` (which then stops): its call
    is under way, as the dialer accepted it."""
    claimed = claim_as(campaign, batch, process)
    now = campaign.clock()
    call = calls.new_call(**batches.attempt_call(campaign.batch(batch), claimed, now))
    campaign.store.add_call(calls.dispatched(call, True, "accepted by the sandbox dialer", 1, now))
    record = lambda b, t, _: batches.dialed(b, t, claimed["call_id"], True, "accepted", now)  # noqa: E731
    return campaign.store.change_batch_task(
        campaign.org, batch["batch_call_id"], claimed["task_id"], record
    )[1]


def test_a_sandbox_call_a_stopped_process_was_playing_is_ended_and_its_task_retried(
    campaign, dialer, store, tenant, clock
):
    sandbox = SandboxDialer(store, "http://127.0.0.1/recordings", clock=clock)
    running = BatchDispatcher(store, sandbox, organization_cap=10, clock=clock, sandbox=sandbox)
    batch = campaign.create(1, retry_config={"enabled": True})  # failed: again after 30 min
    stranded = dialed_as(campaign, batch, "a-killed-process")
    try:
        run(running)
        (task,) = campaign.tasks(batch)
        call = store.get_call(tenant.organization_id, stranded["call_id"])
        stored = campaign.batch(batch)
    finally:
        running.stop()

    assert (call["call_status"], call["disconnection_reason"]) == ("error", "error_unknown")
    assert call["events"][-1]["event"] == calls.CUT_OFF_EVENT
    assert "stopped with its process" in call["events"][-1]["data"]["reason"]
    assert call["call_duration"] == call["end_timestamp"] - call["start_timestamp"]
    assert (task["status"], task["outcome"], task["attempts"]) == ("pending", "failed", 1)
    assert task["next_attempt_at"] == clock() + 30 * 60_000
    assert (stored["in_progress"], stored["pending"]) == (0, 1)  # its place under the caps freed
    campaign.assert_counters_exact(batch)


def test_a_call_under_way_that_a_stopped_process_handed_to_an_http_dialer_is_left_to_it(
    campaign, dispatcher, store, tenant
):
    batch = campaign.create(1)
    stranded = dialed_as(campaign, batch, "a-killed-process")

    run(dispatcher)

    assert store.get_call(tenant.organization_id, stranded["call_id"])["call_status"] == "ongoing"
    assert campaign.tasks(batch)[0]["status"] == "calling"


def test_a_sandbox_call_of_a_live_process_is_left_to_it(
    campaign, store, tenant, clock, monkeypatch
):
    monkeypatch.setattr(store, "live_processes", lambda: {store.process_id, "another-process"})
    sandbox = SandboxDialer(store, "http://127.0.0.1/recordings", clock=clock)
    running = BatchDispatcher(store, sandbox, organization_cap=10, clock=clock, sandbox=sandbox)
    batch = campaign.create(1)
    playing = dialed_as(campaign, batch, "another-process")
    try:
        run(running)
    finally:
        running.stop()

    assert store.get_call(tenant.organization_id, playing["call_id"])["call_status"] == "ongoing"


def test_a_claim_whose_call_exists_undialed_is_dialed_again_once_when_the_dialer_honours_keys(
    campaign, dispatcher, dialer, store, tenant, clock
):
    dialer.idempotent = True
    batch = campaign.create(1)
    claimed = claim_as(campaign, batch, "a-killed-process")
    store.add_call(calls.new_call(**batches.attempt_call(campaign.batch(batch), claimed, clock())))

    run(dispatcher)
    run(dispatcher)

    (task,) = campaign.tasks(batch)
    assert (task["status"], task["attempts"], task["dialed"]) == ("calling", 1, True)
    assert task["call_ids"] == [claimed["call_id"]]  # the same attempt, no second call
    assert dialer.dialed() == Counter({claimed["call_id"]: 1})  # under its same key
    call = store.get_call(tenant.organization_id, claimed["call_id"])
    assert call["call_status"] == "ongoing"
    campaign.end(call["call_id"], "completed")
    run(dispatcher)
    assert campaign.batch(batch)["status"] == "completed"
    campaign.assert_counters_exact(batch)


def test_a_claim_taken_over_for_a_dial_again_is_taken_by_one_process_only(campaign, clock):
    batch = campaign.create(1)
    claimed = claim_as(campaign, batch, "a-killed-process")

    def take_over(me: str) -> Task:
        take = lambda b, t, _: batches.reclaimed(b, t, "a-killed-process", me, clock())  # noqa: E731
        return campaign.store.change_batch_task(
            campaign.org, batch["batch_call_id"], claimed["task_id"], take
        )[1]

    take_over("first")
    with pytest.raises(Conflict):
        take_over("second")
    assert campaign.tasks(batch)[0]["claimed_by"] == "first"


class FailingDialer(RecordingDialer):
    """Says it places one call per key, and raises at every dial (a fault of this process,
    before the call leaves `registered`)."""

    def __init__(self) -> None:
        super().__init__()
        self.idempotent = True

    def dial(self, job: Mapping[str, Any]) -> DialOutcome:
        self.jobs.append(job)
        raise RuntimeError("the dialer's client broke")


def test_a_dial_failing_in_this_process_is_not_made_again_at_every_pass(
    campaign, store, tenant, clock
):
    dialer = FailingDialer()
    running = BatchDispatcher(store, dialer, organization_cap=10, clock=clock)
    batch = campaign.create(1)
    try:
        for _ in range(4):
            run(running)
    finally:
        running.stop()

    (task,) = campaign.tasks(batch)
    assert len(dialer.jobs) == 1  # was one more at every pass, for ever
    assert (task["status"], task["error_message"]) == ("failed", batches.INTERRUPTED)
    assert store.get_call(tenant.organization_id, task["call_id"])["call_status"] == "error"
    campaign.assert_counters_exact(batch)


def dialed_before_claimants_were_kept(campaign: Campaign, batch: Batch) -> Task:
    """The batch's first task dialed as an older version left it: no claimant on it."""
    dialed = dialed_as(campaign, batch, "an-older-process")
    forget = lambda b, t, _: (b, {**t, "claimed_by": None})  # noqa: E731
    return campaign.store.change_batch_task(
        campaign.org, batch["batch_call_id"], dialed["task_id"], forget
    )[1]


def test_a_sandbox_call_dialed_without_a_claimant_is_left_while_another_process_serves(
    campaign, store, tenant, clock, monkeypatch
):
    monkeypatch.setattr(store, "live_processes", lambda: {store.process_id, "an-older-process"})
    sandbox = SandboxDialer(store, "http://127.0.0.1/recordings", clock=clock)
    running = BatchDispatcher(store, sandbox, organization_cap=10, clock=clock, sandbox=sandbox)
    batch = campaign.create(1)
    playing = dialed_before_claimants_were_kept(campaign, batch)
    try:
        run(running)
    finally:
        running.stop()

    assert store.get_call(tenant.organization_id, playing["call_id"])["call_status"] == "ongoing"
    assert campaign.tasks(batch)[0]["status"] == "calling"


def test_a_sandbox_call_dialed_without_a_claimant_is_ended_when_this_process_serves_alone(
    campaign, store, tenant, clock
):
    sandbox = SandboxDialer(store, "http://127.0.0.1/recordings", clock=clock)
    running = BatchDispatcher(store, sandbox, organization_cap=10, clock=clock, sandbox=sandbox)
    batch = campaign.create(1)
    stranded = dialed_before_claimants_were_kept(campaign, batch)
    try:
        run(running)
    finally:
        running.stop()

    call = store.get_call(tenant.organization_id, stranded["call_id"])
    assert (call["call_status"], call["disconnection_reason"]) == ("error", "error_unknown")
    assert campaign.tasks(batch)[0]["status"] == "failed"
    campaign.assert_counters_exact(batch)
