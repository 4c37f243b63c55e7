"""What a list request asks for, and how a call is matched, ordered and paged.

The request's shape, defaults and limits come from openapi.yaml (Connexion fills in the
defaults); this module only interprets a validated request. The order of a listing is the
sort field's value (calls without one last, in either order), then `created_at`, then the
order of storage; backends implement it with their own indexes.

Pages are asked for by number (`page`, `limit`) or by cursor: a page's `next_cursor` names
the position of its last call in the order, and the next page is the calls after it (a
keyset), so that paging through calls being added or removed never repeats or skips one,
and a page deep in the order costs what the first does. The position is the backend's
(opaque to clients); the cursor also carries a digest of the query it belongs to.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import orjson

from calls_server.domain.calls import Call
from calls_server.domain.errors import BadRequest

# The answer to a cursor this server did not issue (or not in this shape).
NOT_A_CURSOR = "'cursor' is not a cursor this server answered"
# What a position's numbers fit in: the stores' 64-bit integers.
_INT64 = range(-(2**63), 2**63)

# The fields a listing sorts by (the spec's SortBy; a test holds them equal): both stores
# index each of them.
SORT_FIELDS = ("created_at", "updated_at", "start_timestamp", "end_timestamp", "call_duration")
# Range filters: the request's name -> the call field it bounds.
RANGE_FIELDS = {
    "duration_ms": "call_duration",
    "start_timestamp": "start_timestamp",
    "created_at": "created_at",
}
_ENUM_FILTERS = ("call_status", "call_type", "direction")
# Every filter a listing takes (the spec's FilterCriteria; a test holds them equal).
FILTERS = (*_ENUM_FILTERS, "agent_id", *RANGE_FIELDS, "transcript_search")


@dataclass(frozen=True)
class CallQuery:
    """One page of an organization's calls, filtered and sorted."""

    page: int
    limit: int
    sort_by: str
    sort_order: str
    filters: Mapping[str, Any]
    cursor: str | None = None  # a `next_cursor` answered earlier: the calls after it
    asked: Mapping[str, Any] = dataclasses.field(
        default_factory=dict
    )  # the filters as sent (echoed)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> CallQuery:
        """The query of a `POST /api/calls` body (defaults already filled in)."""
        if body.get("cursor") is not None and body["page"] != 0:
            raise BadRequest("Send either 'page' or 'cursor', not both")
        return cls(
            page=body["page"],
            limit=body["limit"],
            sort_by=body["sort_by"],
            sort_order=body["sort_order"],
            filters=normalize_filters(body.get("filter_criteria") or {}),
            cursor=body.get("cursor"),
            asked=dict(body.get("filter_criteria") or {}),
        )

    @classmethod
    def from_query_params(cls, params: Mapping[str, Any]) -> CallQuery:
        """The query of `GET /api/calls`: ranges come split as `<name>_lower_threshold`."""
        criteria: dict[str, Any] = {
            name: params[name]
            for name in (*_ENUM_FILTERS, "agent_id", "transcript_search")
            if params.get(name) is not None
        }
        for name in RANGE_FIELDS:
            bounds = {
                bound: params[f"{name}_{bound}"]
                for bound in ("lower_threshold", "upper_threshold")
                if params.get(f"{name}_{bound}") is not None
            }
            if bounds:
                criteria[name] = bounds
        return cls.from_body({**params, "filter_criteria": criteria})

    @property
    def offset(self) -> int:
        return self.page * self.limit

    def matches(self, call: Call) -> bool:
        """Whether `call` passes every filter (filters combine with AND)."""
        f = self.filters
        for name in (*_ENUM_FILTERS, "agent_id"):
            if name in f and call[name] not in f[name]:
                return False
        for name, field in RANGE_FIELDS.items():
            if name in f and not _within(call[field], f[name]):
                return False
        return "transcript_search" not in f or _transcript_contains(
            call, f["transcript_search"].lower()
        )

    @property
    def descending(self) -> bool:
        return self.sort_order == "descending"

    def pagination(self, total: int, next_cursor: str | None) -> dict[str, Any]:
        """The pagination block, with both names upstream uses for the count and the cursor
        of the next page (None on the last)."""
        block = pagination(self.page, self.limit, total)
        if self.cursor is not None:  # a page after a cursor has no number
            block["has_previous_page"] = True
            block["has_next_page"] = next_cursor is not None
        return {**block, "next_cursor": next_cursor}

    def next_cursor(self, position: list[Any]) -> str:
        """The cursor of the page after the call at backend `position` in this order."""
        raw = orjson.dumps([self._digest(), position])
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def position(self) -> list[Any] | None:
        """The backend position this query's cursor names (None without a cursor).
        Raises BadRequest for a cursor this server did not issue for this query."""
        if self.cursor is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(self.cursor + "=" * (-len(self.cursor) % 4))
            decoded = orjson.loads(raw)
        except (binascii.Error, ValueError, TypeError):
            raise BadRequest(NOT_A_CURSOR) from None
        # Cursors are not signed: anything decoded is checked to have the shape of one
        # issued before a backend sees it.
        if not (
            isinstance(decoded, list)
            and len(decoded) == 2
            and isinstance(decoded[0], str)
            and _is_position(decoded[1])
        ):
            raise BadRequest(NOT_A_CURSOR)
        digest, position = decoded
        if digest != self._digest():
            raise BadRequest(
                "'cursor' belongs to a listing with another sort or other filters: "
                "send them as they were when the cursor was answered"
            )
        return cast(list[int], position)

    def _digest(self) -> str:
        asked = [self.sort_by, self.sort_order, self.filters]
        canonical = orjson.dumps(asked, option=orjson.OPT_SORT_KEYS)
        return hashlib.blake2b(canonical, digest_size=6).hexdigest()


class CallPage(NamedTuple):
    """What a backend answers to a `CallQuery`."""

    calls: list[Call]
    total: int  # how many calls match, in all
    next_position: list[Any] | None  # the last call's position, when more calls follow


def pagination(page: int, limit: int, total: int) -> dict[str, Any]:
    """The pagination block of 0-based page `page` of `limit` items out of `total`."""
    total_pages = math.ceil(total / limit)
    return {
        "page": page,
        "limit": limit,
        "total": total,
        "total_count": total,
        "total_pages": total_pages,
        "has_next_page": page + 1 < total_pages,
        "has_previous_page": page > 0,
    }


def normalize_filters(criteria: Mapping[str, Any]) -> dict[str, Any]:
    """Filter criteria with enum values lower-cased and one-or-many filters as lists."""
    filters: dict[str, Any] = {}
    for name, value in criteria.items():
        if name in _ENUM_FILTERS or name == "agent_id":
            values = value if isinstance(value, list) else [value]
            if name != "agent_id":
                values = [v.lower() for v in values]
            filters[name] = list(dict.fromkeys(values))
        else:
            filters[name] = value
    return filters


def _is_position(position: Any) -> bool:
    """Whether `position` has the shape of a position the backends issue: [0, value,
    created_at, seq] or [1, created_at, seq], in 64-bit integers."""
    return (
        isinstance(position, list)
        and len(position) in (3, 4)
        and all(type(v) is int and v in _INT64 for v in position)
        and position[0] == 4 - len(position)
    )


def _within(value: int | None, bounds: Mapping[str, int]) -> bool:
    if value is None:
        return False
    return bounds.get("lower_threshold", value) <= value <= bounds.get("upper_threshold", value)


def _transcript_contains(call: Call, needle: str) -> bool:
    if needle in (call["transcript"] or "").lower():
        return True
    return any(
        isinstance(entry.get("content"), str) and needle in entry["content"].lower()
        for entry in call["transcript_object"]
    )
