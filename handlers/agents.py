"""Handlers of the `agents` tag: the organization's voice agents."""

from __future__ import annotations

from typing import Any

from calls_server.domain import agents, webhooks
from calls_server.domain.envelope import Envelope, success
from calls_server.domain.errors import BadRequest, NotFound
from calls_server.domain.listing import pagination
from calls_server.handlers.idempotency import idempotent
from calls_server.handlers.scope import organization_id, reads, services

Response = tuple[Envelope, int]


@reads
def list_agents(token_info: dict[str, Any], **params: Any) -> Response:
    """GET /api/agents"""
    return _list(token_info, params, names=None)


@reads
def search_agents(token_info: dict[str, Any], body: dict[str, Any] | None = None) -> Response:
    """POST /api/agents: the criteria come in the body."""
    criteria = body or {}
    names = (criteria.get("filter_criteria") or {}).get("agent_name")
    return _list(token_info, criteria, names=[names] if isinstance(names, str) else names)


def _list(
    token_info: dict[str, Any], criteria: dict[str, Any], names: list[str] | None
) -> Response:
    org = organization_id(token_info)
    page, limit = criteria.get("page", 0), criteria.get("limit", 20)
    sort_by, sort_order = (
        criteria.get("sort_by", "updated_at"),
        criteria.get("sort_order", "descending"),
    )
    found = agents.selected(
        services().store.list_agents(org), sort_by, sort_order == "descending", names
    )
    shown = [agents.summary(agent) for agent in found[page * limit : (page + 1) * limit]]
    data = {
        "organization_id": org,
        "agents": shown,
        "pagination": pagination(page, limit, len(found)),
        "returned_count": len(shown),
        "sort_order": sort_order,
        "sort_by": sort_by,
    }
    return success("Agents retrieved successfully", data), 200


def _recover_agent(agent_id: str, token_info: dict[str, Any], **_: Any) -> Response:
    """createAgent's answer for an agent stored by a request whose answer was lost."""
    agent = services().store.get_agent(organization_id(token_info), agent_id)
    return success("Agent created successfully", agents.view(agent)), 200


@idempotent(_recover_agent)
def create_agent(body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """POST /api/agents/create"""
    agent = agents.new_agent(organization_id(token_info), body, services().clock())
    services().store.add_agent(agent)
    return success("Agent created successfully", agents.view(agent)), 200


@reads
def get_agent_full(agent_id: str, token_info: dict[str, Any]) -> Response:
    """GET /api/agents/{agent_id}/full"""
    agent = services().store.get_agent(organization_id(token_info), agents.agent_id(agent_id))
    return success("Full agent data retrieved successfully", agents.view(agent)), 200


get_agent = get_agent_full  # GET /api/agents/{agent_id}: upstream documents only /full


def update_agent(agent_id: str, body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """PATCH /api/agents/{agent_id}"""
    now = services().clock()
    agent = services().store.change_agent(
        organization_id(token_info),
        agents.agent_id(agent_id),
        lambda stored: agents.patched(stored, body, now),
    )
    return success("Agent updated successfully", agents.view(agent)), 200


def delete_agent(agent_id: str, token_info: dict[str, Any]) -> Response:
    """DELETE /api/agents/{agent_id}"""
    org = organization_id(token_info)
    agent = services().store.delete_agent(org, agents.agent_id(agent_id))
    data = {"agent_id": agent["agent_id"], "organization_id": org}
    return success("Agent deleted successfully", data), 200


def duplicate_agent(agent_id: str, body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """POST /api/agents/{agent_id}/duplicate"""
    org, store = organization_id(token_info), services().store
    original = store.get_agent(org, agents.agent_id(agent_id))
    copy = agents.duplicated(original, body["agent_name"], services().clock())
    store.add_agent(copy)
    return success("Agent duplicated successfully", agents.view(copy)), 200


# -- post-call webhooks assigned to an agent ----------------------------------------------------


def assign_post_call_webhook(
    agent_id: str, body: dict[str, Any], token_info: dict[str, Any]
) -> Response:
    """POST /api/agents/{agent_id}/tools/post-call-webhook/assign"""
    org, store = organization_id(token_info), services().store
    hook = store.get_webhook(org, body["webhook_id"])
    if not hook["is_active"]:
        raise BadRequest(f"Webhook '{hook['id']}' is not active", message="Validation error")
    agent = store.change_agent(
        org, agents.agent_id(agent_id), lambda stored: agents.assigned(stored, hook["id"])
    )
    data = {
        "agent_id": agent["agent_id"],
        "webhook_id": hook["id"],
        "webhook_name": hook["name"],
        "webhook_url": hook["url"],
        "webhook_tool": webhooks.tool(hook),
        "total_tools": agents.total_tools(agent),
    }
    return success("Post-call webhook assigned successfully", data), 200


@reads
def list_post_call_webhook_tools(agent_id: str, token_info: dict[str, Any]) -> Response:
    """GET /api/agents/{agent_id}/tools/post-call-webhook"""
    org, store = organization_id(token_info), services().store
    agent = store.get_agent(org, agents.agent_id(agent_id))
    hooks = {hook["id"]: hook for hook in store.list_webhooks(org)}
    tools = [webhooks.tool(hooks[i]) for i in agents.webhook_ids(agent) if i in hooks]
    data = {
        "agent_id": agent["agent_id"],
        "agent_name": agent["agent_name"],
        "post_call_webhook_tools": tools,
        "count": len(tools),
    }
    return success("Post-call webhook tools retrieved successfully", data), 200


def remove_post_call_webhook(
    agent_id: str, webhook_id: str, token_info: dict[str, Any]
) -> Response:
    """DELETE /api/agents/{agent_id}/tools/post-call-webhook/{webhook_id}"""
    org, store = organization_id(token_info), services().store
    agent = store.get_agent(org, agents.agent_id(agent_id))
    if webhook_id not in agents.webhook_ids(agent):
        raise NotFound(
            f"Webhook '{webhook_id}' is not assigned to agent '{agent['agent_id']}'",
            message="Post-call webhook not found",
        )
    hook = store.get_webhook(org, webhook_id)
    store.change_agent(org, agent["agent_id"], lambda a: agents.unassigned(a, [webhook_id]))
    data = {
        "agent_id": agent["agent_id"],
        "agent_name": agent["agent_name"],
        "removed_webhook_id": webhook_id,
        "removed_webhook_name": hook["name"],
        "removed_tools_count": 1,
        "success": True,
    }
    return success("Post-call webhook assignment removed successfully", data), 200


def unassign_post_call_webhooks(agent_id: str, token_info: dict[str, Any]) -> Response:
    """PATCH /api/agents/{agent_id}/unassign: every webhook assigned to the agent."""
    org, store = organization_id(token_info), services().store
    agent = store.get_agent(org, agents.agent_id(agent_id))
    removed = agents.webhook_ids(agent)
    latest = agent.get("post_call_webhook_id")
    names = {hook["id"]: hook["name"] for hook in store.list_webhooks(org)}
    store.change_agent(org, agent["agent_id"], lambda a: agents.unassigned(a, removed))
    data = {
        "agent_id": agent["agent_id"],
        "agent_name": agent["agent_name"],
        "unassigned_webhook_id": latest,
        "unassigned_webhook_name": names.get(latest) if latest else None,
        "removed_tools_count": len(removed),
        "post_call_webhook_id": None,
    }
    return success("Post-call webhook unassigned successfully", data), 200
