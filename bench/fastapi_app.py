"""The reference row: the create and GET by id as FastAPI + pydantic v2 would serve them.

What a Python user would pick instead of this server, doing the same work in memory only:
a pydantic model of CreateCallRequest as openapi.yaml declares it (lengths, pattern, the
call types and directions in either case, at most 103 metadata keys, no other keys), both
credentials checked against a dict, the call built as the server builds it, the envelope
answered; GET by id reads the dict. No journal, no fsync: not durable, unlike the server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from calls_server.domain import calls
from calls_server.integrations.clock import wall_clock

CallType = Literal["phone_call", "web_call", "PHONE_CALL", "WEB_CALL"]
Direction = Literal["inbound", "outbound", "INBOUND", "OUTBOUND"]


class CreateCallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    call_id: (
        Annotated[
            str,
            StringConstraints(
                min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$"
            ),
        ]
        | None
    ) = None
    call_type: CallType = "PHONE_CALL"
    direction: Direction | None = None
    metadata: Annotated[dict[str, Any], Field(max_length=103)] | None = None


KEYS = {os.environ.get("BENCH_KEY", "k"): os.environ.get("BENCH_SECRET", "s")}
STORED: dict[str, dict[str, Any]] = {}


def _authenticated(key: str | None, secret: str | None) -> None:
    if key is None or secret is None or KEYS.get(key) != secret:
        raise HTTPException(status_code=401, detail="Invalid API key or secret")


def _stored_calls() -> None:
    """The calls GET asks for (the ids in BENCH_IDS), as the server holds them."""
    path = os.environ.get("BENCH_IDS")
    for call_id in open(path).read().split() if path else []:  # noqa: SIM115
        STORED[call_id] = calls.new_call(
            organization_id="bench",
            agent_id="agent-1",
            now=wall_clock(),
            call_type="phone_call",
            call_id=call_id,
            metadata={"customer_id": "cust-1", "campaign": "bench"},
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    _stored_calls()
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/api/calls/create")
def create_call(
    body: CreateCallRequest,
    x_api_key: Annotated[str | None, Header()] = None,
    x_api_secret: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    _authenticated(x_api_key, x_api_secret)
    call = calls.new_call(
        organization_id="bench",
        agent_id=body.agent_id,
        now=wall_clock(),
        call_type=body.call_type.lower(),
        call_id=body.call_id,
        direction=body.direction.lower() if body.direction else None,
        metadata=body.metadata,
    )
    STORED[call["call_id"]] = call
    data = {"organization_id": "bench", "call": call}
    return {
        "message": "Call created successfully",
        "status": "success",
        "error": None,
        "data": data,
    }


@app.get("/api/calls/{call_id}")
async def get_call(
    call_id: str,
    x_api_key: Annotated[str | None, Header()] = None,
    x_api_secret: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    _authenticated(x_api_key, x_api_secret)
    call = STORED.get(call_id)
    if call is None:
        raise HTTPException(status_code=404, detail=f"Call '{call_id}' not found")
    return {
        "message": "Call retrieved successfully",
        "status": "success",
        "error": None,
        "data": call,
    }
