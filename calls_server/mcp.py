"""An MCP server exposing the Calls API to agents, as tools derived from openapi.yaml.

Voice-agent platforms hand their API keys to MCP servers. `calls-server mcp` is one: it
reads this server's contract and turns each Calls, schedule and webhook operation into an
MCP tool of the same name (its operationId, e.g. `createCall`), with the operation's
description and its parameters and body as the tool's input schema (FastMCP's OpenAPI
support does the mapping). Calling a tool makes the HTTP request to a running Calls server
with the organization's key pair; the envelope the server answers is the tool's result,
and an error status is a tool error carrying the envelope's `error`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from fastmcp import FastMCP
from fastmcp.server.providers.openapi.routing import MCPType, RouteMap

from calls_server.contract import load_spec, public

# The operations agents get, by tag; everything else (admin, health) stays out.
TOOL_TAGS = ("calls", "schedule", "webhooks")


def build_server(
    base_url: str, api_key: str, api_secret: str, timeout: float = 30.0
) -> FastMCP[Any]:
    """An MCP server whose tools call the Calls API at `base_url` (ending in `/api`) with the
    key pair of one organization."""
    client = httpx2.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"X-API-KEY": api_key, "X-API-SECRET": api_secret},
        timeout=timeout,
    )
    route_maps = [RouteMap(tags={tag}, mcp_type=MCPType.TOOL) for tag in TOOL_TAGS]
    route_maps.append(RouteMap(mcp_type=MCPType.EXCLUDE))

    @asynccontextmanager
    async def lifespan(server: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {}
        finally:
            await client.aclose()  # its connections, when the MCP server stops

    return FastMCP.from_openapi(
        openapi_spec=public(load_spec()),
        client=client,
        name="Calls API",
        route_maps=route_maps,
        lifespan=lifespan,
    )
