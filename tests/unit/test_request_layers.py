"""The ASGI layers every request goes through, merged for speed (issue 30), answer as the
layers they replaced: `errors.Envelopes` as Connexion's exception middleware, and
`middleware.EveryAnswer` with the request id, the common headers and the metrics' count
on one pass."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from connexion.exceptions import BadRequestProblem
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.middleware.exceptions import ExceptionMiddleware
from starlette.exceptions import HTTPException

from calls_server.domain.errors import ApiError, CallNotFound
from calls_server.domain.rate_limits import RATE_LIMIT_HEADERS, RATE_LIMIT_REFUSED
from calls_server.errors import Envelopes
from calls_server.metrics import RequestCounter
from calls_server.middleware import EveryAnswer
from calls_server.request_path.keys import OPERATION

Message = dict[str, Any]


def http_scope(path: str = "/api/calls/x", headers: list[tuple[bytes, bytes]] | None = None):
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 5000),
    }


def run(app: Any, scope: dict[str, Any]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def raising(error: Exception, after_start: bool = False):
    async def app(scope, receive, send):
        if after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise error

    return app


async def render(request: ConnexionRequest, error: Exception) -> ConnexionResponse:
    status = getattr(error, "status_code", 500)
    return ConnexionResponse(
        status_code=status,
        content_type="application/json",
        headers={"x-kind": type(error).__name__},
        body=f'{{"error": "{type(error).__name__}", "path": "{request.url.path}"}}',
    )


def with_handlers(middleware: Any) -> Any:
    for kind in (ApiError, HTTPException, Exception):
        middleware.add_exception_handler(kind, render)
    middleware.add_exception_handler(404, render)
    return middleware


@pytest.mark.parametrize(
    "error",
    [
        CallNotFound("call_1", "org_1"),
        HTTPException(status_code=404),
        HTTPException(status_code=405, headers={"Allow": "GET"}),
        BadRequestProblem(detail="no"),
        RuntimeError("a bug"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_envelopes_answer_an_error_as_connexions_exception_middleware_does(error):
    ours = run(with_handlers(Envelopes(raising(error))), http_scope())
    theirs = run(with_handlers(ExceptionMiddleware(raising(error))), http_scope())

    assert ours == theirs
    assert ours[0]["status"] == getattr(error, "status_code", 500)


def test_envelopes_raise_an_error_no_handler_takes():
    middleware = Envelopes(raising(KeyError("x")))  # Connexion's own handlers only

    middleware._exception_handlers.pop(Exception)

    with pytest.raises(KeyError):
        run(middleware, http_scope())


def test_envelopes_never_answer_twice_once_the_answer_started():
    middleware = with_handlers(Envelopes(raising(RuntimeError("late"), after_start=True)))

    with pytest.raises(RuntimeError, match="response already started"):
        run(middleware, http_scope())


class Counted:
    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []
        self.refusals: list[str] = []

    def count(self, scope: dict[str, Any], status: int, seconds: float) -> None:
        self.requests.append((scope.get(OPERATION) or "unmatched", status))
        if status == 429:
            self.refusals.append(scope[RATE_LIMIT_REFUSED])


def answering(status: int, headers: list[tuple[bytes, bytes]], **scope_keys: Any):
    async def app(scope, receive, send):
        scope.update(scope_keys)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def every_answer(app: Any, counted: Counted) -> EveryAnswer:
    return EveryAnswer(
        app,
        counter=counted,  # type: ignore[arg-type]
        ui_prefix="/api/ui",
        own_headers=lambda path: path.startswith("/console/"),
    )


def test_an_api_answer_carries_its_id_nosniff_no_store_and_the_allowance_once():
    counted = Counted()
    allowance = {"RateLimit-Limit": "60", "RateLimit-Remaining": "59"}
    app = answering(200, [(b"ratelimit-limit", b"60")], **{RATE_LIMIT_HEADERS: allowance})

    start = run(every_answer(app, counted), http_scope(headers=[(b"x-request-id", b"r-1")]))[0]

    assert start["headers"] == [
        (b"ratelimit-limit", b"60"),
        (b"x-content-type-options", b"nosniff"),
        (b"cache-control", b"no-store"),
        (b"ratelimit-remaining", b"59"),
        (b"x-request-id", b"r-1"),
    ]


def test_swagger_ui_files_may_be_cached_and_console_files_keep_their_own_headers():
    counted = Counted()
    app = answering(200, [(b"cache-control", b"no-cache")])

    ui = run(every_answer(app, counted), http_scope("/api/ui/index.html"))[0]["headers"]
    console = run(every_answer(app, counted), http_scope("/console/app.js"))[0]["headers"]

    assert (b"cache-control", b"no-store") not in ui
    assert (b"x-content-type-options", b"nosniff") in ui
    assert console[:-1] == [(b"cache-control", b"no-cache")]
    assert console[-1][0] == b"x-request-id"


def test_an_answer_is_counted_by_operation_and_status_and_a_refusal_by_its_limit():
    counted = Counted()
    app = answering(429, [], **{OPERATION: "getCall", RATE_LIMIT_REFUSED: "key"})

    run(every_answer(app, counted), http_scope())

    assert counted.requests == [("getCall", 429)]
    assert counted.refusals == ["key"]


def test_a_request_that_fails_unanswered_is_counted_as_a_500():
    counted = Counted()

    with pytest.raises(RuntimeError):
        run(every_answer(raising(RuntimeError("a bug")), counted), http_scope())

    assert counted.requests == [("unmatched", 500)]


def test_the_request_counter_names_what_no_operation_answered():
    class Requests:
        def __init__(self) -> None:
            self.seen: list[tuple[str, int]] = []

        def observe(self, operation: str, status: int, seconds: float) -> None:
            self.seen.append((operation, status))

    class Metrics:
        requests = Requests()

    counter = RequestCounter(lambda: Metrics, "/api")  # type: ignore[arg-type,return-value]

    for path in ("/api/openapi.json", "/api/ui/", "/nowhere"):
        counter.count(http_scope(path), 200, 0.001)

    assert Metrics.requests.seen == [("openapi", 200), ("swaggerUI", 200), ("unmatched", 200)]
