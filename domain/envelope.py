"""The one JSON shape of every response body, success or error: `{message, status, error, data}`."""

from __future__ import annotations

from typing import Any

Envelope = dict[str, Any]


def success(message: str, data: Any) -> Envelope:
    """A success body; `error` is null."""
    return {"message": message, "status": "success", "error": None, "data": data}


def failure(message: str, error: str) -> Envelope:
    """An error body: `message` is the human sentence, `error` the specific reason."""
    return {"message": message, "status": "error", "error": error, "data": None}


def unpack(answer: Any) -> tuple[Any, int, dict[str, str]]:
    """A handler's answer as (body, status, headers): handlers return a body alone (200),
    `(body, status)` or `(body, status, headers)`."""
    if isinstance(answer, tuple):
        body, status, *rest = answer
        return body, status, dict(rest[0]) if rest else {}
    return answer, 200, {}
