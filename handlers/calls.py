"""Handlers of the `calls` tag: create, read, list, update and delete calls.

Each one unpacks its validated arguments, makes one domain/storage call and returns
`(envelope, status)`. Connexion has validated everything openapi.yaml says (and filled in
its defaults) before a handler runs.

Handlers that only read are marked `@reads`: on the embedded store they run on the event
loop (they never wait for the disk and hold the store's lock for microseconds, which saves
the hop to a worker thread); on PostgreSQL, whose reads wait for the network, on a worker
thread. Handlers that write are plain functions, run on worker threads, because a write
waits for its fsync (or commit) before it is acknowledged.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from calls_server.domain import calls, versions
from calls_server.domain.envelope import Envelope, success
from calls_server.domain.errors import CallNotFound
from calls_server.domain.listing import CallQuery
from calls_server.handlers.idempotency import idempotent
from calls_server.handlers.scope import organization_id, reads, services
from calls_server.integrations.dialer import HttpDialer, Unavailable
from calls_server.services.dispatch import (
    PhoneCallPlaced,
    place_phone_call,
    recover_phone_call,
)

Response = tuple[Envelope, int]
Versioned = tuple[Envelope, int, dict[str, str]]  # with the call's ETag

NO_MEDIA_SERVER = (
    "Web call created, but no access token was issued: "
    "no LiveKit server is configured on this server"
)


def _call_created(org: str, call: calls.Call) -> Versioned:
    data = {"organization_id": org, "call": services().casing.call(call)}
    return success("Call created successfully", data), 200, {"ETag": versions.etag(call)}


def _recover_call(call_id: str, token_info: dict[str, Any], **_: Any) -> Versioned:
    """createCall's answer for its call, stored by a request whose answer was lost."""
    org = organization_id(token_info)
    return _call_created(org, services().store.get_call(org, call_id))


@idempotent(_recover_call)
def create_call(body: dict[str, Any], token_info: dict[str, Any]) -> Versioned:
    """POST /api/calls/create"""
    org = organization_id(token_info)
    body = calls.with_dynamic_variables(body)
    call = calls.new_call(
        organization_id=org,
        agent_id=body["agent_id"],
        now=services().clock(),
        call_type=body["call_type"],
        call_id=body.get("call_id"),
        direction=body.get("direction"),
        metadata=body.get("metadata"),
    )
    services().store.add_call(call)
    return _call_created(org, call)


def _recover_phone_call(call_id: str, token_info: dict[str, Any], **_: Any) -> Versioned:
    """createPhoneCall's answer for its call, stored by a request whose answer was lost:
    dialed now if it never was (see `services.dispatch.recover_phone_call`)."""
    org, running = organization_id(token_info), services()
    placed = recover_phone_call(running.store, running.dialer, running.clock, org, call_id)
    return _phone_call_placed(org, placed)


@idempotent(_recover_phone_call)
async def create_phone_call(body: dict[str, Any], token_info: dict[str, Any]) -> Versioned:
    """POST /api/calls/create-phone-call

    Placing the call (an fsync, then the dialer, retries included) runs on a worker thread
    of its own bounded pool: a slow or hanging dialer holds at most that many threads, and
    never those that serve every other request. The wait for a thread of that pool and the
    HTTP dialer together last at most its deadline (CALLS_DIALER_DEADLINE): a call still
    waiting for a thread then, or given one with too little of it left to make an attempt
    (`HttpDialer.floor`), is not dialed, and fails (`call_failed`) saying so.
    """
    org = organization_id(token_info)
    body = calls.with_dynamic_variables(body)
    running = services()
    store, dialer, clock = running.store, running.dialer, running.clock
    if not isinstance(dialer, HttpDialer):  # none, or the sandbox: answers at once
        placed = await anyio.to_thread.run_sync(
            place_phone_call, store, dialer, clock, org, body, limiter=running.dial_limiter
        )
    else:
        ends = time.monotonic() + dialer.deadline
        busy = f"no dialing thread came free within {dialer.deadline:g} s (all dialing)"

        def place() -> PhoneCallPlaced:  # on the dialing thread, once it came free
            # None: too little of the deadline left for an attempt; recorded, not dialed.
            cut = dialer.within(ends - time.monotonic())
            return place_phone_call(store, cut or Unavailable(busy), clock, org, body)

        waited: PhoneCallPlaced | None = None
        with anyio.move_on_after(dialer.deadline):  # only the wait for a thread is cut
            waited = await anyio.to_thread.run_sync(place, limiter=running.dial_limiter)
        if waited is None:  # recorded, and failed without dialing
            waited = await anyio.to_thread.run_sync(
                place_phone_call, store, Unavailable(busy), clock, org, body
            )
        placed = waited
    return _phone_call_placed(org, placed)


def _phone_call_placed(org: str, placed: PhoneCallPlaced) -> Versioned:
    call, casing = placed.call, services().casing
    data = {
        "organization_id": org,
        "call_type": casing.value("phone_call"),
        "status": placed.status,
        "call": casing.call(call, listed=True),
        "phone_call_info": {
            "from_number": call["from_number"],
            "to_number": call["to_number"],
            "direction": casing.value(call["direction"]),
            "call_status": casing.value(call["call_status"]),
        },
    }
    return success(placed.message, data), 200, {"ETag": versions.etag(call)}


def _recover_web_call(call_id: str, token_info: dict[str, Any], **_: Any) -> Versioned:
    """createWebCall's answer for its call, stored by a request whose answer was lost: a
    new access token to the same room; played by the sandbox if it never was."""
    org, running = organization_id(token_info), services()
    call = running.store.get_call(org, call_id)
    if running.sandbox and call["call_status"] == "registered" and calls.player(call) is None:
        running.sandbox.play_web_call(call)
    return _web_call_created(org, call)


@idempotent(_recover_web_call)
def create_web_call(body: dict[str, Any], token_info: dict[str, Any]) -> Versioned:
    """POST /api/calls/create-web-call"""
    org = organization_id(token_info)
    body = calls.with_dynamic_variables(body)
    call = calls.new_web_call(
        organization_id=org,
        agent_id=body["agent_id"],
        now=services().clock(),
        metadata=body.get("metadata"),
        is_widget_call=body.get("is_widget_call"),
    )
    services().store.add_call(call)
    sandbox = services().sandbox
    if sandbox:  # someone joins, talks, and hangs up, by themselves
        sandbox.play_web_call(call)
    return _web_call_created(org, call)


def _web_call_created(org: str, call: calls.Call) -> Versioned:
    """createWebCall's answer for `call`, with an access token to its room (if a LiveKit
    server is configured, or the sandbox stands in for one).

    With a room, `web_call_info.call_status` is `ongoing`, as upstream's page shows beside
    the call still `registered`: the web session is open, waiting for its participant
    (the call goes `ongoing` when they join). Without one, there is no session: it shows the
    call's own status."""
    rooms, casing = services().rooms, services().casing
    token = rooms.join_token(call["call_id"], call["agent_id"]) if rooms else None
    room = call["call_id"]
    session = "ongoing" if token and call["call_status"] == "registered" else call["call_status"]
    data = {
        "organization_id": org,
        "call_type": casing.value("web_call"),
        "call": casing.call(call, listed=True),
        "web_call_info": {
            "room_name": room,
            "access_token": token,
            "call_status": casing.value(session),
            "agent_id": call["agent_id"],
        },
        "livekit_connection": {
            "server_url": rooms.server_url if rooms else None,
            "token": token,
            "room_name": room,
        },
    }
    message = "Web call created successfully" if rooms else NO_MEDIA_SERVER
    return success(message, data), 200, {"ETag": versions.etag(call)}


@reads
def get_call(
    call_id: str, token_info: dict[str, Any], if_none_match: str | None = None
) -> Versioned | tuple[bytes, int, dict[str, str]]:
    """GET /api/calls/{call_id}: 304 with no body when `If-None-Match` names its version."""
    call = services().store.get_call(organization_id(token_info), call_id)
    current = versions.etag(call)
    if versions.not_modified(if_none_match, current):
        return b"", 304, {"ETag": current}
    shown = services().casing.call(call, listed=True)
    return success("Call retrieved successfully", shown), 200, {"ETag": current}


@reads
def list_calls(
    token_info: dict[str, Any], if_none_match: str | None = None, **params: Any
) -> Response | tuple[Envelope | bytes, int, dict[str, str]]:
    """GET /api/calls: the filter criteria come as query parameters. The page has an ETag
    of its content: 304 with no body when `If-None-Match` names it (a poll that finds
    nothing new)."""
    envelope, status = _list(token_info, CallQuery.from_query_params(params))
    current = versions.answer_etag(envelope["data"])
    if versions.not_modified(if_none_match, current):
        return b"", 304, {"ETag": current}
    return envelope, status, {"ETag": current}


@reads
def search_calls(body: dict[str, Any], token_info: dict[str, Any]) -> Response:
    """POST /api/calls: the filter criteria come in the body."""
    return _list(token_info, CallQuery.from_body(body))


def _list(token_info: dict[str, Any], query: CallQuery) -> Response:
    org, running = organization_id(token_info), services()
    page, total, position = running.store.list_calls(org, query)
    next_cursor = None if position is None else query.next_cursor(position)
    casing = running.casing
    data = {
        "organization_id": org,
        "calls": [casing.call(call, listed=True) for call in page],
        "pagination": query.pagination(total, next_cursor),
        "returned_count": len(page),
        "sort_order": query.sort_order,
        "sort_by": query.sort_by,
        "applied_filters": query.asked,
    }
    return success("Calls retrieved successfully", data), 200


def update_call(
    call_id: str, body: dict[str, Any], token_info: dict[str, Any], if_match: str | None = None
) -> Versioned:
    """PUT /api/calls/{call_id}"""
    org = organization_id(token_info)
    now = services().clock()

    def change(stored: calls.Call) -> calls.Call:
        versions.check_if_match(stored, if_match)
        return calls.update(stored, body, now)

    call = services().store.change_call(org, call_id, change)
    data = {"operation": "update", "organization_id": org, "call": services().casing.call(call)}
    return success("Call updated successfully", data), 200, {"ETag": versions.etag(call)}


def delete_call(call_id: str, token_info: dict[str, Any], if_match: str | None = None) -> Response:
    """DELETE /api/calls/{call_id}"""
    org = organization_id(token_info)
    try:
        services().store.delete_call(
            org, call_id, lambda stored: versions.check_if_match(stored, if_match)
        )
    except CallNotFound:  # the delete page's words name the (caller's own) organization
        raise CallNotFound(call_id, org) from None
    return success("Call deleted successfully", {"call_id": call_id, "organization_id": org}), 200
