"""Log lines: each names the request it was written for, as text or as JSON lines; and the
access log, one line per request with its fields (`AccessLine`)."""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote_to_bytes

# The id of the request being handled (set by calls_server.middleware.EveryAnswer), for log
# lines. Here rather than beside the middleware: logging is set up by every command, and the
# web stack is imported only by the one that serves.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)

TEXT_FORMAT = "%(levelname)s: [%(request_id)s] %(message)s"

# The logger of the access log: one INFO line per request (calls_server.middleware.EveryAnswer
# writes it), replacing uvicorn's, which has no fields.
ACCESS_LOGGER = "calls_server.access"


class AccessLine:
    """One answered request, as the access log writes it: `key=value` pairs as text, or
    separate keys of the JSON line (`JsonFormatter`). The record's message is this object,
    turned into text only if a handler writes it."""

    __slots__ = ("client", "duration_ms", "method", "organization_id", "path", "status")

    def __init__(
        self,
        method: str,
        path: str,
        status: int | None,
        duration_ms: float,
        organization_id: str | None,
        client: str | None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.duration_ms = duration_ms
        self.organization_id = organization_id
        self.client = client

    def fields(self) -> dict[str, Any]:
        """The fields, by the names JSON lines give them."""
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": round(self.duration_ms, 2),
            "organization_id": self.organization_id,
            "client": self.client,
        }

    def summary(self) -> str:
        """What a JSON line's `message` says: `GET /api/calls 200`."""
        return f"{self.method} {self.path} {self.status if self.status is not None else '-'}"

    def __str__(self) -> str:
        return (
            f"method={self.method} path={_plain(self.path)} "
            f"status={self.status if self.status is not None else '-'} "
            f"duration_ms={self.duration_ms:.2f} "
            f"organization_id={_plain(self.organization_id)} client={_plain(self.client)}"
        )


# A value a `key=value` line must quote: it would otherwise run into the next pair.
_NEEDS_QUOTES = re.compile(r'[\s"\\]')


def _plain(value: str | None) -> str:
    if value is None:
        return "-"
    return json.dumps(value) if _NEEDS_QUOTES.search(value) else value


# Query parameters whose values are not written to the access log: a recording URL's
# `token` (handed to players instead of credentials), and any a client sends that is named
# like a credential.
_SECRET_NAME = re.compile(rb"token|secret|key|password|passwd|signature|auth|credential", re.I)


def logged_target(raw_path: bytes, query_string: bytes) -> str:
    """The request target as the access log shows it: the path as sent (percent-encoded, so
    no space or line break a client sends can forge a field or a line), and the query
    string with the values of credential-like parameters replaced by `REDACTED`."""
    path = raw_path.decode("latin-1")
    if not query_string:
        return path
    if _SECRET_NAME.search(query_string) is None:  # the usual case: nothing to look at
        return f"{path}?{query_string.decode('latin-1')}"
    pairs = []
    for pair in query_string.split(b"&"):
        name, equals, _ = pair.partition(b"=")
        secret = equals and _SECRET_NAME.search(unquote_to_bytes(name))
        pairs.append(name + b"=REDACTED" if secret else pair)
    return f"{path}?{b'&'.join(pairs).decode('latin-1')}"


class RequestIdFilter(logging.Filter):
    """Puts the id of the request being handled (or "-") on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and exc_info);
    an access line's fields are keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        access = record.msg if isinstance(record.msg, AccessLine) else None
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": access.summary() if access else record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if access:
            line.update(access.fields())
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def log_config(level: str, as_json: bool, access: bool = True) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the server and uvicorn's own loggers alike; with
    `access` false, the access log (INFO lines) is off."""
    formatter: dict[str, Any] = {"()": JsonFormatter} if as_json else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            **{
                name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
                for name in ("uvicorn", "uvicorn.error")
            },
            # Above INFO when off: the middleware then does not even make the line.
            ACCESS_LOGGER: {"level": level.upper() if access else "CRITICAL"},
            # httpx logs every request at INFO: one line per webhook delivery and dialer job,
            # URL included (which may carry a receiver's token). Attempts are recorded on
            # the events instead; its warnings still come through.
            "httpx": {"level": "WARNING"},
        },
    }
