"""Every error, from every layer, rendered once into the envelope.

Connexion raises `ProblemException`s (validation, authentication, media type, response
validation), Starlette raises `HTTPException`s (unknown route, wrong method), our code
raises `domain.errors.ApiError`s, and anything else is a bug answered 500. Connexion
would answer most of these as `application/problem+json`; clients of this API expect the
envelope, so each kind gets a handler here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from connexion import AsyncApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.middleware.exceptions import ExceptionMiddleware
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from calls_server.domain.envelope import failure
from calls_server.domain.errors import ApiError

log = logging.getLogger("calls_server")
# Where in the request's scope its id is (set by middleware.EveryAnswer), for error bodies.
REQUEST_ID = "calls.request_id"

_MESSAGES = {
    400: "Validation error",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    415: "Unsupported media type",
    500: "Internal server error",
}


class Envelopes(ExceptionMiddleware):  # type: ignore[misc]
    """Connexion's exception middleware, answering every error a request raises with the
    renderer `install` registers for it (Connexion wraps each: they are all awaitable).

    Starlette's middleware makes, for every request, what only one that failed needs (a
    request object, two closures): a few percent of a GET. Here they are made once a
    request has failed, and the failure answered as Starlette answers it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = False

        async def noting_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, noting_start)
        except Exception as error:
            handler = self._handler_of(error)
            if handler is None:
                raise
            if started:
                raise RuntimeError(
                    "Caught handled exception, but response already started."
                ) from error
            response = await handler(Request(scope, receive, send), error)
            if response is not None:
                await response(scope, receive, noting_start)
            error.__traceback__ = None  # a reused exception would pile up tracebacks

    def _handler_of(self, error: Exception) -> Any:
        """The handler registered for `error` (by status for HTTP errors, then by class, the
        most specific first), as Starlette looks it up; None when there is none."""
        if isinstance(error, HTTPException):
            handler = self._status_handlers.get(error.status_code)
            if handler is not None:
                return handler
        for kind in type(error).__mro__:
            if kind in self._exception_handlers:
                return self._exception_handlers[kind]
        return None


def install(app: AsyncApp) -> None:
    """Register the envelope renderers on `app` for everything that can go wrong.

    They are `async` so that Connexion calls them on the event loop: a plain function would
    be sent to a worker thread for every 401 or 404, a few microseconds of work each."""

    async def on_api_error(request: ConnexionRequest, exc: ApiError) -> ConnexionResponse:
        return _render(request, exc.status_code, exc.message, exc.error, exc.headers)

    async def on_problem(request: ConnexionRequest, exc: ProblemException) -> ConnexionResponse:
        status = exc.status_code
        detail = str(exc.detail or exc.title or "")
        if status >= 500:
            # A response that breaks the contract: a bug; say so without leaking internals.
            log.error("server error %s on %s %s: %s", status, request.method, request.url, detail)
            invalid = "The server failed to produce a valid response"
            return _render(request, status, _MESSAGES[500], invalid)
        message = _MESSAGES.get(status, "Request failed")
        return _render(request, status, message, detail, exc.headers)

    async def on_http(request: ConnexionRequest, exc: HTTPException) -> ConnexionResponse:
        status = exc.status_code
        path = request.url.path
        if status == 404:
            unknown = f"No route matches {request.method} {path}"
            return _render(request, 404, _MESSAGES[404], unknown)
        if status == 405:  # the request path names the path's methods in Allow
            allow = (exc.headers or {}).get("Allow", "")
            error = f"{request.method} is not allowed on {path}; allowed: {allow}"
            return _render(request, 405, _MESSAGES[405], error, {"Allow": allow})
        return _render(request, status, _MESSAGES.get(status, "Request failed"), str(exc.detail))

    async def on_crash(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
        log.error("unhandled error on %s %s", request.method, request.url, exc_info=exc)
        return _render(request, 500, _MESSAGES[500], "An unexpected error occurred")

    app.add_error_handler(ApiError, on_api_error)
    app.add_error_handler(ProblemException, on_problem)
    app.add_error_handler(HTTPException, on_http)
    app.add_error_handler(Exception, on_crash)


def _render(
    request: ConnexionRequest,
    status: int,
    message: str,
    error: str,
    headers: Mapping[str, str] | None = None,
) -> ConnexionResponse:
    return ConnexionResponse(
        status_code=status,
        content_type="application/json",
        headers=dict(headers or {}),
        body=json.dumps(
            {
                **failure(message, _first_paragraph(error)),
                "request_id": request.scope.get(REQUEST_ID),
            }
        ),
    )


def _first_paragraph(detail: str) -> str:
    """jsonschema's messages append a dump of the schema after a blank line: drop it."""
    return detail.split("\n\n", 1)[0].strip() or "Request failed"
