"""domain/fixtures.py: what a fixture must be to be loaded, checked before anything is
written (the stores' contract tests and tests/api/test_sandbox_state.py load them)."""

from __future__ import annotations

import pytest

from calls_server.domain import agents, batches, calls, fixtures
from calls_server.domain.errors import BadRequest

NOTHING_HELD: dict[str, set[str]] = {}


def refusal(fixture: dict, held: dict[str, set[str]] = NOTHING_HELD) -> str:
    with pytest.raises(BadRequest) as refused:
        fixtures.loadable("acme", {"version": 1, **fixture}, held)
    assert refused.value.message == "Validation error"
    error: str = refused.value.error
    assert error.endswith(": nothing was loaded")
    return error


def a_call(call_id: str = "c1", **fields) -> dict:
    call = calls.new_call(organization_id="x", agent_id="a", now=1, call_type="phone_call")
    return {**call, "call_id": call_id, **fields}


def a_batch(**fields) -> tuple[dict, list[dict]]:
    body = {
        "from_number": "+14155550100",
        "agent_id": "agent_a",
        "tasks": [{"to_number": "+14155550101"}, {"to_number": "+14155550102"}],
    }
    batch, tasks = batches.new_batch("x", body, 1, ["agent_a"])
    return {**batch, **fields}, tasks


def test_every_record_is_made_the_target_organizations():
    loaded = fixtures.loadable("acme", {"version": 1, "calls": [a_call()]}, NOTHING_HELD)

    assert [call["organization_id"] for call in loaded.calls] == ["acme"]


def test_an_agent_left_without_its_configuration_takes_the_defaults():
    agent = {"agent_id": "agent_a", "agent_name": "A", "created_at": "t", "updated_at": "t"}

    loaded = fixtures.loadable("acme", {"version": 1, "agents": [agent]}, NOTHING_HELD)

    assert loaded.agents == [{**agents.DEFAULTS, **agent, "organization_id": "acme"}]


def test_a_record_that_is_not_an_object_is_named():
    assert refusal({"calls": [a_call(), 7]}).startswith("calls[1] is not an object")


def test_an_agent_id_without_its_prefix_is_refused_it_could_not_be_fetched():
    agent = {"agent_id": "support", "agent_name": "A", "created_at": "t", "updated_at": "t"}

    assert "agents[0] 'support': agent_id does not begin with 'agent_'" in refusal(
        {"agents": [agent]}
    )


def test_a_scheduled_call_without_its_time_is_refused():
    call = a_call(call_status="scheduled", scheduled_timestamp=None)

    assert "a scheduled call needs its scheduled_timestamp" in refusal({"calls": [call]})


def test_a_boolean_is_no_integer():
    assert "created_at must be a 64-bit integer" in refusal({"calls": [a_call(created_at=True)]})


def test_a_batch_in_an_unknown_time_zone_is_refused():
    batch, tasks = a_batch(timezone="Mars/Olympus")
    fixture = {"agents": [], "batch_calls": [{"batch_call": batch, "tasks": tasks}]}

    assert "Unknown time zone 'Mars/Olympus'" in refusal(fixture, {"agents": {"agent_a"}})


def test_tasks_repeating_an_index_are_refused():
    batch, tasks = a_batch()
    tasks[1]["index"] = 0
    fixture = {"batch_calls": [{"batch_call": batch, "tasks": tasks}]}

    error = refusal(fixture, {"agents": {"agent_a"}})

    assert "batch_calls[0].tasks[1] '" in error
    assert "its index repeats batch_calls[0].tasks[0]" in error


def test_a_refusal_names_the_first_problems_and_counts_the_rest():
    broken = [a_call(f"c{n}", call_status="lost") for n in range(fixtures.SHOWN_PROBLEMS + 10)]

    error = refusal({"calls": broken})

    assert error.count("call_status must be one of") == fixtures.SHOWN_PROBLEMS
    assert error.endswith("; and 10 more: nothing was loaded")
