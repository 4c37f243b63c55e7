"""Fixtures: an organization's records as `exportSandboxState` answers them and
`loadSandboxState` takes them, and what a fixture must be to be loaded.

A fixture is checked whole before anything of it is written, so that a load is all or
nothing, and so that nothing loaded is a record the rest of the server cannot read (a
call the listing's indexes cannot sort, a batch the dispatcher cannot follow): a 400 then,
never a 500 later. Only the fields the server reads are checked (`_FIELDS`); every other
field is kept as given.

References are checked where the API checks them when a record is written: a phone number's
agents, a batch's agent and an agent's webhooks must be among the fixture's records or the
organization's. A call's `agent_id` is not: the API takes any agent id for a call
(`createCall`), so calls naming agents the organization does not hold are ordinary, and an
organization exported with them must load again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from calls_server.domain import agents, batches, calls, record_kinds
from calls_server.domain.batches import Batch, Task
from calls_server.domain.calls import Call
from calls_server.domain.errors import BadRequest
from calls_server.domain.quiet_hours import QuietHours, zone

Fixture = dict[str, Any]
# How many records of each kind (KINDS): what a load added, a reset removed.
Counts = dict[str, int]

VERSION = 1
# The kinds of record a fixture holds, in the order they are loaded (each may name the
# ones before it).
KINDS = ("agents", "phone_numbers", "webhooks", "calls", "batch_calls")
# The id field of each kind's records.
ID_FIELDS = {
    "agents": record_kinds.AGENT.key,
    "phone_numbers": record_kinds.PHONE_NUMBER.key,
    "webhooks": record_kinds.WEBHOOK.key,
    "calls": record_kinds.CALL.key,
    "batch_calls": record_kinds.BATCH.key,
    "tasks": "task_id",
}
# The problems a refusal lists, at most (a fixture of 100,000 broken calls is one 400 of a
# readable size).
SHOWN_PROBLEMS = 20
# What a stored integer must fit: PostgreSQL's bigint columns.
_INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True)
class Records:
    """A fixture's records, checked, each made the target organization's: what a store
    adds. `batch_calls` are each (batch, its tasks in the batch's order)."""

    agents: list[agents.Agent]
    phone_numbers: list[dict[str, Any]]
    webhooks: list[dict[str, Any]]
    calls: list[Call]
    batch_calls: list[tuple[Batch, list[Task]]]

    def counts(self) -> Counts:
        """How many records of each kind."""
        return {kind: len(getattr(self, kind)) for kind in KINDS}


def exported(
    agents_: list[dict[str, Any]],
    phone_numbers: list[dict[str, Any]],
    webhooks: list[dict[str, Any]],
    calls_: list[Call],
    batch_calls: list[tuple[Batch, list[Task]]],
) -> Fixture:
    """An organization's records (each kind oldest first, tasks in their batch's order) as a
    fixture of this VERSION."""
    return {
        "version": VERSION,
        "agents": agents_,
        "phone_numbers": phone_numbers,
        "webhooks": webhooks,
        "calls": calls_,
        "batch_calls": [{"batch_call": batch, "tasks": tasks} for batch, tasks in batch_calls],
    }


def counts(held: Mapping[str, Collection[str]]) -> Counts:
    """How many records of each kind `held` (ids by kind) names."""
    return {kind: len(held.get(kind, ())) for kind in KINDS}


def loadable(
    organization_id: str, fixture: Mapping[str, Any], held: Mapping[str, Collection[str]]
) -> Records:
    """The records of `fixture`, made `organization_id`'s (ids kept), if it can be loaded
    into that organization, which holds the ids `held` (by kind, KINDS). Raises BadRequest
    naming each record that cannot be (up to SHOWN_PROBLEMS of them): one that is not an
    object or lacks its id; whose id the organization or the fixture holds already; that
    names an agent or webhook neither has, or a field the server reads with a value it
    cannot read; a task of another batch."""
    problems: list[str] = []
    if fixture.get("version") != VERSION:
        problems.append(f"version must be {VERSION}, not {fixture.get('version')!r}")
    found = {kind: _records(fixture, kind, problems) for kind in KINDS if kind != "batch_calls"}
    batch_calls = _batch_calls(fixture, problems)
    found["batch_calls"] = [(name, batch) for name, batch, _ in batch_calls]
    ids: dict[str, set[str]] = {}
    for kind in KINDS:
        ids[kind] = _unique(kind, found[kind], set(held.get(kind, ())), problems)
    known_agents = ids["agents"] | set(held.get("agents", ()))
    known_webhooks = ids["webhooks"] | set(held.get("webhooks", ()))
    for name, agent in found["agents"]:
        if not agent[ID_FIELDS["agents"]].startswith(agents.PREFIX):
            problems.append(f"{name}: agent_id does not begin with '{agents.PREFIX}'")
        for webhook_id in agent.get("post_call_webhook_ids") or ():
            if webhook_id not in known_webhooks:
                problems.append(f"{name}: webhook '{webhook_id}' is {_NEITHER}")
    for name, number in found["phone_numbers"]:
        for field in ("inbound_agent_id", "outbound_agent_id"):
            agent_id = number.get(field)
            if agent_id is not None and agent_id not in known_agents:
                problems.append(f"{name}: {field} '{agent_id}' is {_NEITHER}")
    for name, batch, tasks in batch_calls:
        if batch["agent_id"] not in known_agents:
            problems.append(f"{name}: agent_id '{batch['agent_id']}' is {_NEITHER}")
        problems += _task_problems(name, batch, tasks)
    if problems:
        raise BadRequest(_listed(problems), message="Validation error")
    return Records(
        # An agent's configuration left out takes the defaults createAgent gives (a fixture
        # written by hand need not spell it out); an exported agent has every field.
        agents=[
            _owned({**copy.deepcopy(agents.DEFAULTS), **agent}, organization_id)
            for _, agent in found["agents"]
        ],
        phone_numbers=[_owned(number, organization_id) for _, number in found["phone_numbers"]],
        webhooks=[_owned(hook, organization_id) for _, hook in found["webhooks"]],
        calls=[_owned(call, organization_id) for _, call in found["calls"]],
        batch_calls=[
            (_owned(batch, organization_id), [_owned(task, organization_id) for _, task in tasks])
            for _, batch, tasks in batch_calls
        ],
    )


_NEITHER = "neither in the fixture nor the organization's"

# What a value must be: its JSON type, and whether null will do.
_Check = tuple[str, Callable[[Any], bool]]


def _is_int(value: Any) -> bool:
    return type(value) is int and value in _INT64


def _nullable(check: _Check) -> _Check:
    what, test = check
    return f"{what} or null", lambda value: value is None or test(value)


_TEXT: _Check = ("a string", lambda value: isinstance(value, str))
_INTEGER: _Check = ("a 64-bit integer", _is_int)
_BOOLEAN: _Check = ("a boolean", lambda value: isinstance(value, bool))
_OBJECT: _Check = ("an object", lambda value: isinstance(value, dict))
_LIST: _Check = ("a list", lambda value: isinstance(value, list))
_TEXTS: _Check = (
    "a list of strings",
    lambda value: isinstance(value, list) and all(isinstance(v, str) for v in value),
)
_OBJECTS: _Check = (
    "a list of objects",
    lambda value: isinstance(value, list) and all(isinstance(v, dict) for v in value),
)
_EVENTS: _Check = (
    "a list of events ({event: string, data: object, ...})",
    lambda value: (
        isinstance(value, list)
        and all(
            isinstance(e, dict)
            and isinstance(e.get("event"), str)
            and isinstance(e.get("data"), dict)
            for e in value
        )
    ),
)


def _one_of(values: Collection[str]) -> _Check:
    return f"one of {', '.join(sorted(values))}", lambda value: value in values


# The fields of each kind the server reads (sorts and indexes on, keeps in columns, reads
# with no default), with what each must be; a field marked optional may be left out. Every
# other field is kept as given.
_FIELDS: dict[str, dict[str, tuple[_Check, bool]]] = {
    "agents": {
        "agent_name": (_TEXT, True),
        "created_at": (_TEXT, True),
        "updated_at": (_TEXT, True),
        "post_call_webhook_ids": (_TEXTS, False),
        "llm_config": (_nullable(_OBJECT), False),
        "stt_config": (_nullable(_OBJECT), False),
        "tts_config": (_nullable(_OBJECT), False),
    },
    "phone_numbers": {
        "nickname": (_nullable(_TEXT), True),
        "area_code": (_nullable(_INTEGER), True),
        "updated_at": (_TEXT, True),
        "inbound_agent_id": (_nullable(_TEXT), False),
        "outbound_agent_id": (_nullable(_TEXT), False),
    },
    "webhooks": {
        "name": (_TEXT, True),
        "url": (_TEXT, True),
        "is_active": (_BOOLEAN, True),
        "secret": (_TEXT, True),
        "status_events": (_BOOLEAN, False),
    },
    "calls": {
        "call_status": (_one_of(calls.TRANSITIONS), True),
        "call_type": (_nullable(_TEXT), True),
        "direction": (_nullable(_TEXT), True),
        "agent_id": (_nullable(_TEXT), True),
        "disconnection_reason": (_nullable(_TEXT), True),
        "created_at": (_INTEGER, True),
        "updated_at": (_nullable(_INTEGER), True),
        "scheduled_timestamp": (_nullable(_INTEGER), True),
        "start_timestamp": (_nullable(_INTEGER), True),
        "end_timestamp": (_nullable(_INTEGER), True),
        "call_duration": (_nullable(_INTEGER), True),
        "metadata": (_OBJECT, True),
        "events": (_EVENTS, True),
        "transcript": (_nullable(_TEXT), True),
        "transcript_object": (_OBJECTS, True),
    },
    "batch_calls": {
        "status": (_one_of({"draft", *batches.ACTIVE, *batches.FINAL}), True),
        "name": (_nullable(_TEXT), True),
        "agent_id": (_TEXT, True),
        "from_number": (_TEXT, True),
        "timezone": (_TEXT, True),
        "created_timestamp": (_INTEGER, True),
        "updated_timestamp": (_nullable(_INTEGER), False),
        "scheduled_timestamp": (_nullable(_INTEGER), True),
        "total_task_count": (_INTEGER, True),
        "concurrency_limit": (_nullable(_INTEGER), False),
        "quiet_hours": (_nullable(_OBJECT), False),
        "retry_rules": (_nullable(_OBJECTS), False),
        **{counter: (_INTEGER, True) for counter in batches.COUNTERS},
    },
    "tasks": {
        "batch_call_id": (_TEXT, True),
        "index": (_INTEGER, True),
        "status": (_one_of(batches.COUNTED), True),
        "to_number": (_TEXT, True),
        "attempts": (_INTEGER, True),
        "picked_up": (_BOOLEAN, True),
        "call_ids": (_TEXTS, True),
        "next_attempt_at": (_nullable(_INTEGER), True),
        "claimed_by": (_nullable(_TEXT), True),
    },
}


def _records(
    fixture: Mapping[str, Any], kind: str, problems: list[str]
) -> list[tuple[str, dict[str, Any]]]:
    """The well-formed records of `kind` in `fixture`, each with its name for messages
    (`calls[3] 'call_x'`); the others' problems added to `problems`."""
    listed = fixture.get(kind) or []
    if not isinstance(listed, list):
        problems.append(f"{kind} must be a list")
        return []
    found = []
    for index, record in enumerate(listed):
        name = f"{kind}[{index}]"
        shape = _shape_problems(kind, name, record)
        if shape:
            problems += shape
        else:
            found.append((f"{name} '{record[ID_FIELDS[kind]]}'", record))
    return found


def _shape_problems(kind: str, name: str, record: Any) -> list[str]:
    """What is wrong with `record` (named `name`) as a record of `kind`."""
    if not isinstance(record, dict):
        return [f"{name} is not an object"]
    key = ID_FIELDS[kind]
    if not isinstance(record.get(key), str) or not record[key]:
        return [f"{name} has no {key} (a non-empty string)"]
    named = f"{name} '{record[key]}'"
    problems = []
    for field, ((what, test), required) in _FIELDS[kind].items():
        if field not in record:
            if required:
                problems.append(f"{named} has no {field}")
        elif not test(record[field]):
            problems.append(f"{named}: {field} must be {what}")
    if problems:
        return problems
    return _kind_problems(kind, named, record)


def _kind_problems(kind: str, named: str, record: dict[str, Any]) -> list[str]:
    """What is wrong with a record of the right field types, by its kind's own rules."""
    problems = []
    if kind == "calls":
        if record["call_status"] == "scheduled" and record["scheduled_timestamp"] is None:
            problems.append(f"{named}: a scheduled call needs its scheduled_timestamp")
        try:
            calls.check_size(record["call_id"], len(orjson.dumps(record)))
        except BadRequest as e:
            problems.append(f"{named}: {e.error}")
    if kind == "batch_calls":
        try:
            zone(record["timezone"])
            QuietHours.from_request(record.get("quiet_hours"), record["timezone"])
        except BadRequest as e:
            problems.append(f"{named}: {e.error}")
    if kind == "tasks" and record["status"] == "pending" and record["next_attempt_at"] is None:
        problems.append(f"{named}: a pending task needs its next_attempt_at")
    return problems


def _batch_calls(
    fixture: Mapping[str, Any], problems: list[str]
) -> list[tuple[str, Batch, list[tuple[str, Task]]]]:
    """The well-formed batch calls of `fixture`: (name, batch, its named tasks)."""
    listed = fixture.get("batch_calls") or []
    if not isinstance(listed, list):
        problems.append("batch_calls must be a list")
        return []
    found = []
    for index, entry in enumerate(listed):
        name = f"batch_calls[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("tasks"), list):
            problems.append(f"{name} is not an object {{batch_call, tasks: [...]}}")
            continue
        shape = _shape_problems("batch_calls", f"{name}.batch_call", entry.get("batch_call"))
        tasks = []
        for position, task in enumerate(entry["tasks"]):
            task_name = f"{name}.tasks[{position}]"
            task_shape = _shape_problems("tasks", task_name, task)
            shape += task_shape
            if not task_shape:
                tasks.append((f"{task_name} '{task['task_id']}'", task))
        if shape:
            problems += shape
        else:
            batch = entry["batch_call"]
            found.append((f"{name}.batch_call '{batch['batch_call_id']}'", batch, tasks))
    return found


def _unique(
    kind: str, named: list[tuple[str, dict[str, Any]]], held: set[str], problems: list[str]
) -> set[str]:
    """The ids of `named` records; each one the organization holds (`held`) or an earlier
    record of the fixture has is a problem."""
    key = ID_FIELDS[kind]
    seen: dict[str, str] = {}
    for name, record in named:
        record_id = record[key]
        if record_id in held:
            problems.append(f"{name}: the organization has this {_KIND_NAMES[kind]} already")
        elif record_id in seen:
            problems.append(f"{name}: its id repeats {seen[record_id]}")
        seen.setdefault(record_id, name)
    return set(seen)


_KIND_NAMES = {
    "agents": record_kinds.AGENT.name,
    "phone_numbers": record_kinds.PHONE_NUMBER.name,
    "webhooks": record_kinds.WEBHOOK.name,
    "calls": record_kinds.CALL.name,
    "batch_calls": record_kinds.BATCH.name,
}


def _task_problems(name: str, batch: Batch, tasks: list[tuple[str, Task]]) -> list[str]:
    """A batch's tasks must be its own, each with an id and an index of its own."""
    problems = []
    task_ids: dict[str, str] = {}
    indexes: dict[int, str] = {}
    for task_name, task in tasks:
        if task["batch_call_id"] != batch["batch_call_id"]:
            problems.append(
                f"{task_name}: a task of batch call '{task['batch_call_id']}', not of {name}"
            )
        for found, value in ((task_ids, task["task_id"]), (indexes, task["index"])):
            if value in found:
                field = "task_id" if found is task_ids else "index"
                problems.append(f"{task_name}: its {field} repeats {found[value]}")
            found.setdefault(value, task_name)
    return problems


def _owned(record: dict[str, Any], organization_id: str) -> dict[str, Any]:
    """`record`, the organization's."""
    return {**record, "organization_id": organization_id}


def _listed(problems: list[str]) -> str:
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "") + ": nothing was loaded"
