"""Calls: adding, changing and removing one (with the organization's usage and the events
owed), listing them (keyset pages read off the indexes: `_Scan`) and the calls due or
abandoned."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, cast

import orjson
from psycopg import sql

from calls_server.domain import calls, key_checks, record_kinds
from calls_server.domain.calls import Call
from calls_server.domain.errors import BadRequest, CallNotFound
from calls_server.domain.keys import ApiKey
from calls_server.domain.listing import RANGE_FIELDS, SORT_FIELDS, CallPage, CallQuery
from calls_server.domain.quotas import Quota
from calls_server.storage.interface import UNDER_CLAIM, EventSource
from calls_server.storage.postgres.accounts import _remember_key
from calls_server.storage.postgres.documents import _copy, _json, _loads
from calls_server.storage.postgres.idempotency import _mark_claim
from calls_server.storage.postgres.outbox import _record_events
from calls_server.storage.postgres.pool import Connection, Connections
from calls_server.storage.postgres_presence import _LIVE as LIVE_PROCESSES
from calls_server.storage.postgres_presence import PRESENCE, Presence

# Call fields kept as columns besides the document (see 0001_initial.sql).
_CALL_COLUMNS = (
    "call_status",
    "call_type",
    "direction",
    "agent_id",
    "created_at",
    "updated_at",
    "start_timestamp",
    "end_timestamp",
    "call_duration",
    "scheduled_timestamp",
)
_EQUALITY_FIELDS = ("call_status", "call_type", "direction", "agent_id")


_GET_CALL = "SELECT doc FROM calls WHERE organization_id = %s AND call_id = %s"
# The key's record (for the request's key check) and the call, in one round trip.
_GET_KEY_AND_CALL = (
    "SELECT (SELECT doc FROM api_keys WHERE api_key = %s),"
    " (SELECT doc FROM calls WHERE organization_id = %s AND call_id = %s)"
)


class CallsMixin(Connections):
    """`CallRecords`, `ScheduledCalls`, `SandboxPlayers`: the tables calls and
    organization_usage."""

    _quota: Quota
    _limited: bool
    _event_source: EventSource | None
    _presence: Presence
    _known_keys: dict[str, ApiKey]  # AccountsMixin's

    def add_call(self, call: Call) -> None:
        """Store a new call. Raises DuplicateId if its call_id exists in its organization."""
        org = call["organization_id"]
        data = _call_json(call)
        stored = _loads(data)  # the call as stored, for the event source
        values = (org, call["call_id"], *_call_values(stored, data))
        if not self._limited and UNDER_CLAIM.get() is None:
            # The common case, a statement that is its own transaction (no BEGIN and COMMIT
            # round trips): the call and its usage, unless events may be owed (the
            # organization has webhooks): then nothing, and the transaction below. The
            # request's key check, if one is owed, is carried: nothing is written unless
            # the key's record is still the one the pair was verified against.
            taken = key_checks.take()
            try:
                with self._writing() as conn:
                    if taken is None:
                        row = conn.execute(
                            _ADD_CALL_ALONE,
                            (self._event_source is not None, org, *values, _stripe()),
                        ).fetchone()
                    else:
                        check = taken[1]
                        row = conn.execute(
                            _ADD_CALL_CHECKED,
                            (check.api_key, _json(check.known or {}),
                             self._event_source is not None, org, *values, _stripe()),
                        ).fetchone()  # fmt: skip
            except BaseException:
                if taken is not None:
                    taken[0].check = taken[1]  # still owed
                raise
            assert row is not None  # the statement's SELECT answers one row
            inserted, deferred = row[:2]
            if taken is not None:
                carrying, check = taken
                found = _remember_key(self._known_keys, check.api_key, row[3])
                carrying.check = check
                carrying.confirmed(found)  # Unauthorized if the pair no longer verifies
                # Not the record verified against, yet the pair verifies: nothing was
                # written; the transaction below writes it, the check done.
                deferred = deferred or not row[2]
            if not deferred:
                if not inserted:
                    raise record_kinds.CALL.duplicate(call["call_id"])
                return
        with self._transaction() as conn:
            inserted = conn.execute(_ADD_CALL, values).fetchone()
            if inserted is None:
                raise record_kinds.CALL.duplicate(call["call_id"])
            held = _use(conn, org, 1, len(data), exact=self._limited)
            if held is not None:
                self._quota.check(*held)
            _record_events(conn, self._event_source, None, stored)
            _mark_claim(conn, record_kinds.CALL.name, call["call_id"])

    def get_call(self, organization_id: str, call_id: str) -> Call:
        """The call. Raises CallNotFound, also when it belongs to another organization.
        The request's key check, if one is owed, is done with the key's record read in the
        same statement (domain/key_checks.py): Unauthorized first if the pair no longer
        verifies."""
        carrying = key_checks.current()
        check = None if carrying is None else carrying.check
        with self._reading() as conn:
            if check is None:
                row = conn.execute(_GET_CALL, (organization_id, call_id)).fetchone()
            else:
                both = conn.execute(
                    _GET_KEY_AND_CALL, (check.api_key, organization_id, call_id)
                ).fetchone()
        if check is not None:
            assert carrying is not None
            assert both is not None  # scalar subqueries: always one row
            carrying.confirmed(_remember_key(self._known_keys, check.api_key, both[0]))
            row = None if both[1] is None else (both[1],)
        if row is None:
            raise CallNotFound(call_id)
        return cast(Call, row[0])

    def change_call(
        self, organization_id: str, call_id: str, change: Callable[[Call], Call]
    ) -> Call:
        """Replace the call by `change(call)` atomically and return the new record."""
        with self._transaction() as conn:
            old, old_size = self._locked_call(conn, organization_id, call_id)
            changed = change(_copy(old))
            data = _call_json(changed)
            new = _loads(data)
            conn.execute(
                "UPDATE calls SET doc = %s::jsonb, size = %s, call_status = %s, call_type = %s,"
                " direction = %s, agent_id = %s, created_at = %s, updated_at = %s,"
                " start_timestamp = %s, end_timestamp = %s, call_duration = %s,"
                " scheduled_timestamp = %s, search_parts = %s, search_text = %s,"
                " played_by = %s"
                " WHERE organization_id = %s AND call_id = %s",
                (*_call_values(new, data), organization_id, call_id),
            )
            grown = len(data) - old_size
            if grown:
                held = _use(conn, organization_id, 0, grown, exact=self._limited)
                if held is not None and grown > 0 and self._quota.max_bytes:
                    self._quota.check(*held)
            _record_events(conn, self._event_source, old, new)
        return changed

    def delete_call(
        self, organization_id: str, call_id: str, check: Callable[[Call], None] | None = None
    ) -> Call:
        """Remove the call for good and return it (after `check`, if given, passes)."""
        with self._transaction() as conn:
            old, old_size = self._locked_call(conn, organization_id, call_id)
            if check is not None:
                check(_copy(old))
            conn.execute(
                "DELETE FROM calls WHERE organization_id = %s AND call_id = %s",
                (organization_id, call_id),
            )
            _use(conn, organization_id, -1, -old_size, exact=self._limited)
            _record_events(conn, self._event_source, _copy(old), None)
        return old

    def list_calls(self, organization_id: str, query: CallQuery) -> CallPage:
        """One page of the organization's calls that match `query`, how many match, and the
        last one's position if more follow.

        The order is the sort field's value, then created_at, then seq (insertion), calls
        without a value last: read as two index scans, those with a value and then those
        without. A position is `[0, value, created_at, seq]` or `[1, created_at, seq]`; a
        cursor's page is the calls after it in that order (a keyset: no offset to skip)."""
        after = query.position()  # its shape checked there: [0, v, c, s] or [1, c, s]
        if query.sort_by not in SORT_FIELDS:
            raise BadRequest(f"Calls cannot be sorted by '{query.sort_by}'")
        where, params = _call_filters(organization_id, query)
        field = sql.Identifier(query.sort_by)
        with self._transaction(snapshot=True) as conn:  # count and page agree
            # Planned for the values at hand, never prepared: a generic plan, blind to how
            # many calls a filter matches, scanned the whole table (500 ms at 1M calls).
            counted = conn.execute(
                sql.SQL("SELECT count(*), count({field}) FROM calls WHERE {where}").format(
                    field=field, where=where
                ),
                params,
                prepare=False,
            ).fetchone()
            assert counted is not None  # an aggregate always answers a row
            total, with_value = counted
            scan = _Scan(conn, query, where, params)
            if after is None:
                # Page by number: the offset falls among the calls with a value, or after.
                rows = (
                    scan.with_value(None, query.offset, query.limit)
                    if (query.offset < with_value)
                    else []
                )
                if len(rows) < query.limit:
                    skip = max(0, query.offset - with_value)
                    rows += scan.without_value(None, skip, query.limit - len(rows))
                more = query.offset + len(rows) < total
            else:
                wanted = query.limit + 1  # one more tells whether another page follows
                rows = []
                if after[0] == 0:
                    rows = scan.with_value(after[1:], 0, wanted)
                if len(rows) < wanted:
                    rows += scan.without_value(after[1:] if after[0] == 1 else None, 0, wanted)
                more = len(rows) > query.limit
                rows = rows[: query.limit]
        position = None
        if more and rows:
            _, value, created_at, seq = rows[-1]
            position = [1, created_at, seq] if value is None else [0, value, created_at, seq]
        return CallPage([cast(Call, row[0]) for row in rows], total, position)

    def call_statuses(self, organization_id: str, call_ids: list[str]) -> dict[str, str]:
        if not call_ids:
            return {}
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT call_id, call_status FROM calls"
                " WHERE organization_id = %s AND call_id = ANY(%s)",
                (organization_id, call_ids),
            ).fetchall()
        return {str(call_id): str(status) for call_id, status in rows}

    def scheduled_calls(self, due_by: int) -> list[Call]:
        """Every organization's `scheduled` calls due at or before `due_by` (Unix seconds)."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT doc FROM calls WHERE call_status = 'scheduled'"
                " AND scheduled_timestamp <= %s"
                # Ties in code point order, as the embedded store's, whatever the collation.
                ' ORDER BY scheduled_timestamp, organization_id COLLATE "C", call_id COLLATE "C"',
                (due_by,),
            ).fetchall()
        return [cast(Call, row[0]) for row in rows]

    def abandoned_sandbox_calls(self) -> list[tuple[str, str, str]]:
        """(organization, call id, process) of every call under way whose sandbox player
        no longer serves the database; one statement, so that the players live are read
        after the calls' snapshot (a process present when a call it plays was committed
        is in `pg_locks` then, unless it has stopped)."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT organization_id, call_id, played_by FROM calls"
                " WHERE played_by IS NOT NULL AND played_by <> %s"
                f" AND played_by NOT IN (SELECT objid::text FROM ({LIVE_PROCESSES}) AS live)"
                ' ORDER BY organization_id COLLATE "C", call_id COLLATE "C"',
                (self._presence.process_id, PRESENCE),
            ).fetchall()
        return [(org, call_id, process) for org, call_id, process in rows]

    def _locked_call(
        self, conn: Connection, organization_id: str, call_id: str
    ) -> tuple[Call, int]:
        """The stored call and its size, locked until the transaction ends."""
        row = conn.execute(
            "SELECT doc, size FROM calls WHERE organization_id = %s AND call_id = %s FOR UPDATE",
            (organization_id, call_id),
        ).fetchone()
        if row is None:
            raise CallNotFound(call_id)
        return cast(Call, row[0]), int(row[1])


class _Scan:
    """The calls matching a query in its order, read as two index scans: those with a value
    of the sort field, then those without (they come last in either order)."""

    def __init__(
        self, conn: Connection, query: CallQuery, where: sql.Composable, params: list[Any]
    ) -> None:
        self.conn, self.query, self.where, self.params = conn, query, where, params
        self.direction = sql.SQL("DESC" if query.descending else "ASC")
        self.beyond = sql.SQL("<" if query.descending else ">")
        # In creation order with a filter of one value, the order is led by that (constant)
        # column: only its index (organization, column, created_at, seq) gives that order,
        # so the planner reads the filter's calls in order instead of walking the newest
        # calls of the organization past every one that does not match (20,000 table rows
        # after 20,000 creates of another agent).
        self.lead: sql.Composable = sql.SQL("")
        if query.sort_by == "created_at":
            single = [f for f in _EQUALITY_FIELDS if len(query.filters.get(f) or ()) == 1]
            if single:
                self.lead = sql.SQL("{}, ").format(sql.Identifier(single[-1]))

    def with_value(
        self, after: Sequence[int] | None, skip: int, count: int
    ) -> list[tuple[Any, ...]]:
        """`count` calls with a value after `skip` of them (or after `(value, created_at,
        seq)`): rows of (doc, value, created_at, seq)."""
        field = sql.Identifier(self.query.sort_by)
        keyset: sql.Composable = sql.SQL("")
        params = list(self.params)
        if after is not None:
            keyset = sql.SQL(" AND ({field}, created_at, seq) {beyond} (%s, %s, %s)").format(
                field=field, beyond=self.beyond
            )
            params += after
        return self.conn.execute(
            sql.SQL(
                "SELECT doc, {field}, created_at, seq FROM calls"
                " WHERE {where} AND {field} IS NOT NULL{keyset}"
                " ORDER BY {lead}{field} {d}, created_at {d}, seq {d} OFFSET %s LIMIT %s"
            ).format(
                lead=self.lead, field=field, where=self.where, keyset=keyset, d=self.direction
            ),
            [*params, skip, count],
            prepare=False,  # planned for these values (see list_calls)
        ).fetchall()

    def without_value(
        self, after: Sequence[int] | None, skip: int, count: int
    ) -> list[tuple[Any, ...]]:
        """`count` calls without a value after `skip` of them (or after `(created_at,
        seq)`): rows of (doc, None, created_at, seq)."""
        if self.query.sort_by == "created_at":
            return []  # every call has one
        keyset: sql.Composable = sql.SQL("")
        params = list(self.params)
        if after is not None:
            keyset = sql.SQL(" AND (created_at, seq) {beyond} (%s, %s)").format(beyond=self.beyond)
            params += after
        return self.conn.execute(
            sql.SQL(
                "SELECT doc, NULL, created_at, seq FROM calls"
                " WHERE {where} AND {field} IS NULL{keyset}"
                " ORDER BY created_at {d}, seq {d} OFFSET %s LIMIT %s"
            ).format(
                field=sql.Identifier(self.query.sort_by),
                where=self.where,
                keyset=keyset,
                d=self.direction,
            ),
            [*params, skip, count],
            prepare=False,
        ).fetchall()


# Rows an organization's usage is spread over when no quota needs it exact.
USAGE_STRIPES = 16

_CALL_INSERT_COLUMNS = (
    "organization_id, call_id, doc, size, call_status, call_type, direction, agent_id,"
    " created_at, updated_at, start_timestamp, end_timestamp, call_duration,"
    " scheduled_timestamp, search_parts, search_text, played_by"
)
_CALL_INSERT_VALUES = "%s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
_ADD_CALL = (
    f"INSERT INTO calls ({_CALL_INSERT_COLUMNS}) VALUES ({_CALL_INSERT_VALUES})"
    " ON CONFLICT (organization_id, call_id) DO NOTHING RETURNING 1"
)
# A call and its usage in one statement (parameters: whether events are recorded, the
# organization, the call's values, a usage stripe), unless events are recorded and
# the organization has webhooks: then nothing is written, and it answers (inserted,
# deferred) = (false, true).
_ADD_CALL_ALONE = (
    "WITH deferred AS (SELECT %s::bool AND EXISTS"
    " (SELECT 1 FROM webhooks WHERE organization_id = %s) AS yes),"
    f" inserted AS (INSERT INTO calls ({_CALL_INSERT_COLUMNS})"
    f" SELECT {_CALL_INSERT_VALUES} WHERE NOT (SELECT yes FROM deferred)"
    " ON CONFLICT (organization_id, call_id) DO NOTHING RETURNING organization_id, size),"
    " used AS (INSERT INTO organization_usage AS u (organization_id, stripe, calls, bytes)"
    " SELECT organization_id, %s, 1, size FROM inserted"
    " ON CONFLICT (organization_id, stripe) DO UPDATE"
    " SET calls = u.calls + excluded.calls, bytes = u.bytes + excluded.bytes)"
    " SELECT EXISTS (SELECT 1 FROM inserted), (SELECT yes FROM deferred)"
)
# The same carrying the request's key check (parameters: the key's public part and the
# record the pair was verified against, then those above): nothing is written unless the
# key's record is still that one; it answers whether it was (fits) and the record read.
_ADD_CALL_CHECKED = (
    "WITH key AS (SELECT doc FROM api_keys WHERE api_key = %s),"
    " fits AS (SELECT (SELECT doc FROM key) IS NOT DISTINCT FROM %s::jsonb AS yes),"
    " deferred AS (SELECT %s::bool AND EXISTS"
    " (SELECT 1 FROM webhooks WHERE organization_id = %s) AS yes),"
    f" inserted AS (INSERT INTO calls ({_CALL_INSERT_COLUMNS})"
    f" SELECT {_CALL_INSERT_VALUES}"
    " WHERE NOT (SELECT yes FROM deferred) AND (SELECT yes FROM fits)"
    " ON CONFLICT (organization_id, call_id) DO NOTHING RETURNING organization_id, size),"
    " used AS (INSERT INTO organization_usage AS u (organization_id, stripe, calls, bytes)"
    " SELECT organization_id, %s, 1, size FROM inserted"
    " ON CONFLICT (organization_id, stripe) DO UPDATE"
    " SET calls = u.calls + excluded.calls, bytes = u.bytes + excluded.bytes)"
    " SELECT EXISTS (SELECT 1 FROM inserted), (SELECT yes FROM deferred),"
    " (SELECT yes FROM fits), (SELECT doc FROM key)"
)


def _stripe() -> int:
    return random.randrange(USAGE_STRIPES)


def _use(
    conn: Connection, organization_id: str, calls_: int, size: int, exact: bool
) -> tuple[int, int] | None:
    """Add to the organization's usage (0003_usage_stripes.sql). `exact`: in stripe 0,
    whose row lock (until commit) serializes the organization's writes, and answer what
    it holds then; otherwise in a random stripe, concurrently with other writes, and
    answer None."""
    stripe = 0 if exact else _stripe()
    conn.execute(
        "INSERT INTO organization_usage AS u (organization_id, stripe, calls, bytes)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (organization_id, stripe) DO UPDATE"
        " SET calls = u.calls + excluded.calls, bytes = u.bytes + excluded.bytes",
        (organization_id, stripe, calls_, size),
    )
    if not exact:
        return None
    row = conn.execute(
        "SELECT sum(calls), sum(bytes) FROM organization_usage WHERE organization_id = %s",
        (organization_id,),
    ).fetchone()
    assert row is not None  # an aggregate always answers a row
    return int(row[0]), int(row[1])


def _call_filters(organization_id: str, query: CallQuery) -> tuple[sql.Composed, list[Any]]:
    """The WHERE clause of `query`'s filters (AND-combined) and its parameters."""
    clauses: list[sql.Composable] = [sql.SQL("organization_id = %s")]
    params: list[Any] = [organization_id]
    filters = query.filters
    for field in _EQUALITY_FIELDS:
        if field in filters:  # any of the values; a call without one matches none
            values = list(filters[field])
            if len(values) == 1:  # `=`: an index's equality condition, also for its order
                clauses.append(sql.SQL("{} = %s").format(sql.Identifier(field)))
                params.append(values[0])
            else:
                clauses.append(sql.SQL("{} = ANY(%s::text[])").format(sql.Identifier(field)))
                params.append(values)
    for name, field in RANGE_FIELDS.items():
        if name in filters:  # inclusive; a call without a value is in no range
            column = sql.Identifier(field)
            clauses.append(sql.SQL("{} IS NOT NULL").format(column))
            for bound, operator in (("lower_threshold", ">="), ("upper_threshold", "<=")):
                if filters[name].get(bound) is not None:
                    clauses.append(sql.SQL("{} {} %s").format(column, sql.SQL(operator)))
                    params.append(filters[name][bound])
    if "transcript_search" in filters:
        # The joined text narrows through the trigram index; each part then decides, so
        # that a match across two parts' boundary is none.
        pattern = "%" + _escape_like(filters["transcript_search"].lower()) + "%"
        clauses.append(
            sql.SQL(
                "search_text LIKE %s"
                " AND EXISTS (SELECT FROM unnest(search_parts) AS part WHERE part LIKE %s)"
            )
        )
        params += [pattern, pattern]
    return sql.SQL(" AND ").join(clauses), params


def _escape_like(text: str) -> str:
    """`text` matched literally by LIKE (whose escape character is the backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _search_parts(call: Call) -> list[str]:
    """What transcript_search looks in, lower-cased by Python as `CallQuery.matches` does
    (PostgreSQL's lower() differs for some characters): the transcript, then the content
    of each transcript entry."""
    transcript = call.get("transcript")
    parts = [transcript.lower() if isinstance(transcript, str) else ""]
    for entry in call.get("transcript_object") or []:
        content = entry.get("content") if isinstance(entry, dict) else None
        if isinstance(content, str):
            parts.append(content.lower())
    return parts


def _call_values(call: Call, data: bytes) -> tuple[Any, ...]:
    """The values of a call's row after its keys: doc, size, columns, search text, the
    process whose sandbox plays it."""
    parts = _search_parts(call)
    return (
        data.decode(),
        len(data),
        *(call.get(column) for column in _CALL_COLUMNS),
        parts,
        "\n".join(parts),
        calls.player(call),
    )


def _call_json(call: Call) -> bytes:
    """`call` as JSON; refused (BadRequest) if it is larger than a call may be."""
    data = orjson.dumps(call)
    calls.check_size(call["call_id"], len(data))
    return data
