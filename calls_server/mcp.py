"""An MCP server exposing the Calls API to agents, as tools derived from openapi.yaml.

Voice-agent platforms hand their API keys to MCP servers. `calls-server mcp` is one: it
reads this server's contract and turns each operation an organization's key pair may call
(calls, schedules, agents, phone numbers, webhooks, batch calls) into an MCP tool of the
same name (its operationId, e.g. `createCall`), with the operation's description and its
parameters and body as the tool's input schema (FastMCP's OpenAPI support does the
mapping). Read-only, only the GET operations are tools: an agent can look, not change.
Calling a tool makes the HTTP request to a running Calls server with the organization's key
pair; the envelope the server answers is the tool's result, and an error status is a tool
error carrying the envelope's `error`.

Over stdio the client is the process that launched it. Over HTTP anyone who can reach the
port could use the organization's key pair, and a web page the operator opens can reach a
loopback port (DNS rebinding: its own name resolving to 127.0.0.1), so `HttpGuard` stands in
front of the MCP endpoint: the Host must be one the server answers to, an Origin (sent by
browsers) must be listed, and the client must send the server's bearer token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx2
from fastmcp import FastMCP
from fastmcp.server.providers.openapi.routing import MCPType, RouteMap
from fastmcp.utilities.openapi import HttpMethod
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from calls_server.contract import load_spec, public
from calls_server.domain.envelope import failure
from calls_server.settings import Settings, normalize_origin, split_host

# The operations agents get, by tag: every one an organization's key pair may call. The
# admin API (another credential), health, the sandbox's recordings (no credential, a WAV
# file for players) and the sandbox's controls (clocks, faults, state: for tests, not
# agents) stay out.
TOOL_TAGS = ("calls", "schedule", "agents", "phone_numbers", "webhooks", "batch_calls")
# The methods of the operations that only read, the tools of a read-only server. (The
# searches sent by POST read too, but each has a GET listing that does the same.)
READ_METHODS: tuple[HttpMethod, ...] = ("GET",)


def build_server(
    base_url: str,
    api_key: str,
    api_secret: str,
    timeout: float = 30.0,
    read_only: bool = False,
) -> FastMCP[Any]:
    """An MCP server whose tools call the Calls API at `base_url` (ending in `/api`) with the
    key pair of one organization; `read_only`, only the operations that read are tools."""
    client = httpx2.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"X-API-KEY": api_key, "X-API-SECRET": api_secret},
        timeout=timeout,
    )
    methods: list[HttpMethod] | Literal["*"] = list(READ_METHODS) if read_only else "*"
    route_maps = [RouteMap(methods=methods, tags={tag}, mcp_type=MCPType.TOOL) for tag in TOOL_TAGS]
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
        name="Calls API (read-only)" if read_only else "Calls API",
        route_maps=route_maps,
        lifespan=lifespan,
    )


def run_http(server: FastMCP[Any], settings: Settings) -> None:
    """Serve `server` over streamable HTTP on `settings.mcp_host`:`mcp_port`, behind
    `HttpGuard` (`settings.mcp_token` must be set), until the process is stopped."""
    if not settings.mcp_token:
        raise ValueError("the MCP server over HTTP needs a token (CALLS_MCP_TOKEN)")
    guard = Middleware(
        HttpGuard,
        token=settings.mcp_token,
        allowed_hosts=settings.mcp_hosts(),
        allowed_origins=settings.mcp_origins(),
    )
    server.run(
        transport="http",
        host=settings.mcp_host,
        port=settings.mcp_port,
        show_banner=False,
        middleware=[guard],
        # Host and Origin are HttpGuard's to check. FastMCP's own guard (off by default)
        # stays off even if FASTMCP_* settings ask for it: a second allow-list, of another
        # syntax, would refuse what this one allows.
        host_origin_protection=False,
    )


# Why HttpGuard refuses a request (the envelope's `error`).
HOST_NOT_ALLOWED = "Host not allowed: the MCP server answers the names in CALLS_MCP_ALLOWED_HOSTS"
ORIGIN_NOT_ALLOWED = "Origin not allowed: only those in CALLS_MCP_ALLOWED_ORIGINS may call"
TOKEN_REQUIRED = "An 'Authorization: Bearer <CALLS_MCP_TOKEN>' header is required"
TOKEN_INVALID = "Invalid MCP token"


class HttpGuard:
    """ASGI middleware in front of the MCP server's HTTP app. A request is answered only if
    its Host is allowed (else 403), its Origin, if it has one, is allowed (else 403: browsers
    send one, MCP clients do not), and it carries `Authorization: Bearer <token>` (else 401,
    with `WWW-Authenticate: Bearer`). Refusals are the envelope, saying why."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        allowed_hosts: Collection[tuple[str, int | None]],
        allowed_origins: Collection[str],
    ) -> None:
        self.app = app
        self.token_digest = _digest(token)
        self.allowed_hosts = frozenset(allowed_hosts)
        self.allowed_origins = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # the MCP endpoint has no WebSocket
            await WebSocketClose(code=1008)(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, reason = refusal
        message = "Unauthorized" if status == 401 else "Forbidden"
        extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
        response = JSONResponse(failure(message, reason), status_code=status, headers=extra)
        await response(scope, receive, send)

    def _refusal(self, headers: Headers) -> tuple[int, str] | None:
        """Why the request is refused, as (status, reason); None if it may go on."""
        if not self._host_allowed(headers.get("host", "")):
            return 403, HOST_NOT_ALLOWED
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin):
            return 403, ORIGIN_NOT_ALLOWED
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return 401, TOKEN_REQUIRED
        if not hmac.compare_digest(_digest(credentials.strip()), self.token_digest):
            return 401, TOKEN_INVALID
        return None

    def _host_allowed(self, host: str) -> bool:
        try:
            name, port = split_host(host)
        except ValueError:
            return False
        return (name, None) in self.allowed_hosts or (name, port) in self.allowed_hosts

    def _origin_allowed(self, origin: str) -> bool:
        try:
            return normalize_origin(origin) in self.allowed_origins
        except ValueError:  # `null` (a sandboxed frame, a file), or not an origin at all
            return False


def _digest(token: str) -> bytes:
    """What tokens are compared by: equal-length digests, so the comparison's time says
    nothing about the token, not even its length."""
    return hashlib.sha256(token.encode()).digest()
