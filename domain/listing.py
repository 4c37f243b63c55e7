"""What a list request asks for, and how a call is matched, ordered and paged.

The request's shape, defaults and limits come from openapi.yaml (Connexion fills in the
defaults); this module only interprets a validated request. The order of a listing is the
sort field's value (calls without one last, in either order), then `created_at`, then the
order of storage; backends implement it with their own indexes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calls_server.domain.calls import Call

# Range filters: the request's name -> the call field it bounds.
RANGE_FIELDS = {
    "duration_ms": "call_duration",
    "start_timestamp": "start_timestamp",
    "created_at": "created_at",
}
_ENUM_FILTERS = ("call_status", "call_type", "direction")


@dataclass(frozen=True)
class CallQuery:
    """One page of an organization's calls, filtered and sorted."""

    page: int
    limit: int
    sort_by: str
    sort_order: str
    filters: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> CallQuery:
        """The query of a `POST /api/calls` body (defaults already filled in)."""
        return cls(
            page=body["page"],
            limit=body["limit"],
            sort_by=body["sort_by"],
            sort_order=body["sort_order"],
            filters=normalize_filters(body.get("filter_criteria") or {}),
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

    def pagination(self, total: int) -> dict[str, Any]:
        """The pagination block, with both names upstream uses for the count."""
        return pagination(self.page, self.limit, total)


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
