"""The ceiling: a bare Starlette endpoint doing the JSON work of POST /api/calls/create.

It reads both credential headers, parses the body, builds the same call record and
answers the same envelope; it has no validation, no authentication and no storage.
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from calls_server.domain import calls
from calls_server.integrations.clock import wall_clock


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


app = Starlette(routes=[Route("/api/calls/create", create_call, methods=["POST"])])
