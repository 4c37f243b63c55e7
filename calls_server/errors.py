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
import re
from collections.abc import Mapping
from typing import Any

from connexion import AsyncApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

from calls_server.domain.envelope import failure
from calls_server.domain.errors import BOTH_HEADERS, ApiError

log = logging.getLogger("calls_server")
# Where in the request's scope its id is (set by middleware.RequestId), for error bodies.
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
ADMIN_HEADER = "An 'Authorization: Bearer <admin token>' header is required"
# Connexion's own wording for auth failures, and what we say instead.
_AUTH_DETAILS = {
    "No authorization token provided": BOTH_HEADERS,
    "Provided apikey is not valid": "Invalid API key or secret",
    "Provided token is not valid": "Invalid admin token",
}


def install(app: AsyncApp, paths: Mapping[str, Mapping[str, Any]], base_path: str) -> None:
    """Register the envelope renderers on `app` for everything that can go wrong.

    They are `async` so that Connexion calls them on the event loop: a plain function would
    be sent to a worker thread for every 401 or 404, a few microseconds of work each."""
    allowed_methods = AllowedMethods(paths)

    async def on_api_error(request: ConnexionRequest, exc: ApiError) -> ConnexionResponse:
        return _render(request, exc.status_code, exc.message, exc.error, exc.headers)

    async def on_problem(request: ConnexionRequest, exc: ProblemException) -> ConnexionResponse:
        status = exc.status_code
        detail = str(exc.detail or exc.title or "")
        if status == 401:
            detail = _AUTH_DETAILS.get(detail, detail)
            if detail == BOTH_HEADERS and _is_admin_operation(request, base_path):
                detail = ADMIN_HEADER
        elif status >= 500:
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
        if status == 405:
            allow = allowed_methods.for_path(path)
            error = f"{request.method} is not allowed on {path}; allowed: {', '.join(allow)}"
            return _render(request, 405, _MESSAGES[405], error, {"Allow": ", ".join(allow)})
        return _render(request, status, _MESSAGES.get(status, "Request failed"), str(exc.detail))

    async def on_crash(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
        log.error("unhandled error on %s %s", request.method, request.url, exc_info=exc)
        return _render(request, 500, _MESSAGES[500], "An unexpected error occurred")

    app.add_error_handler(ApiError, on_api_error)
    app.add_error_handler(ProblemException, on_problem)
    app.add_error_handler(HTTPException, on_http)
    app.add_error_handler(Exception, on_crash)


def _is_admin_operation(request: ConnexionRequest, base_path: str) -> bool:
    return str(request.url.path).startswith(f"{base_path}/organizations")


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


class AllowedMethods:
    """The methods openapi.yaml documents for a path, for 405 `Allow` headers.

    Starlette answers 405 from the first route that matches the path only, so its own
    `Allow` names a single method even where the spec documents several.
    """

    def __init__(self, paths: Mapping[str, Mapping[str, Any]]) -> None:
        """`paths`: the spec's path items by the paths they are served at."""
        self._routes = []
        self.literal_paths = {path for path in paths if "{" not in path}
        for path, item in paths.items():
            pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path))
            methods = [m.upper() for m in item if m in _HTTP_METHODS]
            if "GET" in methods:
                methods.append("HEAD")
            self._routes.append((re.compile(pattern + "$"), sorted(methods)))

    def for_path(self, path: str) -> list[str]:
        for pattern, methods in self._routes:
            if pattern.match(path):
                return methods
        return []


_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
