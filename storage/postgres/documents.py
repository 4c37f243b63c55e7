"""Records as they are stored: JSONB documents, written and read back with orjson."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import orjson


def _json(doc: Mapping[str, Any]) -> str:
    return orjson.dumps(doc).decode()


def _loads(data: bytes) -> dict[str, Any]:
    return cast(dict[str, Any], orjson.loads(data))


def _copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A private deep copy (documents are plain JSON: a JSON round trip is one)."""
    return _loads(orjson.dumps(doc))
