"""Agents: the voice agents calls are placed with, their configuration stored as given.

This server runs no model: an agent is a record. Upstream documents two shapes (a short one
on its hand-written pages, the full configuration on its generated pages); the full one is
stored, and shown with the short shape's fields beside it (`language`, `voice`,
`first_message`, `model`, `transcription_model`), which are also accepted as input and
mapped onto the full configuration. Keys this server does not know are kept as given.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Collection, Mapping
from typing import Any

from calls_server.domain import iso8601
from calls_server.domain.errors import BadRequest

Agent = dict[str, Any]

PREFIX = "agent_"
NAME_RULE = "agent_name must be 1-50 characters and not blank"
# Shown, never stored, never taken from a PATCH.
READ_ONLY = ("agent_id", "organization_id", "created_at", "updated_at")
# Kept by the assignment endpoints, not by create or PATCH.
MANAGED = ("post_call_webhook_id", "post_call_webhook_ids")
# Nested configuration a PATCH merges key by key instead of replacing.
MERGED = ("llm_config", "tts_config", "stt_config", "rag_config")
SUMMARY = ("agent_id", "agent_name", "language", "created_at", "updated_at")

# A new agent's configuration, from upstream's examples.
DEFAULTS: dict[str, Any] = {
    "begin_message": None,
    "begin_message_variables": [],
    "begin_message_delay_ms": 1000,
    "test_variables": {},
    "webhook_url": None,
    "post_call_webhook_id": None,
    "post_call_webhook_ids": [],
    "end_call_after_silence_ms": 60000,
    "max_call_duration_ms": 3600000,
    "take_turn_after_silence_seconds": 6,
    "timezone": "UTC",
    "knowledge_base_ids": [],
    "mcp_server_ids": [],
    "rag_config": {"chunks_to_retrieve": 10, "similarity_threshold": 0.7},
    "llm_config": {
        "system_message": None,
        "temperature": 0.7,
        "max_tokens": 1000,
        "tools": [],
        "system_message_variables": [],
    },
    "stt_config": {"language": "en", "language_name": None, "use_realtime": True},
    "tts_config": {
        "voice_id": None,
        "voice_speed": 1,
        "language": "en",
        "language_name": None,
        "pronunciation_dictionary_ids": [],
        "provider": None,
        "model": None,
        "custom_api_url": None,
        "custom_api_key": None,
        "custom_secret_key": None,
        "custom_timeout": None,
        "custom_streaming": None,
        "custom_sample_rate": None,
    },
    "model": None,
    "transcription_model": None,
    "post_call_analysis_data": [],
    "post_call_analysis_model": None,
    "post_call_evaluation_criteria": [],
    "widget_config": {},
    "additional_languages": [],
    "access_info": {},
}


def agent_id(path_id: str) -> str:
    """The id an `{agentId}` path segment names: upstream adds the `agent_` prefix when the
    path leaves it out."""
    return path_id if path_id.startswith(PREFIX) else PREFIX + path_id


def new_agent(organization_id: str, fields: Mapping[str, Any], now: int) -> Agent:
    """A new agent of `organization_id` configured by `fields` (a create body)."""
    created = iso8601.utc(now)
    agent = {
        "agent_id": f"{PREFIX}{uuid.uuid4()}",
        "organization_id": organization_id,
        "created_at": created,
        "updated_at": created,
        **copy.deepcopy(DEFAULTS),
    }
    return _configured(agent, fields)


def patched(agent: Agent, fields: Mapping[str, Any], now: int) -> Agent:
    """`agent` with a PATCH body applied: fields replaced, nested configuration merged."""
    updated = _configured(copy.deepcopy(agent), fields)
    updated["updated_at"] = iso8601.utc(now)
    return updated


def duplicated(agent: Agent, name: str, now: int) -> Agent:
    """A copy of `agent`, every setting included, under a new id and `name`."""
    copied = {k: v for k, v in copy.deepcopy(agent).items() if k not in READ_ONLY}
    duplicate = new_agent(agent["organization_id"], {**copied, "agent_name": name}, now)
    return {**duplicate, **{key: copied[key] for key in MANAGED if key in copied}}


def view(agent: Agent) -> Agent:
    """An agent as the API shows it: its configuration, and the short shape's fields."""
    tts = agent.get("tts_config") or {}
    return {
        **agent,
        "language": (agent.get("stt_config") or {}).get("language"),
        "voice": {"provider": tts.get("provider"), "voice_id": tts.get("voice_id")},
        "first_message": agent.get("begin_message"),
    }


def summary(agent: Agent) -> Agent:
    """An agent as listed."""
    shown = view(agent)
    return {key: shown[key] for key in SUMMARY}


def _configured(agent: Agent, fields: Mapping[str, Any]) -> Agent:
    given = {k: copy.deepcopy(v) for k, v in fields.items() if k not in READ_ONLY + MANAGED}
    # The short shape's fields, mapped onto the full configuration.
    if "language" in given:
        language = given.pop("language")
        agent["stt_config"] = {**(agent.get("stt_config") or {}), "language": language}
        agent["tts_config"] = {**(agent.get("tts_config") or {}), "language": language}
    if "voice" in given:
        voice = given.pop("voice") or {}
        agent["tts_config"] = {**(agent.get("tts_config") or {}), **voice}
    if "first_message" in given:
        given.setdefault("begin_message", given.pop("first_message"))
    for key, value in given.items():
        if key in MERGED and isinstance(value, dict) and isinstance(agent.get(key), dict):
            agent[key] = {**agent[key], **value}
        else:
            agent[key] = value
    name = agent.get("agent_name")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 50:
        raise BadRequest(NAME_RULE, message="Validation error")
    agent["agent_name"] = name.strip()
    return agent


def assigned(agent: Agent, webhook_id: str) -> Agent:
    """`agent` with the webhook assigned (again: no duplicate), now its latest one."""
    ids = [i for i in agent.get("post_call_webhook_ids", []) if i != webhook_id]
    return {
        **agent,
        "post_call_webhook_ids": [*ids, webhook_id],
        "post_call_webhook_id": webhook_id,
    }


def unassigned(agent: Agent, webhook_ids: Collection[str]) -> Agent:
    """`agent` without the `webhook_ids` assigned to it."""
    ids = [i for i in agent.get("post_call_webhook_ids", []) if i not in webhook_ids]
    return {**agent, "post_call_webhook_ids": ids, "post_call_webhook_id": ids[-1] if ids else None}


def without_webhook(agents: list[Agent], webhook_id: str) -> list[Agent]:
    """The agents among `agents` that a deleted webhook was assigned to, as they are without
    it: what deleting a webhook changes besides the webhook and its events (every store
    applies this in the delete's own write)."""
    return [unassigned(a, [webhook_id]) for a in agents if webhook_id in webhook_ids(a)]


def webhook_ids(agent: Agent | None) -> list[str]:
    """The webhooks assigned to `agent` (none for an agent this server does not hold)."""
    return list((agent or {}).get("post_call_webhook_ids", []))


def total_tools(agent: Agent) -> int:
    """Upstream's count of an agent's tools: its LLM tools and its post-call webhooks."""
    return len((agent.get("llm_config") or {}).get("tools") or []) + len(webhook_ids(agent))


def selected(
    agents: list[Agent], sort_by: str, descending: bool, names: list[str] | None = None
) -> list[Agent]:
    """`agents` whose name contains any of `names` (any case; all without `names`), sorted."""
    terms = [term.lower() for term in names or []]
    found = [a for a in agents if not terms or any(t in a["agent_name"].lower() for t in terms)]
    return sorted(found, key=lambda agent: agent[sort_by], reverse=descending)
