"""Batch calls (campaigns): a batch, its tasks, and the rules that move them.

A batch is one `from_number` and one agent calling 1-1000 recipients (its tasks). Both are
plain JSON-able dicts; every function here is pure and returns new records, so a rule that
raises leaves the stored ones untouched. Storage applies a task's change and its batch's
together (`Store.change_batch_task`), which keeps the batch's counters exact: each counter
is the number of tasks in a state, moved by the difference a task change makes.

Statuses (stored lower case): draft -> scheduled -> sent -> completed | failed, as upstream;
this server adds paused (no new attempts) and cancelled (none ever again). A task is
pending -> calling -> completed | failed (or pending again while a retry waits), and
cancelled with its batch. Each attempt of a task is one ordinary call, whose id is derived
from the task and the attempt number, so that an attempt is recorded once however often a
process tries. The decisions where upstream is silent are documented in openapi.yaml
(BatchCall) and docs/batch-calls.md.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import orjson

from calls_server.domain import iso8601
from calls_server.domain.calls import Call
from calls_server.domain.errors import BadRequest, Conflict
from calls_server.domain.quiet_hours import QuietHours, local_time, next_local_time, zone

Batch = dict[str, Any]
Task = dict[str, Any]

INVALID = "Validation error"  # upstream's message for every refused batch request
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
MAX_VARIABLES_BYTES = 5 * 1024
# Below this a trigger_timestamp is in seconds, at or above it in milliseconds (upstream
# documents both units for the same field).
MILLISECONDS_FROM = 10**11
# Task states and the batch counter each one is counted in.
COUNTED = {
    "pending": "pending",
    "calling": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}
COUNTERS = ("sent", "picked_up", *COUNTED.values())
# Batches the dispatcher looks at; the others only change by request.
ACTIVE = frozenset({"scheduled", "sent", "paused"})
FINAL = frozenset({"completed", "failed", "cancelled"})
# With retry_config enabled and no rules given: these outcomes are tried again after this.
DEFAULT_RULES: tuple[dict[str, Any], ...] = tuple(
    {"condition": c, "enabled": True, "retry_timing": {"type": "AFTER", "duration_minutes": 30}}
    for c in ("no_answer", "busy", "failed")
)
DEFAULT_MAX_ATTEMPTS = 3
INTERRUPTED = "interrupted by a restart after the call was created; not dialed again"
CALL_DELETED = "the attempt's call was deleted before it ended"


# -- creating -------------------------------------------------------------------------------------
def new_batch_id() -> str:
    """`batch_call_<32 lowercase hex>`, as upstream's newest examples."""
    return f"batch_call_{uuid.uuid4().hex}"


def attempt_call_id(task_id: str, attempt: int) -> str:
    """The id of the call of `attempt` (1-based) of the task: the same in every process."""
    return f"call_{uuid.uuid5(uuid.NAMESPACE_URL, f'batch-task:{task_id}:{attempt}')}"


def new_batch(
    organization_id: str, body: Mapping[str, Any], now: int, agent_ids: Iterable[str]
) -> tuple[Batch, list[Task]]:
    """The batch and tasks a create body asks for. Raises BadRequest (message "Validation
    error") naming every offending task by index, and every other problem, at once."""
    batch_id = new_batch_id()
    batch: Batch = {
        "batch_call_id": batch_id,
        "organization_id": organization_id,
        "created_timestamp": now,
        "created_at": iso8601.utc(now),
        "execution_started_at": None,
        "last_sent_timestamp": None,
        "tasks_url": f"/batch-call/{batch_id}/tasks",
        "total_task_count": 0,
        "total": 0,
        **dict.fromkeys(COUNTERS, 0),
    }
    tasks = _settings(batch, body, now, agent_ids)
    return batch, tasks


def replaced(
    batch: Batch, body: Mapping[str, Any], now: int, agent_ids: Iterable[str]
) -> tuple[Batch, list[Task]]:
    """`batch` with a PUT body (a whole create body): settings and tasks replaced. Only a
    draft or scheduled batch (no task dialed yet) can be replaced."""
    if batch["status"] not in ("draft", "scheduled"):
        raise _invalid(f"Cannot update batch call with status {batch['status'].upper()}")
    new = copy.deepcopy(batch)
    for counter in ("total_task_count", "total", *COUNTERS):
        new[counter] = 0
    return new, _settings(new, body, now, agent_ids)


def _settings(
    batch: Batch, body: Mapping[str, Any], now: int, agent_ids: Iterable[str]
) -> list[Task]:
    """Apply a create (or PUT) body to `batch` (in place) and answer its tasks."""
    problems: list[str] = []
    from_number = body["from_number"]
    if not E164.match(from_number):
        problems.append(f"from_number {_show(from_number)} is not an E.164 number")
    agent_id = body["agent_id"]  # the handler fills in the from_number's agent
    if agent_id not in set(agent_ids):
        problems.append(f"agent_id '{agent_id}' is not an agent of this organization")
    timezone = body.get("timezone") or "UTC"
    problems += _checked(lambda: zone(timezone))
    problems += _checked(lambda: QuietHours.from_request(body.get("quiet_hours"), timezone))
    problems += _rule_problems(body.get("retry_rules") or [])
    problems += _task_problems(body["tasks"], from_number)
    trigger = _trigger(body.get("trigger_timestamp"))
    if trigger is not None and trigger <= now and not body.get("send_now"):
        problems.append(
            f"trigger_timestamp {body['trigger_timestamp']} is not in the future"
            f" (now is {now // 1000}, Unix seconds)"
        )
    if problems:
        raise _invalid("; ".join(problems))
    batch.update(
        name=body.get("name"),
        from_number=from_number,
        agent_id=agent_id,
        timezone=timezone,
        scheduled_timestamp=trigger,
        quiet_hours=copy.deepcopy(body.get("quiet_hours")),
        retry_config=copy.deepcopy(body.get("retry_config")),
        retry_rules=copy.deepcopy(body.get("retry_rules")),
        concurrency_limit=body.get("concurrency_limit"),
        updated_timestamp=now,
        updated_at=iso8601.utc(now),
    )
    batch["status"] = _initial_status(body, trigger)
    if batch["status"] == "sent":
        _started(batch, now)
    tasks = [_new_task(batch, index, task, now) for index, task in enumerate(body["tasks"])]
    batch["total_task_count"] = batch["total"] = batch["pending"] = len(tasks)
    return tasks


def _new_task(batch: Batch, index: int, given: Mapping[str, Any], now: int) -> Task:
    task: Task = {
        "task_id": f"task_{uuid.uuid4().hex}",
        "batch_call_id": batch["batch_call_id"],
        "organization_id": batch["organization_id"],
        "index": index,
        "to_number": given["to_number"],
        "dynamic_variables": copy.deepcopy(given.get("dynamic_variables") or {}),
        "max_retries": given.get("max_retries"),
        "status": "pending",
        "attempts": 0,
        "call_id": None,
        "call_ids": [],
        "outcome": None,
        "picked_up": False,
        "next_attempt_at": 0,  # as soon as the batch runs
        "claimed_by": None,
        "dialed": False,
        "error_message": None,
        "created_at": iso8601.utc(now),
        "updated_at": iso8601.utc(now),
    }
    return task


def _task_problems(tasks: list[Mapping[str, Any]], from_number: str) -> list[str]:
    problems: list[str] = []
    first_at: dict[str, int] = {}
    for index, task in enumerate(tasks):
        number = task["to_number"]
        if not E164.match(number):
            problems.append(f"tasks[{index}].to_number {_show(number)} is not an E.164 number")
        elif number == from_number:
            problems.append(f"tasks[{index}].to_number is the batch's from_number")
        elif number in first_at:
            problems.append(f"tasks[{index}].to_number {number} repeats tasks[{first_at[number]}]")
        else:
            first_at[number] = index
        size = len(orjson.dumps(task.get("dynamic_variables") or {}))
        if size > MAX_VARIABLES_BYTES:
            problems.append(
                f"tasks[{index}].dynamic_variables take {size} bytes,"
                f" more than {MAX_VARIABLES_BYTES}"
            )
    return problems


def _rule_problems(rules: list[Mapping[str, Any]]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        condition = rule["condition"].lower()
        if condition in seen:
            problems.append(f"retry_rules[{index}] repeats the condition '{condition}'")
        seen.add(condition)
        timing = rule["retry_timing"]
        if timing["type"].upper() == "AT":
            where = f"retry_rules[{index}].retry_timing.time"
            problems += _checked(partial(local_time, timing.get("time", ""), where))
        elif "duration_minutes" not in timing:
            problems.append(f"retry_rules[{index}].retry_timing needs duration_minutes")
    return problems


def _checked(check: Callable[[], object]) -> list[str]:
    try:
        check()
    except BadRequest as e:
        return [e.error]
    return []


def _trigger(value: int | None) -> int | None:
    """A trigger_timestamp in milliseconds (it may come in seconds)."""
    if value is None:
        return None
    return value * 1000 if value < MILLISECONDS_FROM else value


def _initial_status(body: Mapping[str, Any], trigger: int | None) -> str:
    """An explicit `status` wins; else send_now or no time -> sent; else scheduled."""
    asked = (body.get("status") or "").lower()
    if asked == "draft":
        return "draft"
    if asked == "scheduled" and trigger is None:
        raise _invalid("status 'scheduled' needs a trigger_timestamp in the future")
    if asked == "sent" or body.get("send_now") or trigger is None:
        return "sent"
    return "scheduled"


def _started(batch: Batch, now: int) -> None:
    batch["execution_started_at"] = batch["execution_started_at"] or iso8601.utc(now)


# -- requests that move a batch ------------------------------------------------------------------
def patched(batch: Batch, body: Mapping[str, Any], now: int, agent_ids: Iterable[str]) -> Batch:
    """`batch` with a PATCH body applied: only the fields sent change. A draft or scheduled
    batch may move to draft, scheduled (with a future trigger time) or sent; a running one
    may only be renamed or re-timezoned; a finished one not changed at all."""
    status = batch["status"]
    if status in FINAL or (
        status not in ("draft", "scheduled") and set(body) - {"name", "timezone"}
    ):
        only = "" if status in FINAL else ": only its name and timezone can change"
        raise _invalid(f"Cannot update batch call with status {status.upper()}{only}")
    if "agent_id" in body and body["agent_id"] not in set(agent_ids):
        raise _invalid(f"agent_id '{body['agent_id']}' is not an agent of this organization")
    if "timezone" in body:
        zone(body["timezone"])
    new = copy.deepcopy(batch)
    for field in ("name", "agent_id", "timezone"):
        if field in body:
            new[field] = body[field]
    if "trigger_timestamp" in body:
        trigger = _trigger(body["trigger_timestamp"])
        if trigger is not None and trigger <= now:
            raise _invalid(f"trigger_timestamp {body['trigger_timestamp']} is not in the future")
        new["scheduled_timestamp"] = trigger
    asked = "sent" if body.get("send_now") else (body.get("status") or status).lower()
    moved = "status" in body or "trigger_timestamp" in body
    if asked == "scheduled" and moved and (new["scheduled_timestamp"] or 0) <= now:
        raise _invalid("status 'scheduled' needs a trigger_timestamp in the future")
    new["status"] = asked
    if asked == "sent":
        _started(new, now)
    return _touched(new, now)


def executed(batch: Batch, now: int) -> Batch:
    """`batch` started now: only from draft or scheduled (upstream's rule and words)."""
    if batch["status"] not in ("draft", "scheduled"):
        raise _invalid(f"Cannot execute batch call with status {batch['status'].upper()}")
    new = copy.deepcopy(batch)
    new["status"] = "sent"
    _started(new, now)
    return _touched(new, now)


def check_deletable(batch: Batch) -> None:
    """Only draft and completed batches may be deleted (upstream), and cancelled ones once
    no call of theirs is under way."""
    status = batch["status"]
    if status in ("draft", "completed") or (status == "cancelled" and not batch["in_progress"]):
        return
    raise _invalid(f"Cannot delete batch call with status {status.upper()}")


def paused(batch: Batch, now: int) -> Batch:
    """`batch` making no new attempts (calls under way go on and are recorded)."""
    if batch["status"] != "sent":
        raise _invalid(f"Cannot pause batch call with status {batch['status'].upper()}")
    return _touched({**copy.deepcopy(batch), "status": "paused"}, now)


def resumed(batch: Batch, now: int) -> Batch:
    """A paused `batch` making attempts again."""
    if batch["status"] != "paused":
        raise _invalid(f"Cannot resume batch call with status {batch['status'].upper()}")
    return _touched({**copy.deepcopy(batch), "status": "sent"}, now)


def cancelled(batch: Batch, now: int) -> Batch:
    """`batch` making no attempt ever again; its pending tasks are cancelled (by the store,
    with `task_cancelled`), its calls under way go on and are recorded."""
    if batch["status"] not in ("scheduled", "sent", "paused"):
        raise _invalid(f"Cannot cancel batch call with status {batch['status'].upper()}")
    return _touched({**copy.deepcopy(batch), "status": "cancelled"}, now)


def task_cancelled(batch: Batch, task: Task, now: int) -> tuple[Batch, Task]:
    """A pending task of a cancelled batch, cancelled (others are left as they are)."""
    if task["status"] != "pending":
        return batch, task
    return _moved(batch, task, {"status": "cancelled", "next_attempt_at": None}, now)


def _touched(batch: Batch, now: int) -> Batch:
    batch["updated_timestamp"] = now
    batch["updated_at"] = iso8601.utc(now)
    return batch


def _invalid(error: str) -> BadRequest:
    return BadRequest(error, message=INVALID)


def _show(value: str) -> str:
    return orjson.dumps(value[:40]).decode()


# -- the dispatcher's rules ----------------------------------------------------------------------
def active(batch: Mapping[str, Any]) -> bool:
    """Whether the dispatcher has anything to do for `batch`: start it, dial its tasks, or
    follow its calls under way (a cancelled batch's too)."""
    return batch["status"] in ACTIVE or batch["in_progress"] > 0


def quiet_hours(batch: Batch) -> QuietHours | None:
    """The batch's quiet hours, if enabled (validated when the batch was stored)."""
    return QuietHours.from_request(batch.get("quiet_hours"), batch["timezone"])


def cap(batch: Batch, organization_cap: int) -> int:
    """How many of the batch's calls may be under way at once."""
    limit = batch.get("concurrency_limit")
    return min(limit, organization_cap) if limit else organization_cap


def started(batch: Batch, now: int) -> Batch:
    """A scheduled `batch` whose trigger time has come, sent."""
    if batch["status"] != "scheduled" or (batch["scheduled_timestamp"] or 0) > now:
        raise Conflict(f"Batch call '{batch['batch_call_id']}' is not due", message="Not due")
    return executed(batch, now)


def claimed(
    batch: Batch, task: Task, organization_calling: int, organization_cap: int, now: int, me: str
) -> tuple[Batch, Task]:
    """The task's next attempt claimed by process `me`, to be dialed by it right away.
    Raises Conflict when the task is not due, the batch is not sending, it is quiet time,
    or the batch or the organization has as many calls under way as allowed."""
    quiet = quiet_hours(batch)
    why = None
    if batch["status"] != "sent":
        why = f"the batch is {batch['status']}"
    elif task["status"] != "pending" or task["next_attempt_at"] > now:
        why = "the task is not due"
    elif quiet is not None and quiet.holds(now):
        why = "it is the batch's quiet hours"
    elif batch["in_progress"] >= cap(batch, organization_cap):
        why = "the batch has as many calls under way as allowed"
    elif organization_calling >= organization_cap:
        why = "the organization has as many batch calls under way as allowed"
    if why is not None:
        raise Conflict(f"Task '{task['task_id']}' not claimed: {why}", message="Not claimable")
    attempt = task["attempts"] + 1
    call_id = attempt_call_id(task["task_id"], attempt)
    changes = {
        "status": "calling",
        "attempts": attempt,
        "call_id": call_id,
        "call_ids": [*task["call_ids"], call_id],
        "claimed_by": me,
        "dialed": False,
        "next_attempt_at": None,
    }
    batch, task = _moved(batch, task, changes, now)
    batch["last_sent_timestamp"] = now
    return batch, task


def attempt_call(batch: Batch, task: Task, now: int) -> dict[str, Any]:
    """What `calls.new_call` takes for the claimed attempt's call: an ordinary outbound
    phone call carrying the batch and task in its metadata."""
    return {
        "organization_id": batch["organization_id"],
        "agent_id": batch["agent_id"],
        "now": now,
        "call_type": "phone_call",
        "call_id": task["call_id"],
        "direction": "outbound",
        "from_number": batch["from_number"],
        "to_number": task["to_number"],
        "metadata": {
            "batch_call_id": batch["batch_call_id"],
            "task_id": task["task_id"],
            "attempt": task["attempts"],
            "dynamic_variables": copy.deepcopy(task["dynamic_variables"]),
        },
        "event_name": "Phone call created by batch call",
        "event_data": {"batch_call_id": batch["batch_call_id"], "task_id": task["task_id"]},
    }


def dialed(
    batch: Batch, task: Task, call_id: str, accepted: bool, reason: str, now: int
) -> tuple[Batch, Task]:
    """The claimed attempt handed to the dialer: under way, or (refused) ended `failed`.
    The claimant stays on the task while the call is under way: a sandbox call ends with
    the process that plays it, so whoever follows the call must know which one that is."""
    _require_attempt(task, call_id)
    if task["dialed"]:
        raise Conflict(f"Task '{task['task_id']}' was recorded as dialed already")
    batch, task = _moved(batch, task, {"dialed": True}, now)
    if accepted:
        return batch, task
    return _attempt_ended(batch, task, "failed", now, reason)


def settled(batch: Batch, task: Task, call: Call, now: int) -> tuple[Batch, Task]:
    """The attempt whose call has ended, with its outcome: the task completed, failed, or
    pending again for a retry (retry rules, attempt limits, quiet hours)."""
    _require_attempt(task, call["call_id"])
    if call["call_status"] not in ("ended", "error"):
        raise Conflict(f"Call '{call['call_id']}' has not ended")
    ended_at = call.get("end_timestamp") or now
    return _attempt_ended(batch, task, outcome(call), ended_at, call.get("disconnection_reason"))


def released(batch: Batch, task: Task, claimant: str | None, now: int) -> tuple[Batch, Task]:
    """A claim whose process stopped before the attempt's call existed: never dialed, so
    the attempt is given back and made again."""
    _require_claim(task, claimant)
    changes = {
        "status": "pending",
        "attempts": task["attempts"] - 1,
        "call_id": task["call_ids"][-2] if len(task["call_ids"]) > 1 else None,
        "call_ids": task["call_ids"][:-1],
        "claimed_by": None,
        "next_attempt_at": now,
    }
    return _moved(batch, task, changes, now)


def reclaimed(
    batch: Batch, task: Task, claimant: str | None, me: str, now: int
) -> tuple[Batch, Task]:
    """A claim whose process stopped after creating the call but before recording the
    dial, taken over by process `me` to dial the same call again under the same
    Idempotency-Key (its id): only for a dialer that places one call per key. Being one
    conditional change, of several processes only one takes it over."""
    _require_claim(task, claimant)
    return _moved(batch, task, {"claimed_by": me}, now)


def interrupted(batch: Batch, task: Task, claimant: str | None, now: int) -> tuple[Batch, Task]:
    """A claim whose process stopped after creating the call but before recording the
    dial, when the dialer may place a second call for a second dial of the same key:
    whether it got the first is unknown, so it is not dialed again (at most once, as the
    scheduler's) and the task fails, for a person to settle."""
    _require_claim(task, claimant)
    batch, task = _moved(batch, task, {"dialed": True, "claimed_by": None}, now)
    return _final(batch, task, "failed", "failed", now, INTERRUPTED)


def call_gone(batch: Batch, task: Task, now: int) -> tuple[Batch, Task]:
    """The attempt whose call was deleted while under way: the task fails."""
    if task["status"] != "calling" or not task["dialed"]:
        raise Conflict(f"Task '{task['task_id']}' has no dialed call under way")
    return _final(batch, task, "failed", "failed", now, CALL_DELETED)


def outcome(call: Call) -> str:
    """What an ended call's attempt came to: `no_answer` or `busy` (by its
    disconnection_reason), `voicemail` (its analysis, or reason, says so), `failed` (in
    error otherwise), else `completed` (answered by a person)."""
    reason = (call.get("disconnection_reason") or "").lower()
    analysis = call.get("call_analysis") or {}
    if "no_answer" in reason:
        return "no_answer"
    if "busy" in reason:
        return "busy"
    if analysis.get("in_voicemail") is True or "voicemail" in reason:
        return "voicemail"
    if call["call_status"] == "error":
        return "failed"
    return "completed"


def _attempt_ended(
    batch: Batch, task: Task, result: str, ended_at: int, reason: str | None
) -> tuple[Batch, Task]:
    rule = _rule(batch, result)
    limit = _max_attempts(batch, task, rule)
    if result != "completed" and rule is not None and task["attempts"] < limit:
        due = _retry_at(batch, rule, ended_at)
        changes = {"status": "pending", "outcome": result, "next_attempt_at": due}
        changes["picked_up"] = task["picked_up"] or result == "voicemail"
        return _moved(batch, task, changes, ended_at)
    if result in ("completed", "voicemail") and rule is None:
        return _final(batch, task, "completed", result, ended_at, None)
    if rule is None:
        error = f"{result}: {reason or 'no reason given'} (no retry rule for '{result}')"
    else:
        error = f"{result} after {task['attempts']} attempts (at most {limit})"
    return _final(batch, task, "failed", result, ended_at, error)


def _final(
    batch: Batch, task: Task, status: str, result: str, now: int, error: str | None
) -> tuple[Batch, Task]:
    changes = {
        "status": status,
        "outcome": result,
        "error_message": error,
        "next_attempt_at": None,
        "picked_up": task["picked_up"] or result in ("completed", "voicemail"),
    }
    return _moved(batch, task, changes, now)


def _rule(batch: Batch, result: str) -> Mapping[str, Any] | None:
    """The enabled retry rule for `result`, when retries are on at all."""
    config = batch.get("retry_config") or {}
    if not config.get("enabled"):
        return None
    rules = batch.get("retry_rules")
    for rule in DEFAULT_RULES if rules is None else rules:
        if rule["condition"].lower() == result and rule.get("enabled", True):
            return rule
    return None


def _max_attempts(batch: Batch, task: Task, rule: Mapping[str, Any] | None) -> int:
    """All attempts a task may take, the first included: the task's `max_retries` + 1, else
    the rule's `max_attempts`, else retry_config's."""
    if task.get("max_retries") is not None:
        return int(task["max_retries"]) + 1
    if rule is not None and rule.get("max_attempts"):
        return int(rule["max_attempts"])
    config = batch.get("retry_config") or {}
    return int(config.get("max_attempts") or DEFAULT_MAX_ATTEMPTS)


def _retry_at(batch: Batch, rule: Mapping[str, Any], ended_at: int) -> int:
    """When the retry is due: AFTER n minutes, or the next local AT time; then past the
    quiet hours."""
    timing = rule["retry_timing"]
    quiet = quiet_hours(batch)
    where = quiet.zone if quiet is not None else zone(batch["timezone"])
    if timing["type"].upper() == "AT":
        due = next_local_time(ended_at, local_time(timing["time"], "time"), where)
    else:
        due = ended_at + int(timing["duration_minutes"]) * 60_000
    return quiet.next_allowed(due) if quiet is not None else due


def _require_attempt(task: Task, call_id: str) -> None:
    if task["status"] != "calling" or task["call_id"] != call_id:
        raise Conflict(
            f"Task '{task['task_id']}' is not waiting for call '{call_id}'",
            message="Attempt already recorded",
        )


def _require_claim(task: Task, claimant: str | None) -> None:
    if task["status"] != "calling" or task["dialed"] or task["claimed_by"] != claimant:
        raise Conflict(f"Task '{task['task_id']}' is no longer claimed by {claimant}")


def _moved(batch: Batch, task: Task, changes: Mapping[str, Any], now: int) -> tuple[Batch, Task]:
    """The task with `changes`, and its batch with the counters and status that follow."""
    new_task = {**copy.deepcopy(task), **copy.deepcopy(dict(changes))}
    new_task["updated_at"] = iso8601.utc(now)
    new_batch = copy.deepcopy(batch)
    before = _tally(task)
    for counter, moved in _tally(new_task).items():
        new_batch[counter] += moved - before[counter]
    if new_batch["status"] in ("sent", "paused") and not (
        new_batch["pending"] or new_batch["in_progress"]
    ):
        new_batch["status"] = "completed" if new_batch["completed"] else "failed"
    return _touched(new_batch, now), new_task


def _tally(task: Task) -> dict[str, int]:
    """What `task` adds to each counter of its batch."""
    counts = dict.fromkeys(COUNTERS, 0)
    counts[COUNTED[task["status"]]] = 1
    counts["sent"] = int(task["attempts"] > 0)
    counts["picked_up"] = int(task["picked_up"])
    return counts


# -- listing --------------------------------------------------------------------------------------
_SORT_KEYS = {
    "created_at": "created_timestamp",
    "updated_at": "updated_timestamp",
    "scheduled_timestamp": "scheduled_timestamp",
    "name": "name",
    "status": "status",
    "total_task_count": "total_task_count",
}


def matching(found: list[Batch], criteria: Mapping[str, list[str]]) -> list[Batch]:
    """The batches that match every criterion given: `status` and `agent_id` (any value
    listed, status in any case), `name` (any term, a case-insensitive substring)."""
    statuses = {s.lower() for s in criteria.get("status") or ()}
    agents = set(criteria.get("agent_id") or ())
    terms = [t.lower() for t in criteria.get("name") or ()]
    return [
        batch
        for batch in found
        if (not statuses or batch["status"] in statuses)
        and (not agents or batch["agent_id"] in agents)
        and (not terms or any(t in (batch["name"] or "").lower() for t in terms))
    ]


def sorted_batches(found: list[Batch], sort_by: str, sort_order: str) -> list[Batch]:
    """`found` in the order asked for; batches without a value of the sort field last in
    either order, ties by creation."""
    field = _SORT_KEYS[sort_by]
    valued = [b for b in found if b.get(field) is not None]
    unvalued = [b for b in found if b.get(field) is None]

    def key(batch: Batch) -> tuple[Any, ...]:
        value = batch[field]
        return (value.lower() if isinstance(value, str) else value, batch["created_timestamp"])

    valued.sort(key=key, reverse=sort_order == "descending")
    unvalued.sort(key=lambda b: b["created_timestamp"], reverse=sort_order == "descending")
    return valued + unvalued


def pagination(page: int, limit: int, total: int) -> dict[str, Any]:
    """A page's place among `total` items, as upstream's lists answer it."""
    pages = max(1, -(-total // limit)) if limit else 1
    return {
        "page": page,
        "limit": limit,
        "total_count": total,
        "total_pages": pages,
        "has_next_page": page + 1 < pages,
        "has_previous_page": page > 0,
    }
