"""`calls-server mcp`: the Calls operations as MCP tools for agents, derived from the spec,
calling a real server with an organization's key pair."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport
from fastmcp.exceptions import ToolError

from calls_server.contract import load_spec
from calls_server.mcp import TOOL_TAGS, build_server
from calls_server.settings import Settings, SettingsError
from tests.conftest import free_port, wait_for

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


def operations(tags: tuple[str, ...], methods: tuple[str, ...] | None = None) -> set[str]:
    """The operationIds of the spec's operations of `tags` (and `methods`, if given)."""
    return {
        operation["operationId"]
        for item in load_spec()["paths"].values()
        for method, operation in item.items()
        if isinstance(operation, dict)
        and operation["tags"][0] in tags
        and (methods is None or method.upper() in methods)
    }


def tool_names(mcp: Any) -> set[str]:
    async def names() -> set[str]:
        async with Client(mcp) as client:
            return {tool.name for tool in await client.list_tools()}

    found: set[str] = run(names())
    return found


def test_the_tools_are_every_operation_an_organization_may_call(server, key):
    mcp = build_server(f"{server.base_url}/api", key["X-API-KEY"], key["X-API-SECRET"])

    tools = tool_names(mcp)

    all_tags = {
        o["tags"][0] for i in load_spec()["paths"].values() for o in i.values() if "tags" in o
    }
    assert all_tags - set(TOOL_TAGS) == {
        "admin",
        "health",
        "sandbox",
        "sandbox_clock",
        "sandbox_faults",
        "sandbox_state",
    }  # a new tag: decide
    assert tools == operations(TOOL_TAGS)
    assert {"createCall", "createAgent", "createPhoneNumber", "createBatchCall"} <= tools
    assert tool_for("post", "/organizations") not in tools  # admin stays out
    assert tool_for("get", "/health") not in tools


def test_read_only_the_tools_are_the_operations_that_read(server, key):
    mcp = build_server(
        f"{server.base_url}/api", key["X-API-KEY"], key["X-API-SECRET"], read_only=True
    )

    tools = tool_names(mcp)

    assert tools == operations(TOOL_TAGS, methods=("GET",))
    assert {"listCalls", "getCall", "listAgents", "getBatchCall", "listPhoneNumbers"} <= tools
    for writing in (
        "createCall",
        "updateCall",
        "deleteAgent",
        "createBatchCall",
        "cancelBatchCall",
    ):
        assert writing not in tools


def test_read_only_a_writing_tool_cannot_be_called_and_changes_nothing(server, key):
    mcp = build_server(
        f"{server.base_url}/api", key["X-API-KEY"], key["X-API-SECRET"], read_only=True
    )

    async def attempt() -> None:
        async with Client(mcp) as client:
            await client.call_tool(tool_for("post", "/agents/create"), {"agent_name": "Sneaky"})

    with pytest.raises(ToolError, match="Unknown tool"):
        run(attempt())
    listed = httpx.get(f"{server.base_url}/api/agents", headers=key).json()
    assert "Sneaky" not in json.dumps(listed)


def test_an_agent_creates_and_reads_agents_through_the_tools(server, key):
    mcp = build_server(f"{server.base_url}/api", key["X-API-KEY"], key["X-API-SECRET"])

    async def session() -> tuple[Any, Any, Any]:
        async with Client(mcp) as client:
            created = await client.call_tool(
                tool_for("post", "/agents/create"), {"agent_name": "Front desk"}
            )
            agent_id = result_data(created)["data"]["agent_id"]
            got = await client.call_tool(
                tool_for("get", "/agents/{agent_id}"), {"agent_id": agent_id}
            )
            listed = await client.call_tool(tool_for("get", "/agents"), {})
            return result_data(created), result_data(got), result_data(listed)

    created, got, listed = run(session())

    agent_id = created["data"]["agent_id"]
    over_http = httpx.get(f"{server.base_url}/api/agents/{agent_id}", headers=key).json()
    assert over_http["data"]["agent_name"] == "Front desk"
    assert got["data"]["agent_id"] == agent_id
    assert agent_id in json.dumps(listed)


def test_an_agent_drafts_a_batch_call_and_reads_its_tasks_through_the_tools(server, key):
    mcp = build_server(f"{server.base_url}/api", key["X-API-KEY"], key["X-API-SECRET"])
    draft = {
        "name": "Follow-up",
        "from_number": "+14155550100",
        "status": "draft",
        "tasks": [{"to_number": f"+1415555020{n}"} for n in range(3)],
    }

    async def session() -> tuple[Any, Any]:
        async with Client(mcp) as client:
            agent = await client.call_tool(
                tool_for("post", "/agents/create"), {"agent_name": "Campaigns"}
            )
            agent_id = result_data(agent)["data"]["agent_id"]
            created = await client.call_tool(
                tool_for("post", "/batch-call"), {**draft, "agent_id": agent_id}
            )
            batch_id = result_data(created)["data"]["batch_call_id"]
            tasks = await client.call_tool(
                tool_for("get", "/batch-call/{batch_call_id}/tasks"), {"batch_call_id": batch_id}
            )
            return result_data(created), result_data(tasks)

    created, tasks = run(session())

    batch_id = created["data"]["batch_call_id"]
    over_http = httpx.get(f"{server.base_url}/batch-call/{batch_id}", headers=key).json()
    assert over_http["data"]["name"] == "Follow-up"
    assert over_http["data"]["status"] == "draft"
    assert sorted(t["to_number"] for t in tasks["data"]["tasks"]) == [
        f"+1415555020{n}" for n in range(3)
    ]


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


def test_launched_with_read_only_it_lists_only_the_reading_tools(server, key):
    transport = StdioTransport(
        command=sys.executable,
        args=["-m", "calls_server.cli", "mcp", "--read-only", "--url", f"{server.base_url}/api"],
        env={
            **os.environ,
            "CALLS_MCP_API_KEY": key["X-API-KEY"],
            "CALLS_MCP_API_SECRET": key["X-API-SECRET"],
        },
    )

    tools = tool_names(transport)

    assert tools == operations(TOOL_TAGS, methods=("GET",))


def test_read_only_is_also_a_setting():
    assert Settings.load({}).mcp_read_only is False
    assert Settings.load({"CALLS_MCP_READ_ONLY": "true"}).mcp_read_only is True


def test_the_command_refuses_to_start_without_a_key_pair(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CALLS_MCP_")}

    result = subprocess.run(
        [sys.executable, "-m", "calls_server.cli", "mcp"],
        capture_output=True, text=True, env=environ, timeout=60,
    )  # fmt: skip

    assert result.returncode == 2
    assert "CALLS_MCP_API_KEY" in result.stderr


# -- over HTTP: a bearer token, and only the Hosts and Origins allowed -------------------------

MCP_TOKEN = "mcp-test-token-0123456789abcdef"
ALLOWED_ORIGIN = "http://agents.example.test"
EVIL = "evil.example"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "tests", "version": "1"},
    },
}
LIST_TOOLS = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
STREAMABLE = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def without_mcp_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CALLS_MCP_")}


@dataclass
class McpOverHttp:
    """A `calls-server mcp --transport http` process on 127.0.0.1, and the key pair it uses."""

    url: str
    key: dict[str, str]


@pytest.fixture(scope="module")
def mcp_http(server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpOverHttp]:
    key = server.new_key_headers()
    port = free_port()
    log_path = tmp_path_factory.mktemp("mcp") / "mcp.log"
    environ = {
        **without_mcp_settings(),
        "CALLS_MCP_API_KEY": key["X-API-KEY"],
        "CALLS_MCP_API_SECRET": key["X-API-SECRET"],
        "CALLS_MCP_TOKEN": MCP_TOKEN,
        "CALLS_MCP_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
    }
    command = [sys.executable, "-m", "calls_server.cli", "mcp", "--transport", "http"]
    command += ["--port", str(port), "--url", f"{server.base_url}/api"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ)
    url = f"http://127.0.0.1:{port}/mcp"

    def listening() -> bool:
        assert process.poll() is None, log_path.read_text()
        try:
            httpx.get(url, timeout=1)
        except httpx.TransportError:
            return False
        return True

    try:
        wait_for(listening, timeout=30)
        yield McpOverHttp(url, key)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def post(mcp: McpOverHttp, message: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(mcp.url, json=message, headers={**STREAMABLE, **headers}, timeout=10)


def bearer(token: str = MCP_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_refused(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["status"], body["data"]) == ("error", None)
    assert reason in body["error"]


def test_over_http_a_client_without_the_token_is_refused_and_sees_no_tool(mcp_http):
    initialized = post(mcp_http, INITIALIZE)
    listed = post(mcp_http, LIST_TOOLS)

    assert_refused(initialized, 401, "Authorization: Bearer")
    assert initialized.headers["WWW-Authenticate"] == "Bearer"
    assert_refused(listed, 401, "Authorization: Bearer")
    assert "listCalls" not in listed.text


def test_over_http_a_wrong_token_is_refused(mcp_http):
    for token in (MCP_TOKEN[:-1] + "X", MCP_TOKEN[:-1], MCP_TOKEN + "0", MCP_TOKEN.upper()):
        assert_refused(post(mcp_http, INITIALIZE, **bearer(token)), 401, "Invalid MCP token")
    # The right token, but not as a bearer token.
    for authorization in (MCP_TOKEN, f"Basic {MCP_TOKEN}"):
        refused = post(mcp_http, INITIALIZE, Authorization=authorization)
        assert_refused(refused, 401, "Authorization: Bearer")


def test_over_http_a_host_not_allowed_is_refused_even_with_the_token(mcp_http):
    port = mcp_http.url.split(":")[2].split("/")[0]

    for host in (EVIL, f"{EVIL}:{port}", f"127.0.0.1.{EVIL}:{port}", ""):
        assert_refused(post(mcp_http, INITIALIZE, Host=host, **bearer()), 403, "Host not allowed")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert post(mcp_http, INITIALIZE, Host=host, **bearer()).status_code == 200


def test_over_http_an_origin_not_allowed_is_refused_even_with_the_token(mcp_http):
    port = mcp_http.url.split(":")[2].split("/")[0]

    # A page of another site, a loopback page (listed nowhere either), a sandboxed frame.
    for origin in (f"http://{EVIL}", f"http://localhost:{port}", "null"):
        refused = post(mcp_http, INITIALIZE, Origin=origin, **bearer())
        assert_refused(refused, 403, "Origin not allowed")


def test_over_http_an_allowed_origin_with_the_token_is_answered(mcp_http):
    answered = post(mcp_http, INITIALIZE, Origin=ALLOWED_ORIGIN, **bearer())

    assert answered.status_code == 200, answered.text
    assert '"serverInfo"' in answered.text


def test_over_http_a_page_rebinding_its_name_to_loopback_creates_nothing(mcp_http, server):
    """The outside report's attack: a page whose name resolves to 127.0.0.1 posts to the MCP
    server (its own Host and Origin), to list calls and register a webhook of its own."""
    create_webhook = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {
            "name": tool_for("post", "/post-call-webhooks/create"),
            "arguments": {"url": f"https://{EVIL}/hook"},
        },
    }
    page = {"Host": EVIL, "Origin": f"http://{EVIL}"}

    for message in (INITIALIZE, LIST_TOOLS, create_webhook):
        assert post(mcp_http, message, **page).status_code == 403
        assert post(mcp_http, message, **page, **bearer()).status_code == 403

    webhooks = httpx.get(f"{server.base_url}/api/post-call-webhooks", headers=mcp_http.key)
    assert webhooks.status_code == 200
    assert "evil" not in webhooks.text


def test_over_http_a_client_with_the_token_lists_the_tools_and_calls_one(mcp_http, server):
    transport = StreamableHttpTransport(mcp_http.url, auth=MCP_TOKEN)

    async def session() -> tuple[set[str], Any]:
        async with Client(transport) as client:
            tools = {tool.name for tool in await client.list_tools()}
            created = await client.call_tool(tool_for("post", "/calls/create"), SEED)
            return tools, result_data(created)

    tools, created = run(session())

    assert {"createCall", "listCalls", "createPostCallWebhook"} <= tools
    call_id = created["data"]["call"]["call_id"]
    stored = httpx.get(f"{server.base_url}/api/calls/{call_id}", headers=mcp_http.key)
    assert stored.json()["data"]["metadata"] == SEED["metadata"]


def test_over_http_the_command_refuses_to_start_without_a_token():
    environ = {
        **without_mcp_settings(),
        "CALLS_MCP_API_KEY": "sk_test",
        "CALLS_MCP_API_SECRET": "s3cr3t_test",
    }

    result = subprocess.run(
        [sys.executable, "-m", "calls_server.cli", "mcp", "--transport", "http"],
        capture_output=True, text=True, env=environ, timeout=60,
    )  # fmt: skip

    assert result.returncode == 2
    assert "CALLS_MCP_TOKEN (16+ characters)" in result.stderr
    assert "Authorization: Bearer $CALLS_MCP_TOKEN" in result.stderr


def test_the_http_settings_default_to_loopback_and_are_checked():
    settings = Settings.load({})

    assert (settings.mcp_host, settings.mcp_port, settings.mcp_token) == ("127.0.0.1", 8090, None)
    assert settings.mcp_hosts() >= {("localhost", None), ("127.0.0.1", None), ("[::1]", None)}
    assert settings.mcp_origins() == frozenset()
    exposed = Settings.load({"CALLS_MCP_HOST": "10.1.2.3", "CALLS_MCP_PORT": "9000"})
    assert ("10.1.2.3", 9000) in exposed.mcp_hosts()
    listed = Settings.load({"CALLS_MCP_ALLOWED_ORIGINS": "HTTPS://Agents.Example.test:443/"})
    assert listed.mcp_origins() == {"https://agents.example.test"}
    for environ in (
        {"CALLS_MCP_TOKEN": "too-short"},
        {"CALLS_MCP_ALLOWED_HOSTS": "*"},
        {"CALLS_MCP_ALLOWED_ORIGINS": "*"},
        {"CALLS_MCP_ALLOWED_ORIGINS": "agents.example.test"},
        {"CALLS_MCP_PORT": "0"},
    ):
        with pytest.raises(SettingsError, match=next(iter(environ))):
            Settings.load(environ)
