"""Log lines: each names the request it was written for, as text or as JSON lines."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Any

# The id of the request being handled (set by calls_server.middleware.RequestId), for log
# lines. Here rather than beside the middleware: logging is set up by every command, and the
# web stack is imported only by the one that serves.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)

TEXT_FORMAT = "%(levelname)s: [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Puts the id of the request being handled (or "-") on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and exc_info)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def log_config(level: str, as_json: bool) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the server and uvicorn's own loggers alike."""
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
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            # httpx logs every request at INFO: one line per webhook delivery and dialer job,
            # URL included (which may carry a receiver's token). Attempts are recorded on
            # the events instead; its warnings still come through.
            "httpx": {"level": "WARNING"},
        },
    }
