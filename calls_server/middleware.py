"""ASGI middleware in front of the request path: what every answer gets (request ids,
common headers, the access log, the metrics' count), the published spec, the body-size
limit, and Swagger UI."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from logging import INFO
from typing import Any
from urllib.parse import quote

import anyio
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from connexion.options import SwaggerUIOptions
from connexion.spec import Specification
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calls_server.domain.errors import PayloadTooLarge
from calls_server.domain.rate_limits import RATE_LIMIT_HEADERS
from calls_server.errors import REQUEST_ID
from calls_server.logs import ACCESS_LOGGER, AccessLine, current_request_id, logged_target
from calls_server.metrics import RequestCounter
from calls_server.request_path.keys import ORGANIZATION_ID


class BodySizeLimit:
    """ASGI middleware answering 413 for bodies over `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            raise self._too_large()
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            return message

        return counted

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"Request body is larger than the limit of {self.max_bytes} bytes")


def _content_length(scope: Scope) -> int | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class PublishedSpec:
    """ASGI middleware serving the spec at `{base}/openapi.json` and `{base}/openapi.yaml`.

    Connexion would serve it fully dereferenced (no `$ref` left, four times the size, and
    with the Python paths of the security functions), which generated clients cannot use.
    """

    def __init__(
        self, app: ASGIApp, base_path: str, as_json: bytes, as_yaml: Callable[[], bytes]
    ) -> None:
        self.app = app
        self.content_types = {
            f"{base_path}/openapi.json": b"application/json",
            f"{base_path}/openapi.yaml": b"application/yaml",
        }
        self.documents = {f"{base_path}/openapi.json": as_json}
        self.yaml_path, self.as_yaml = f"{base_path}/openapi.yaml", as_yaml

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"] if scope["type"] == "http" else ""
        content_type = self.content_types.get(path)
        if content_type is None or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body = self.documents.get(path)
        if body is None:  # the YAML, made at its first GET (off the event loop), then kept
            body = self.documents[self.yaml_path] = await anyio.to_thread.run_sync(self.as_yaml)
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


class SwaggerUI(SwaggerUIMiddleware):  # type: ignore[misc]
    """Connexion's Swagger UI, asked only about paths under its own: its router (a Starlette
    router with mounts) would otherwise take longer to pass a request on than a GET takes."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self.prefixes: tuple[str, ...] = ()

    def add_api(self, specification: Specification, **kwargs: Any) -> None:
        super().add_api(specification, **kwargs)
        options = kwargs.get("swagger_ui_options") or SwaggerUIOptions()
        base_path = kwargs.get("base_path") or specification.base_path
        self.prefixes += (base_path + options.swagger_ui_path.rstrip("/"),)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


_ACCEPTED_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def _new_request_id() -> bytes:
    """A new request id: 128 random bits in hex. An id names a request in logs, it guards
    nothing: Python's generator (seeded from the system's, reseeded in a forked child) makes
    it in a third of the time of a system call for random bytes, on every request."""
    return b"%032x" % random.getrandbits(128)


_access_log = logging.getLogger(ACCESS_LOGGER)


class EveryAnswer:
    """ASGI middleware doing what every request and answer gets, in one pass over the
    request's messages (one layer, not three: each layer costs a coroutine and a wrapped
    `send`, and every request went through all three):

    - a request id: the client's `X-Request-ID` when it sends a usable one, a new one
      otherwise, returned on every response (errors included) and written in every log
      line made while the request is handled;
    - the headers every answer carries: `nosniff` (a browser never reads JSON as something
      else), `Cache-Control: no-store` on the API's answers (they carry keys, secrets and
      call records: no cache may keep them; Swagger UI's static files may be cached), and
      the caller's rate-limit allowance when there is one; not on the console's files
      (`own_headers`: paths answered with headers of their own);
    - the access log: one line per request, with the method, the path (credential-like
      query values redacted), the status, the duration, the organization that
      authenticated, if any, and the client's address (see `calls_server.logs.AccessLine`);
      uvicorn's own access log is off;
    - the metrics' count of the request (`RequestCounter`), errors included.
    """

    def __init__(
        self,
        app: ASGIApp,
        counter: RequestCounter,
        ui_prefix: str,
        own_headers: Callable[[str], bool] = lambda path: False,
    ) -> None:
        self.app = app
        self.counter = counter
        self.ui_prefix = ui_prefix
        self.own_headers = own_headers
        # The headers every answer of the API, and of Swagger UI, carries: made once.
        self.api_headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"cache-control", b"no-store"),
        ]
        self.ui_headers = [(b"x-content-type-options", b"nosniff")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        raw_id = sent if _ACCEPTED_ID.fullmatch(sent) else _new_request_id()
        request_id = raw_id.decode("latin-1")
        token = current_request_id.set(request_id)
        scope[REQUEST_ID] = request_id
        path: str = scope["path"]
        common = (
            None
            if self.own_headers(path)
            else self.ui_headers
            if path.startswith(self.ui_prefix)
            else self.api_headers
        )
        status: int | None = None
        logged = False

        def log_access() -> None:
            nonlocal logged
            logged = True
            if _access_log.isEnabledFor(INFO):
                # The record made directly: `info()` would also look up the calling source
                # line (walking the stack), which an access line never shows.
                line = _access_line(scope, status, started)
                _access_log.handle(
                    _access_log.makeRecord(ACCESS_LOGGER, INFO, "", 0, line, (), None)
                )

        async def send_answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                if common is not None:
                    headers += common
                    limits: dict[str, str] | None = scope.get(RATE_LIMIT_HEADERS)
                    if limits:
                        named = {name for name, _ in headers}
                        headers += [
                            (name.lower().encode(), value.encode())
                            for name, value in limits.items()
                            if name.lower().encode() not in named
                        ]
                headers.append((b"x-request-id", raw_id))
                message["headers"] = headers
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Before the answer's end leaves: a client holding it finds its line logged.
                log_access()
            await send(message)

        try:
            await self.app(scope, receive, send_answer)
        except Exception:
            # Not answered: the server-error middleware outside answers 500.
            status = status or 500
            raise
        finally:
            if not logged:  # an error, or a client gone before the answer ended
                log_access()
            current_request_id.reset(token)
            self.counter.count(scope, status or 500, time.perf_counter() - started)


def _access_line(scope: Scope, status: int | None, started: float) -> AccessLine:
    client = scope.get("client")
    host = client and (f"[{client[0]}]" if ":" in client[0] else client[0])
    return AccessLine(
        method=scope["method"],
        path=logged_target(
            scope.get("raw_path") or quote(scope["path"]).encode(), scope["query_string"]
        ),
        status=status,
        duration_ms=(time.perf_counter() - started) * 1000,
        organization_id=scope.get(ORGANIZATION_ID),
        client=f"{host}:{client[1]}" if client else None,
    )
