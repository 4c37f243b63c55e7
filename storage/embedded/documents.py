"""Stored documents: never mutated (replaced), handed out as private copies, kept in the
order stored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

_MAX = "\U0010ffff"  # sorts after every organization and call id


def _doc_order(item: tuple[str, Any]) -> int:
    return int(item[0])


def _copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A private deep copy (stored documents are plain JSON, so a JSON round trip is one;
    orjson's is several times faster than copy.deepcopy or the json module's)."""
    return dict(orjson.loads(orjson.dumps(doc)))
