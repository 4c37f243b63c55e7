"""Rules every store applies alike, stated once in the domain: what deleting a webhook does
to the agents it was assigned to, and the words of a record kind's errors."""

from __future__ import annotations

import pytest

from calls_server.domain import agents, record_kinds
from calls_server.domain.errors import AgentNotFound, DuplicateId


def agent(agent_id: str, *webhook_ids: str) -> agents.Agent:
    ids = list(webhook_ids)
    return {
        "agent_id": agent_id,
        "post_call_webhook_ids": ids,
        "post_call_webhook_id": ids[-1] if ids else None,
    }


def test_deleting_a_webhook_changes_only_the_agents_it_was_assigned_to():
    stored = [agent("a1", "w1", "w2"), agent("a2", "w2"), agent("a3")]

    changed = agents.without_webhook(stored, "w1")

    assert changed == [agent("a1", "w2")]


def test_an_agent_left_without_webhooks_has_no_current_webhook():
    changed = agents.without_webhook([agent("a1", "w1")], "w1")

    assert changed == [
        {"agent_id": "a1", "post_call_webhook_ids": [], "post_call_webhook_id": None}
    ]


def test_the_agents_given_are_not_changed_in_place():
    stored = [agent("a1", "w1")]

    agents.without_webhook(stored, "w1")

    assert stored == [agent("a1", "w1")]


@pytest.mark.parametrize(
    "kind",
    [
        record_kinds.CALL,
        record_kinds.ORGANIZATION,
        record_kinds.API_KEY,
        record_kinds.AGENT,
        record_kinds.PHONE_NUMBER,
        record_kinds.WEBHOOK,
        record_kinds.BATCH,
    ],
    ids=lambda kind: kind.name,
)
def test_every_kind_names_the_id_in_its_errors(kind):
    duplicate = kind.duplicate("the-id")
    missing = kind.not_found("org_1", "the-id")

    assert isinstance(duplicate, DuplicateId)
    assert duplicate.status_code == 409
    assert "'the-id'" in duplicate.error
    assert missing.status_code == 404
    assert "'the-id'" in missing.error


def test_an_agent_not_found_names_its_organization():
    missing = record_kinds.AGENT.not_found("org_1", "agent_1")

    assert isinstance(missing, AgentNotFound)
    assert missing.error == "Agent with ID 'agent_1' does not exist in organization 'org_1'"
