"""Handlers of the `batch_calls` tag: outbound campaigns (upstream's `/batch-call`, mounted
without the `/api` prefix as upstream does, and under it too).

The rules live in domain/batches.py; dialing is the batch dispatcher's
(services/batch_dispatch.py). Every handler makes one storage call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from calls_server.domain import batches, versions
from calls_server.domain.batches import Batch, Task
from calls_server.domain.envelope import Envelope, success
from calls_server.handlers.idempotency import idempotent
from calls_server.handlers.scope import organization_id, reads, services
from calls_server.services.dispatch import bound_agent

Response = tuple[Envelope, int]
# An answer, or 304 with no body: the client holds it already (If-None-Match).
Conditional = tuple[Envelope | bytes, int, dict[str, str]]
# Task fields that are the dispatcher's bookkeeping, not the task's state.
_INTERNAL_TASK_FIELDS = ("claimed_by", "dialed")


def _shown(batch: Batch) -> Batch:
    """A batch as responses show it: `status` through the server's enum casing."""
    return {**batch, "status": services().casing.value(batch["status"])}


def _shown_task(task: Task) -> Task:
    """A task as responses show it: `status` as upstream lists it (UPPER, in the
    upstream casing mode), without the dispatcher's bookkeeping."""
    kept = {k: v for k, v in task.items() if k not in _INTERNAL_TASK_FIELDS}
    return {**kept, "status": services().casing.listed(task["status"])}


def _recover_batch_call(batch_call_id: str, token_info: dict[str, Any], **_: Any) -> Response:
    """createBatchCall's answer for a batch stored by a request whose answer was lost."""
    batch = services().store.get_batch(organization_id(token_info), batch_call_id)
    return success("Batch call created successfully", _shown(batch)), 200


@idempotent(_recover_batch_call)
def create_batch_call(body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """POST /batch-call"""
    org = organization_id(token_info)
    body, agent_ids = _with_agent(org, body)
    batch, tasks = batches.new_batch(org, body, services().clock(), agent_ids)
    services().store.add_batch(batch, tasks)
    return success("Batch call created successfully", _shown(batch)), 200


def _with_agent(org: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A create (or PUT) body with its agent: the one bound to `from_number` when it names
    none, as for phone calls; and the organization's agent ids, to check it against."""
    store = services().store
    if body.get("agent_id") is None:
        body = {**body, "agent_id": bound_agent(store, org, body["from_number"])}
    return body, [agent["agent_id"] for agent in store.list_agents(org)]


@reads
def list_batch_calls(token_info: dict[str, Any], **params: Any) -> Response:
    """GET /batch-call/list"""
    limit = params.get("limit") or params.get("size")
    return _list(token_info, {}, params["page"], limit, params["sort_by"], params["sort_order"])


@reads
def search_batch_calls(body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """POST /batch-call/list"""
    paging = body.get("pagination") or {}
    page = paging.get("page", body.get("page", 0))
    limit = paging.get("limit", body.get("limit"))
    criteria = body.get("filter_criteria") or {}
    envelope, status = _list(token_info, criteria, page, limit, body["sort_by"], body["sort_order"])
    envelope["message"] = "Batch calls retrieved successfully with filters"
    envelope["data"]["applied_filters"] = {
        name: f"{len(values)} values" for name, values in criteria.items() if values
    }
    return envelope, status


def _list(
    token_info: dict[str, Any],
    criteria: dict[str, list[str]],
    page: int,
    limit: int | None,
    sort_by: str,
    sort_order: str,
) -> Response:
    org = organization_id(token_info)
    found = batches.matching(services().store.list_batches(org), criteria)
    ordered = batches.sorted_batches(found, sort_by, sort_order)
    if limit is None:  # upstream: no limit, every batch on one page
        page, chosen = 0, ordered
    else:
        chosen = ordered[page * limit : (page + 1) * limit]
    data = {
        "organization_id": org,
        "batch_calls": [_shown(batch) for batch in chosen],
        "pagination": batches.pagination(page, limit or len(chosen), len(ordered)),
        "returned_count": len(chosen),
        "sort_by": sort_by,
        "sort_order": sort_order,
    }
    return success("Batch calls retrieved successfully", data), 200


@reads
def get_batch_call(
    batch_call_id: str, token_info: dict[str, Any], if_none_match: str | None = None
) -> Conditional:
    """GET /batch-call/{batch_call_id}: 304 with no body when `If-None-Match` names the
    version of what it would answer."""
    batch = services().store.get_batch(organization_id(token_info), batch_call_id)
    return _conditional(success("Batch call retrieved successfully", _shown(batch)), if_none_match)


def update_batch_call(
    batch_call_id: str, body: dict[str, Any], token_info: dict[str, Any]
) -> Response:
    """PATCH /batch-call/{batch_call_id}"""
    org = organization_id(token_info)
    store, now = services().store, services().clock()
    agent_ids = [agent["agent_id"] for agent in store.list_agents(org)]
    batch = store.change_batch(
        org, batch_call_id, lambda stored: batches.patched(stored, body, now, agent_ids)
    )
    return success("Batch call updated successfully", _shown(batch)), 200


def replace_batch_call(
    batch_call_id: str, body: dict[str, Any], token_info: dict[str, Any]
) -> Response:
    """PUT /batch-call/{batch_call_id}"""
    org = organization_id(token_info)
    store, now = services().store, services().clock()
    body, agent_ids = _with_agent(org, body)
    batch = store.replace_batch(
        org, batch_call_id, lambda stored: batches.replaced(stored, body, now, agent_ids)
    )
    return success("Batch call updated successfully", _shown(batch)), 200


def delete_batch_call(batch_call_id: str, token_info: dict[str, Any]) -> Response:
    """DELETE /batch-call/{batch_call_id}"""
    services().store.delete_batch(
        organization_id(token_info), batch_call_id, batches.check_deletable
    )
    return success("Batch call deleted successfully", None), 200


def execute_batch_call(batch_call_id: str, token_info: dict[str, Any]) -> Response:
    """POST /batch-call/{batch_call_id}/execute"""
    return _moved(batch_call_id, token_info, batches.executed, "Batch call execution started")


def pause_batch_call(batch_call_id: str, token_info: dict[str, Any]) -> Response:
    """POST /batch-call/{batch_call_id}/pause"""
    return _moved(batch_call_id, token_info, batches.paused, "Batch call paused")


def resume_batch_call(batch_call_id: str, token_info: dict[str, Any]) -> Response:
    """POST /batch-call/{batch_call_id}/resume"""
    return _moved(batch_call_id, token_info, batches.resumed, "Batch call resumed")


def cancel_batch_call(batch_call_id: str, token_info: dict[str, Any]) -> Response:
    """POST /batch-call/{batch_call_id}/cancel: its pending tasks cancelled with it."""
    return _moved(
        batch_call_id, token_info, batches.cancelled, "Batch call cancelled", batches.task_cancelled
    )


def _moved(
    batch_call_id: str,
    token_info: dict[str, Any],
    move: Callable[[Batch, int], Batch],
    message: str,
    each_task: Callable[[Batch, Task, int], tuple[Batch, Task]] | None = None,
) -> Response:
    """The batch moved by the rule `move` (and each of its tasks by `each_task`)."""
    now = services().clock()
    batch = services().store.change_batch(
        organization_id(token_info),
        batch_call_id,
        lambda b: move(b, now),
        None if each_task is None else lambda b, task: each_task(b, task, now),
    )
    return success(message, _shown(batch)), 200


@reads
def list_batch_call_tasks(
    batch_call_id: str,
    token_info: dict[str, Any],
    page: int,
    limit: int,
    status: str | None = None,
    if_none_match: str | None = None,
) -> Conditional:
    """GET /batch-call/{batch_call_id}/tasks: 304 with no body when `If-None-Match` names
    the version of the page."""
    tasks, total = services().store.batch_tasks(
        organization_id(token_info),
        batch_call_id,
        status=status.lower() if status else None,
        offset=page * limit,
        limit=limit,
    )
    data = {
        "batch_call_id": batch_call_id,
        "tasks": [_shown_task(task) for task in tasks],
        "pagination": batches.pagination(page, limit, total),
    }
    return _conditional(success("Batch call tasks retrieved successfully", data), if_none_match)


def _conditional(envelope: Envelope, if_none_match: str | None) -> Conditional:
    """`envelope` answered 200 with its ETag, or 304 without a body if the client holds it."""
    current = versions.answer_etag(envelope["data"])
    if versions.not_modified(if_none_match, current):
        return b"", 304, {"ETag": current}
    return envelope, 200, {"ETag": current}
