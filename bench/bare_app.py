"""The ceiling: bare Starlette endpoints doing the JSON work of the create and the GET.

The create reads both credential headers, parses the body, builds the same call record
and answers the same envelope; the GET answers the envelope of a call as the benchmark's
stored calls are (an ended call with its transcript). No validation, no authentication,
no storage.
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from calls_server.domain import calls
from calls_server.integrations.clock import wall_clock

# As bench/run.py's stored calls (not imported from there: it is a script).
TRANSCRIPT = (
    "Agent: Hello, this is Ava from Acme, how can I help you today? User: I would like to "
    "check on my order and maybe ask for a refund because it arrived damaged. "
) * 4


async def create_call(request: Request) -> Response:
    if not (request.headers.get("x-api-key") and request.headers.get("x-api-secret")):
        return Response(status_code=401)
    body = json.loads(await request.body())
    call = calls.new_call(
        organization_id="bench",
        agent_id=body["agent_id"],
        now=wall_clock(),
        call_type=body.get("call_type", "phone_call"),
        direction=body.get("direction"),
        metadata=body.get("metadata"),
    )
    envelope = {
        "message": "Call created successfully",
        "status": "success",
        "error": None,
        "data": {"organization_id": "bench", "call": call},
    }
    return Response(json.dumps(envelope), media_type="application/json")


STORED_CALL = calls.new_call(
    organization_id="bench",
    agent_id="agent-1",
    now=wall_clock(),
    call_type="phone_call",
    direction="inbound",
    from_number="+14155550100",
    to_number="+14155550101",
    metadata={"customer_id": "cust-1", "campaign": "bench"},
)
STORED_CALL.update(call_status="ended", transcript=TRANSCRIPT, disconnection_reason="USER_HANGUP")


async def get_call(request: Request) -> Response:
    if not (request.headers.get("x-api-key") and request.headers.get("x-api-secret")):
        return Response(status_code=401)
    call = {**STORED_CALL, "call_id": request.path_params["call_id"]}
    envelope = {
        "message": "Call retrieved successfully",
        "status": "success",
        "error": None,
        "data": call,
    }
    return Response(json.dumps(envelope), media_type="application/json")


app = Starlette(
    routes=[
        Route("/api/calls/create", create_call, methods=["POST"]),
        Route("/api/calls/{call_id}", get_call, methods=["GET"]),
    ]
)
