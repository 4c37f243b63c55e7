"""In-memory indexes over one organization's calls, so that listing never scans.

Per organization:

- for each value of `call_status`, `call_type`, `direction` and `agent_id`, its calls in
  creation order, as `(created_at, doc_id)`;
- for each sortable field, a sorted list of `(value, created_at, doc_id)` for the calls that
  have a value, and one of `(created_at, doc_id)` for those that do not (they come last in
  either order).

- how many calls have each combination of those four values, per agent.

The indexes read calls as stored (`stored`): a call's JSON (orjson bytes, parsed only when
it is read) followed by the fields the indexes and the store's own bookkeeping need
(`SUMMARY`), so that a store opens from its snapshot without parsing a single call.

A query intersects the sets its range filters select through the sorted lists (or takes
the calls of its rarest equality filter's values), checks the survivors against its
equality filters on the stored calls (no set per value is kept: they would cost more than
a call's other entries together) and then for `transcript_search`, and reads its page off
the sorted list of its sort field, or sorts the few survivors when that is cheaper. The
most common list, newest first filtered on those four fields only, builds no set at all:
its total is summed from the combination counts and its page is walked off the creation
order of its rarest filter value, so it costs the same at a million calls as at a
thousand.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from operator import is_not, itemgetter, not_
from typing import Any

import orjson
from sortedcontainers import SortedList

from calls_server.domain import calls
from calls_server.domain.calls import Call
from calls_server.domain.listing import RANGE_FIELDS, SORT_FIELDS, CallQuery

EQUALITY_FIELDS = ("call_status", "call_type", "direction", "agent_id")
# What a stored call carries beside its JSON, in this order: the call's fields, then the
# process whose sandbox plays it (`calls.player`).
SUMMARY = (
    "organization_id",
    "call_id",
    *EQUALITY_FIELDS,
    *SORT_FIELDS,
    "scheduled_timestamp",
    "player",
)
# Where each of them is in a stored call (its JSON is at 0).
AT = {name: n + 1 for n, name in enumerate(SUMMARY)}
# The summary's values that repeat from call to call (kept once each: `REPEATED` are their
# positions among the summary's values).
_SHARED = ("organization_id", *EQUALITY_FIELDS)
REPEATED = frozenset(AT[name] - 1 for name in _SHARED)
StoredCall = tuple[Any, ...]
_EQ_AT = tuple(AT[f] for f in EQUALITY_FIELDS)
_SORT_AT = tuple(AT[f] for f in SORT_FIELDS)
_CALL_ID, _CREATED, _AGENT = AT["call_id"], AT["created_at"], AT["agent_id"]
_COMBINATION = itemgetter(AT["call_status"], AT["call_type"], AT["direction"])
_FIRST, _LAST = itemgetter(0), itemgetter(-1)


def stored(call: Call) -> StoredCall:
    """`call` as stored: its JSON, then the values of `SUMMARY` (repeated ones interned)."""
    summary = [call.get(name) for name in SUMMARY[:-1]]
    for name in _SHARED:
        value = summary[AT[name] - 1]
        if isinstance(value, str):
            summary[AT[name] - 1] = sys.intern(value)
    return (orjson.dumps(call), *summary, calls.player(call))


def parsed(call: StoredCall) -> Call:
    """A stored call as a new dict of its own (the caller's to change)."""
    result: Call = orjson.loads(call[0])
    return result


_INF = float("inf")


class OrgCallIndex:
    """The indexes of one organization's calls (callers hold the store's lock)."""

    def __init__(self, calls: Iterable[tuple[int, StoredCall]] = ()) -> None:
        # Built in bulk, a column at a time (C-level map, zip and sort rather than a Python
        # loop per call): a million calls are indexed in about a second.
        found = list(calls)
        doc_ids = list(map(_FIRST, found))
        kept = list(map(_LAST, found))

        def column(at: int) -> list[Any]:
            return list(map(itemgetter(at), kept))

        # Each call's (created_at, doc_id), one tuple shared by every list that holds it.
        created = column(_CREATED)
        pairs = list(zip(created, doc_ids, strict=True))
        self.call_ids: dict[str, int] = dict(zip(column(_CALL_ID), doc_ids, strict=True))
        # agent -> (call_status, call_type, direction) -> how many calls have them
        self.combinations: dict[Any, dict[tuple[Any, ...], int]] = {}
        keys = zip(column(_AGENT), map(_COMBINATION, kept), strict=True)
        for (agent, key), count in Counter(keys).items():
            self.combinations.setdefault(agent, {})[key] = count
        # Per equality field: value -> the calls that have it in creation order, for the
        # default sort: a page of "the newest ended calls" walks the ended calls, not
        # everything newer.
        self.created: dict[str, dict[Any, SortedList]] = {}
        for field, at in zip(EQUALITY_FIELDS, _EQ_AT, strict=True):
            groups: dict[Any, list[tuple[int, int]]] = {}
            for value, pair in zip(column(at), pairs, strict=True):
                group = groups.get(value)
                if group is None:
                    groups[value] = [pair]
                else:
                    group.append(pair)
            self.created[field] = {value: SortedList(group) for value, group in groups.items()}
        # Per sort field: (value, created_at, doc_id) of the calls with a value, sorted, and
        # (created_at, doc_id) of those without (a call's entry: `_entry`).
        self.present: dict[str, SortedList] = {}
        self.missing: dict[str, SortedList] = {}
        for field, at in zip(SORT_FIELDS, _SORT_AT, strict=True):
            values = column(at)
            known = list(map(is_not, values, itertools.repeat(None)))
            with_value = (itertools.compress(c, known) for c in (values, created, doc_ids))
            present = list(zip(*with_value, strict=True))
            missing = list(itertools.compress(pairs, map(not_, known)))
            self.present[field], self.missing[field] = SortedList(present), SortedList(missing)

    def __len__(self) -> int:
        return len(self.call_ids)

    def add(self, doc_id: int, call: StoredCall) -> None:
        self.call_ids[call[_CALL_ID]] = doc_id
        self._count(call, 1)
        created_at = call[_CREATED]
        pair = (created_at, doc_id)  # shared by every list that holds it
        for field, at in zip(EQUALITY_FIELDS, _EQ_AT, strict=True):
            self.created[field].setdefault(call[at], SortedList()).add(pair)
        for field, at in zip(SORT_FIELDS, _SORT_AT, strict=True):
            if call[at] is None:
                self.missing[field].add(pair)
            else:
                self.present[field].add((call[at], created_at, doc_id))

    def remove(self, doc_id: int, call: StoredCall) -> None:
        del self.call_ids[call[_CALL_ID]]
        self._count(call, -1)
        for field, at in zip(EQUALITY_FIELDS, _EQ_AT, strict=True):
            value = call[at]
            ordered = self.created[field][value]
            ordered.remove((call[_CREATED], doc_id))
            if not ordered:
                del self.created[field][value]
        for field, at in zip(SORT_FIELDS, _SORT_AT, strict=True):
            entry = _entry(call, at, doc_id)
            (self.missing if len(entry) == 2 else self.present)[field].remove(entry)

    def _count(self, call: StoredCall, change: int) -> None:
        counts = self.combinations.setdefault(call[_AGENT], {})
        key = _COMBINATION(call)
        counts[key] = counts.get(key, 0) + change
        if not counts[key]:
            del counts[key]
            if not counts:
                del self.combinations[call[_AGENT]]

    def replace(self, doc_id: int, old: StoredCall, new: StoredCall) -> None:
        """Index `new` in place of `old`, touching only the lists of the fields that changed
        (a metadata merge moves the call in `updated_at`'s list alone)."""
        created_at = old[_CREATED]
        if old[_CALL_ID] != new[_CALL_ID] or new[_CREATED] != created_at:
            self.remove(doc_id, old)
            self.add(doc_id, new)
            return
        if old[_AGENT] != new[_AGENT] or _COMBINATION(old) != _COMBINATION(new):
            self._count(old, -1)
            self._count(new, 1)
        pair = (created_at, doc_id)
        for field, at in zip(EQUALITY_FIELDS, _EQ_AT, strict=True):
            if old[at] != new[at]:
                by_value = self.created[field]
                by_value[old[at]].remove(pair)
                if not by_value[old[at]]:
                    del by_value[old[at]]
                by_value.setdefault(new[at], SortedList()).add(pair)
        for field, at in zip(SORT_FIELDS, _SORT_AT, strict=True):
            if old[at] != new[at]:
                before, after = _entry(old, at, doc_id), _entry(new, at, doc_id)
                (self.missing if len(before) == 2 else self.present)[field].remove(before)
                (self.missing if len(after) == 2 else self.present)[field].add(after)

    def select(
        self, query: CallQuery, docs: Mapping[str, StoredCall]
    ) -> tuple[list[int], int, list[Any] | None]:
        """The doc ids of the requested page, how many calls match in all, and the position
        of the page's last call when more calls follow (for the next page's cursor)."""
        after = query.position()
        if after is not None:
            return self._after(query, docs, after)
        ids, total = self._page(query, docs)
        more = bool(ids) and query.offset + len(ids) < total
        return ids, total, self._position(query, ids[-1], docs) if more else None

    def _position(self, query: CallQuery, doc_id: int, docs: Mapping[str, StoredCall]) -> list[Any]:
        """Where a call is in `query`'s order: its entry in the sort field's sorted list,
        led by 0 for calls with a value and 1 for those without."""
        (entry,) = _entries(query.sort_by, [doc_id], docs)
        return [0 if len(entry) == 3 else 1, *entry]

    def _after(
        self, query: CallQuery, docs: Mapping[str, StoredCall], after: list[Any]
    ) -> tuple[list[int], int, list[Any] | None]:
        """The page of the calls after position `after` (a keyset page): it starts by
        bisection, whatever the depth, and never repeats or skips a call that stayed.
        (`CallQuery.position` answered `after` in the shape `_position` gives.)"""
        group, entry = after[0], tuple(after[1:])
        wanted = query.limit + 1  # one more tells whether another page follows
        if set(query.filters) <= set(EQUALITY_FIELDS):
            total = self._total(query) if query.filters else len(self)
            equality = _equality_filters(query)
            # Newest first on a rare value walks that value's calls, not everything newer.
            narrowest = self._narrowest_created(query, after=entry[-2:] if group == 0 else None)
            ordered = (
                ((created, created, doc_id) for created, doc_id in narrowest)
                if narrowest is not None and group == 0
                else self._entries_after(query, group, entry)
            )
            passing = (e for e in ordered if _passes(e[-1], equality, docs))
            found = list(itertools.islice(passing, wanted))
        else:
            candidates = self._candidates(query, docs)
            assert candidates is not None  # a filter that is not an equality selects
            total = len(candidates)
            found = self._few_after(query, candidates, docs, group, entry, wanted)
        page = [e[-1] for e in found[: query.limit]]
        more = len(found) > query.limit
        return page, total, self._position(query, page[-1], docs) if more else None

    def _entries_after(
        self, query: CallQuery, group: int, entry: tuple[Any, ...]
    ) -> Iterator[tuple[Any, ...]]:
        """The sort field's entries after (`group`, `entry`), in the query's order."""
        present, missing = self.present[query.sort_by], self.missing[query.sort_by]
        down = query.descending
        if group == 0:
            if down:
                yield from present.irange(maximum=entry, inclusive=(True, False), reverse=True)
            else:
                yield from present.irange(minimum=entry, inclusive=(False, True))
            yield from reversed(missing) if down else missing
        elif down:
            yield from missing.irange(maximum=entry, inclusive=(True, False), reverse=True)
        else:
            yield from missing.irange(minimum=entry, inclusive=(False, True))

    def _few_after(
        self,
        query: CallQuery,
        candidates: set[int],
        docs: Mapping[str, StoredCall],
        group: int,
        entry: tuple[Any, ...],
        count: int,
    ) -> list[tuple[Any, ...]]:
        """The first `count` candidates after (`group`, `entry`) in the query's order."""
        down = query.descending
        groups: list[list[tuple[Any, ...]]] = [[], []]
        for e in _entries(query.sort_by, candidates, docs):
            g = 0 if len(e) == 3 else 1
            if g > group or (g == group and (e < entry if down else e > entry)):
                groups[g].append(e)
        pick = heapq.nlargest if down else heapq.nsmallest
        first = pick(count, groups[0])
        return [*first, *pick(count - len(first), groups[1])]

    def _page(self, query: CallQuery, docs: Mapping[str, StoredCall]) -> tuple[list[int], int]:
        """The doc ids of page `query.page`, and how many calls match in all."""
        narrowest = self._narrowest_created(query)
        if narrowest is not None and set(query.filters) <= set(EQUALITY_FIELDS):
            first = self._first_matching(narrowest, query, query.offset + query.limit, docs)
            return first[query.offset :], self._total(query)
        candidates = self._candidates(query, docs)
        total = len(self) if candidates is None else len(candidates)
        start, stop = query.offset, query.offset + query.limit
        if candidates is None:
            return [self._at(query, i) for i in range(start, min(stop, total))], total
        narrowest = self._narrowest_created(query)
        if narrowest is not None:
            return self._first_in(narrowest, candidates, stop)[start:], total
        # Walk the sort order until `stop` survivors turn up, or sort the survivors: whichever
        # is cheaper. Matches may cluster anywhere in the order, so the walk gets a budget
        # of what sorting would cost, and gives way to sorting when it runs out.
        if total <= stop * len(self) / max(1, total):
            return self._sorted_few(query, candidates, docs, stop)[start:], total
        page: list[int] = []
        for steps, doc_id in enumerate(self._in_order(query)):
            if doc_id in candidates:
                page.append(doc_id)
                if len(page) == stop:
                    return page[start:], total
            if steps > total:
                break
        return self._sorted_few(query, candidates, docs, stop)[start:], total

    def _narrowest_created(
        self, query: CallQuery, after: tuple[Any, ...] | None = None
    ) -> Iterator[tuple[int, int]] | None:
        """For the created_at order: the calls of the rarest equality filter, in order
        (those after `after`, a `(created_at, doc_id)`, if given)."""
        field = self._rarest(query)
        if query.sort_by != "created_at" or field is None:
            return None
        lists = [self.created[field][v] for v in query.filters[field] if v in self.created[field]]
        if query.descending:
            if after is not None:
                ends = (
                    e.irange(maximum=after, inclusive=(True, False), reverse=True) for e in lists
                )
                return heapq.merge(*ends, reverse=True)
            return heapq.merge(*(reversed(entries) for entries in lists), reverse=True)
        if after is not None:
            newer = (e.irange(minimum=after, inclusive=(False, True)) for e in lists)
            return heapq.merge(*newer)
        return heapq.merge(*lists)

    def _total(self, query: CallQuery) -> int:
        """How many calls pass equality filters only, summed from the combination counts."""
        filters = query.filters
        agents = filters.get("agent_id", self.combinations)
        allowed = [set(filters[f]) if f in filters else None for f in EQUALITY_FIELDS[:3]]
        total = 0
        for agent in agents:
            for key, count in self.combinations.get(agent, {}).items():
                if all(a is None or v in a for v, a in zip(key, allowed, strict=True)):
                    total += count
        return total

    def _rarest(self, query: CallQuery) -> str | None:
        """The equality filter of `query` that the fewest calls pass, if it has any."""
        fields = [f for f in EQUALITY_FIELDS if f in query.filters]
        if not fields:
            return None

        def size(field: str) -> int:
            return sum(len(self.created[field].get(v, ())) for v in query.filters[field])

        return min(fields, key=size)

    def _first_matching(
        self,
        ordered: Iterator[tuple[int, int]],
        query: CallQuery,
        count: int,
        docs: Mapping[str, StoredCall],
    ) -> list[int]:
        """The first `count` calls of `ordered` that pass every equality filter."""
        equality = _equality_filters(query)
        page: list[int] = []
        for _, doc_id in ordered:
            if _passes(doc_id, equality, docs):
                page.append(doc_id)
                if len(page) == count:
                    break
        return page

    @staticmethod
    def _first_in(
        ordered: Iterator[tuple[int, int]], candidates: set[int], count: int
    ) -> list[int]:
        page: list[int] = []
        for _, doc_id in ordered:
            if doc_id in candidates:
                page.append(doc_id)
                if len(page) == count:
                    break
        return page

    def _candidates(self, query: CallQuery, docs: Mapping[str, StoredCall]) -> set[int] | None:
        filters = query.filters
        selected: list[set[int]] = []
        for name, field in RANGE_FIELDS.items():
            if name in filters:
                bounds = filters[name]
                low, high = bounds.get("lower_threshold"), bounds.get("upper_threshold")
                selected.append(
                    {
                        entry[2]
                        for entry in self.present[field].irange(
                            None if low is None else (low,),
                            None if high is None else (high, _INF, _INF),
                        )
                    }
                )
        rarest = self._rarest(query)
        if not selected and rarest is not None:  # the calls of its rarest equality filter
            by_value = self.created[rarest]
            lists = [by_value[v] for v in filters[rarest] if v in by_value]
            selected.append(set(map(_LAST, itertools.chain.from_iterable(lists))))
        candidates: set[int] | None = None
        if selected:
            selected.sort(key=len)
            candidates = selected[0].intersection(*selected[1:])
            equality = _equality_filters(query)
            if equality:
                candidates = {i for i in candidates if _passes(i, equality, docs)}
        if "transcript_search" in filters:
            pool = self.call_ids.values() if candidates is None else candidates
            needle = _plain_ascii(filters["transcript_search"].lower())
            candidates = {
                i
                for i in pool
                if _may_contain(docs[str(i)][0], needle) and query.matches(parsed(docs[str(i)]))
            }
        return candidates

    def _at(self, query: CallQuery, position: int) -> int:
        present, missing = self.present[query.sort_by], self.missing[query.sort_by]
        if position < len(present):
            doc_id: int = present[~position if query.descending else position][-1]
        else:
            position -= len(present)
            doc_id = missing[~position if query.descending else position][-1]
        return doc_id

    def _in_order(self, query: CallQuery) -> Iterator[int]:
        for entries in (self.present[query.sort_by], self.missing[query.sort_by]):
            for entry in reversed(entries) if query.descending else entries:
                yield entry[-1]

    def _sorted_few(
        self, query: CallQuery, candidates: set[int], docs: Mapping[str, StoredCall], count: int
    ) -> list[int]:
        found = _entries(query.sort_by, candidates, docs)
        pick = heapq.nlargest if query.descending else heapq.nsmallest
        # The sorted lists' order: calls with a value, then those without, each by entry.
        first = pick(count, (e for e in found if len(e) == 3))
        rest = pick(count - len(first), (e for e in found if len(e) == 2))
        return [entry[-1] for entry in (*first, *rest)]


def _entry(call: StoredCall, at: int, doc_id: int) -> tuple[Any, ...]:
    """A call's entry in the sorted lists of the field at `at` (`present` or `missing`)."""
    value = call[at]
    return (call[_CREATED], doc_id) if value is None else (value, call[_CREATED], doc_id)


def _entries(
    field: str, doc_ids: Iterable[int], docs: Mapping[str, StoredCall]
) -> list[tuple[Any, ...]]:
    """The entries of calls `doc_ids` in the sorted lists of `field`, read off the calls:
    kept per call, they would cost a dict entry per call and field."""
    at = AT[field]
    return [_entry(docs[str(doc_id)], at, doc_id) for doc_id in doc_ids]


def _plain_ascii(needle: str) -> bytes | None:
    """`needle` as bytes if a call's JSON holds it verbatim wherever its text does (ASCII,
    nothing JSON escapes: no quote, backslash or control character); else None."""
    if needle.isascii() and not any(c in '"\\' or c < " " for c in needle):
        return needle.encode()
    return None


def _may_contain(data: bytes, needle: bytes | None) -> bool:
    """False only if a call (its JSON `data`) cannot hold `needle` (lowercase) in any text
    of it, lowercased: a test on the bytes that spares parsing most calls a search skips.
    On ASCII JSON, bytes.lower() lowercases as str.lower() does."""
    return needle is None or not data.isascii() or needle in data.lower()


def _equality_filters(query: CallQuery) -> list[tuple[int, Collection[Any]]]:
    """Where each equality filter's field is in a stored call, and the values it allows."""
    return [(AT[f], query.filters[f]) for f in EQUALITY_FIELDS if f in query.filters]


def _passes(
    doc_id: int, equality: list[tuple[int, Collection[Any]]], docs: Mapping[str, StoredCall]
) -> bool:
    """Whether a call has one of the values of every equality filter."""
    call = docs[str(doc_id)]
    return all(call[at] in values for at, values in equality)
