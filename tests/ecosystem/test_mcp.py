"""`calls-server mcp`: the Calls operations as MCP tools for agents, derived from the spec,
calling a real server with an organization's key pair."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp.exceptions import ToolError

from calls_server.contract import load_spec
from calls_server.mcp import TOOL_TAGS, build_server

SEED = {
    "agent_id": "agent-123",
    "call_type": "PHONE_CALL",
    "direction": "OUTBOUND",
    "metadata": {"customer_id": "cust-001"},
}


def tool_for(method: str, path: str) -> str:
    """The tool of an operation: its operationId, looked up in the spec."""
    name: str = load_spec()["paths"][path][method]["operationId"]
    return name


@pytest.fixture
def key(server) -> dict[str, str]:
    return server.new_key_headers()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def result_data(result: Any) -> Any:
    """The JSON the tool answered (the server's envelope)."""
    content = result.structured_content or json.loads(result.content[0].text)
    return content.get("result", content)  # FastMCP wraps responses it cannot type as objects


def test_the_tools_are_the_calls_schedule_and_webhook_operations(server, key):
    mcp = build_server(f"{server.base_url}/api", key["X-API-KEY"], key["X-API-SECRET"])

    async def names() -> set[str]:
        async with Client(mcp) as client:
            return {tool.name for tool in await client.list_tools()}

    tools = run(names())

    spec = load_spec()
    expected = {
        operation["operationId"]
        for item in spec["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and operation["tags"][0] in TOOL_TAGS
    }
    assert tools == expected
    assert tool_for("post", "/organizations") not in tools  # admin stays out


def test_an_agent_creates_reads_and_lists_calls_through_the_tools(server, key):
    mcp = build_server(f"{server.base_url}/api", key["X-API-KEY"], key["X-API-SECRET"])

    async def session() -> tuple[Any, Any, Any]:
        async with Client(mcp) as client:
            created = await client.call_tool(tool_for("post", "/calls/create"), SEED)
            call_id = result_data(created)["data"]["call"]["call_id"]
            got = await client.call_tool(tool_for("get", "/calls/{call_id}"), {"call_id": call_id})
            listed = await client.call_tool(tool_for("get", "/calls"), {"limit": 5})
            return result_data(created), result_data(got), result_data(listed)

    created, got, listed = run(session())

    call_id = created["data"]["call"]["call_id"]
    over_http = httpx.get(f"{server.base_url}/api/calls/{call_id}", headers=key).json()
    assert over_http["data"]["metadata"] == SEED["metadata"]
    assert got["data"]["call_id"] == call_id
    assert [c["call_id"] for c in listed["data"]["calls"]] == [call_id]


def test_a_wrong_key_pair_is_a_tool_error_saying_so(server, key):
    mcp = build_server(f"{server.base_url}/api", key["X-API-KEY"], "s3cr3t_wrong")

    async def attempt() -> None:
        async with Client(mcp) as client:
            await client.call_tool(tool_for("get", "/calls"), {})

    with pytest.raises(ToolError, match=r"401|Invalid API key or secret"):
        run(attempt())


def test_agents_launch_it_over_stdio(server, key):
    transport = StdioTransport(
        command=sys.executable,
        args=["-m", "calls_server.cli", "mcp", "--url", f"{server.base_url}/api"],
        env={
            **os.environ,
            "CALLS_MCP_API_KEY": key["X-API-KEY"],
            "CALLS_MCP_API_SECRET": key["X-API-SECRET"],
        },
    )

    async def session() -> Any:
        async with Client(transport) as client:
            return result_data(await client.call_tool(tool_for("post", "/calls/create"), SEED))

    created = run(session())

    assert created["data"]["call"]["agent_id"] == "agent-123"


def test_the_command_refuses_to_start_without_a_key_pair(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CALLS_MCP_")}

    result = subprocess.run(
        [sys.executable, "-m", "calls_server.cli", "mcp"],
        capture_output=True, text=True, env=environ, timeout=60,
    )  # fmt: skip

    assert result.returncode == 2
    assert "CALLS_MCP_API_KEY" in result.stderr
