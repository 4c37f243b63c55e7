"""Citus readiness, proven without Citus: the schema can be distributed by organization, and
every statement the PostgreSQL store sends goes to one organization's shard, but for the
statements named here as multi-shard (the background sweeps across organizations) or as
the coordinator's (advisory locks, LISTEN/NOTIFY, the schema's migrations).

What Citus needs (its documentation's "Distributed tables" and "Query routing"):

- every primary key and unique constraint of a distributed table includes its distribution
  column (uniqueness is enforced within a shard), and a foreign key between two distributed
  tables includes it on both sides (rows that refer to each other live on one node);
- a statement goes to one shard (the router planner) when every distributed table it reads
  or writes is restricted to one value of its distribution column: `column = value` among
  the conditions of its scan, or that value inserted; a transaction stays on one node when
  all its statements name the same value.

The statements are captured from a PostgreSQL server of the test's own that logs every
statement (`log_statement = all`, as JSON lines with their parameters), and each distinct
one is checked on PostgreSQL's own plan of it (`EXPLAIN (GENERIC_PLAN, VERBOSE)`): which
tables it reads and writes, and on which conditions, as the planner sees them (a CTE, a
subquery, an implied condition included). Each execution's parameters then show that the
values it names are one organization's, and so do each transaction's statements together.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from calls_server.storage.postgres import calls as calls_sql
from calls_server.storage.postgres import migrate
from tests.postgres_server import Cluster, _as_server_user

# Each distributed table and its distribution column: every organization's rows of all of
# them co-located (`create_distributed_table(..., colocate_with => 'organizations')`).
DISTRIBUTED = {
    "organizations": "organization_id",
    "organization_usage": "organization_id",
    "calls": "organization_id",
    "agents": "organization_id",
    "phone_numbers": "organization_id",
    "webhooks": "organization_id",
    "webhook_events": "organization_id",
    "batches": "organization_id",
    "batch_tasks": "organization_id",
    # An organization's keys are scoped by its id (the admin API's by a scope of its own).
    "idempotency_keys": "scope",
}
# The tables copied to every node, and why they are not distributed.
REFERENCE = {
    "api_keys": "a request's key is found by its public part, before its organization is known",
    "schema_migrations": "the schema's versions, read and written by the migrations alone",
}


@dataclass(frozen=True)
class MultiShard:
    """A statement that reads or writes a distributed table across organizations, on
    purpose: Citus runs it on every shard in parallel."""

    pattern: str  # a regular expression found in the statement
    reason: str


MULTI_SHARD = {
    "scheduler sweep": MultiShard(
        r"FROM calls WHERE call_status = 'scheduled'", "every organization's due calls"
    ),
    "sandbox players": MultiShard(
        r"FROM calls WHERE played_by IS NOT NULL", "calls whose playing process stopped"
    ),
    "batch dispatcher sweep": MultiShard(
        r"FROM batches WHERE active", "every organization's batches with work"
    ),
    "outbox": MultiShard(
        r"FROM webhook_events WHERE .*status = 'pending'", "the pending events to deliver"
    ),
    "outbox pruning": MultiShard(
        r"DELETE FROM webhook_events WHERE settled_at <", "events delivered long ago"
    ),
    "metrics counts": MultiShard(
        r"FROM organization_usage\), \(SELECT count\(\*\) FROM organizations\)",
        "the totals of /metrics",
    ),
    "record counts": MultiShard(
        r'SELECT \(SELECT count\(\*\) FROM "organizations"\), \(SELECT count\(\*\) FROM "api_keys"',
        "the count of every kind (copy-to-postgres, moving up from the embedded store)",
    ),
    "copy-to-postgres usage": MultiShard(
        r"INSERT INTO organization_usage .* GROUP BY organization_id",
        "every organization's usage rebuilt (one-off; grouped by the distribution column)",
    ),
}

# Statements PostgreSQL cannot plan (utility statements), by their first word: why each
# needs no routing of its own.
UTILITY = {
    "BEGIN": "transaction control",
    "COMMIT": "transaction control",
    "ROLLBACK": "transaction control",
    "SAVEPOINT": "transaction control (a nested transaction)",
    "RELEASE": "transaction control (a nested transaction)",
    "SET": "a setting of the session or transaction",
    "SHOW": "a setting read",
    "LISTEN": "the coordinator's notifications (the outbox's wake-up)",
    "DEALLOCATE": "the session's prepared statements (psycopg's, reset)",
    "COPY": "rows routed one by one by their organization_id (checked: in the columns)",
    "TRUNCATE": "copy-to-postgres --replace (one-off, every shard)",
    "VACUUM": "after copy-to-postgres (every shard)",
    "CREATE": "the schema's migrations (the coordinator propagates them)",
    "ALTER": "the schema's migrations",
    "DROP": "the schema's migrations",
}

APPLICATION = "calls-server"  # the store's application_name: its statements alone are checked
# The idempotency scope of the admin API: its creates under an Idempotency-Key (an
# organization, a key) mark their claim, kept in that scope, in their transaction, which
# so spans the organization's shard and that scope's (Citus commits the two together).
ADMIN_SCOPE = ":admin"


# -- the schema ------------------------------------------------------------------------------------


def test_every_table_is_distributed_by_organization_or_a_reference_table(migrated_database_url):
    with psycopg.connect(migrated_database_url) as conn:
        tables = {
            row[0]
            for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }

    assert tables == set(DISTRIBUTED) | set(REFERENCE)


def test_every_primary_key_and_unique_index_of_a_distributed_table_includes_its_column(
    migrated_database_url,
):
    with psycopg.connect(migrated_database_url) as conn:
        unique = conn.execute(
            "SELECT t.relname, i.relname, array_agg(a.attname::text) FROM pg_index x"
            " JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(x.indkey)"
            " WHERE n.nspname = 'public' AND x.indisunique GROUP BY t.relname, i.relname"
        ).fetchall()

    distributed = [
        (table, index, columns) for table, index, columns in unique if table in DISTRIBUTED
    ]
    assert {table for table, _, _ in distributed} == set(DISTRIBUTED)  # each has its key
    for table, index, columns in distributed:
        assert DISTRIBUTED[table] in columns, f"{index} of {table}: {columns}"


def test_no_foreign_key_joins_distributed_tables_without_their_column(migrated_database_url):
    with psycopg.connect(migrated_database_url) as conn:
        keys_ = conn.execute(
            "SELECT c.conname, t.relname, f.relname,"
            " ARRAY(SELECT attname::text FROM pg_attribute"
            "  WHERE attrelid = c.conrelid AND attnum = ANY(c.conkey)),"
            " ARRAY(SELECT attname::text FROM pg_attribute"
            "  WHERE attrelid = c.confrelid AND attnum = ANY(c.confkey))"
            " FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
            " JOIN pg_class f ON f.oid = c.confrelid WHERE c.contype = 'f'"
        ).fetchall()

    for name, table, referred, columns, referred_columns in keys_:
        if table in DISTRIBUTED and referred in DISTRIBUTED:
            assert DISTRIBUTED[table] in columns, name
            assert DISTRIBUTED[referred] in referred_columns, name


# -- the layout the migrations create on a Citus coordinator --------------------------------------

# Citus's two functions as the migration calls them, each noting its arguments: what
# `calls_distribute_with_citus()` (storage/migrations/0007_citus_layout.sql) would ask of
# Citus, on plain PostgreSQL.
CITUS_STAND_INS = """
CREATE SCHEMA citus_stand_in;
CREATE TABLE citus_stand_in.called (
    seq serial, function text, table_name text, distribution_column text, colocate_with text
);
CREATE FUNCTION citus_stand_in.create_distributed_table(
    table_name regclass, distribution_column text, colocate_with text DEFAULT 'default'
) RETURNS void LANGUAGE sql AS $$
    INSERT INTO citus_stand_in.called (function, table_name, distribution_column, colocate_with)
    VALUES ('create_distributed_table', table_name::text, distribution_column, colocate_with)
$$;
CREATE FUNCTION citus_stand_in.create_reference_table(table_name regclass)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO citus_stand_in.called (function, table_name)
    VALUES ('create_reference_table', table_name::text)
$$;
"""


def distribution_calls(database_url: str) -> list[tuple[str, str, str | None, str | None]]:
    """The calls `calls_distribute_with_citus()` makes on the migrated database at
    `database_url`, in order: (function, table, distribution column, co-located with)."""
    with psycopg.connect(database_url) as conn:
        migrate(conn)
        conn.execute(CITUS_STAND_INS.encode())
        conn.execute("SET search_path = citus_stand_in, public")
        conn.execute("SELECT calls_distribute_with_citus()")
        return [
            (function, table, column, co_located)
            for function, table, column, co_located in conn.execute(
                "SELECT function, table_name, distribution_column, colocate_with"
                " FROM citus_stand_in.called ORDER BY seq"
            )
        ]


def test_the_migrations_leave_plain_postgresql_undistributed(database_url):
    with psycopg.connect(database_url) as conn:
        applied = migrate(conn)
        citus = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone()
        layout = conn.execute(
            "SELECT 1 FROM pg_proc WHERE proname = 'calls_distribute_with_citus'"
        ).fetchone()

    assert 7 in applied  # the layout's migration ran, and did nothing without Citus
    assert citus is None
    assert layout is not None  # left for a database that becomes a coordinator later


def test_the_citus_layout_distributes_each_table_by_its_column_co_located(database_url):
    calls = distribution_calls(database_url)

    distributed = {
        table: (column, co_located)
        for function, table, column, co_located in calls
        if function == "create_distributed_table"
    }
    assert {table: column for table, (column, _) in distributed.items()} == DISTRIBUTED
    anchor = distributed.pop("organizations")
    assert anchor == ("organization_id", "default")  # the co-location group's first table
    assert {co_located for _, co_located in distributed.values()} == {"organizations"}


def test_the_citus_layout_copies_only_api_keys_to_every_node(database_url):
    calls = distribution_calls(database_url)

    references = [table for function, table, _, _ in calls if function == "create_reference_table"]
    # schema_migrations stays on the coordinator, where the migrations alone use it.
    assert references == ["api_keys"]
    assert set(references) == set(REFERENCE) - {"schema_migrations"}


def test_the_citus_layout_distributes_organizations_before_the_tables_co_located_with_it(
    database_url,
):
    tables = [table for function, table, _, _ in distribution_calls(database_url)]

    distributed = [table for table in tables if table in DISTRIBUTED]
    assert distributed[0] == "organizations"
    assert len(distributed) == len(set(distributed)) == len(DISTRIBUTED)


# -- the statements: what a plan shows -------------------------------------------------------------


@dataclass
class Verdict:
    """What one statement is, for Citus: `kind` is `routed` (to the shard of the value of
    `values`: parameters such as `$1`, or literals), `reference` (reference tables only),
    `coordinator` (no table), `utility`, `multi-shard` (listed: `detail` names it) or
    `unrouted` (a distributed table read or written without one organization: `detail`
    says which)."""

    kind: str
    values: list[str] = field(default_factory=list)
    detail: str = ""


_VALUE = r"(\$\d+|'(?:[^']|'')*'::text)"


def conjuncts(condition: str) -> list[str]:
    """The top-level AND-ed parts of a plan's condition, each without its outer
    parentheses."""
    text = _bare(condition)
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char == "("
        depth -= char == ")"
        if depth == 0 and text.startswith(" AND ", i):
            parts.append(text[start:i])
            start = i + 5
    parts.append(text[start:])
    return [_bare(part) for part in parts]


def _bare(text: str) -> str:
    """`text` without the parentheses around all of it."""
    text = text.strip()
    while text.startswith("(") and _closing(text, 0) == len(text) - 1:
        text = text[1:-1].strip()
    return text


def _closing(text: str, opening: int) -> int:
    """Where the parenthesis opened at `opening` closes (-1: nowhere)."""
    depth = 0
    for i in range(opening, len(text)):
        depth += text[i] == "("
        depth -= text[i] == ")"
        if depth == 0:
            return i
    return -1


def restricted_to(conditions: list[str], alias: str, column: str) -> str | None:
    """The value `alias.column` equals among the top-level conjuncts of `conditions`."""
    qualified = rf"(?:{re.escape(alias)}\.)?{re.escape(column)}"
    for condition in conditions:
        for part in conjuncts(condition):
            found = re.fullmatch(rf"{qualified} = {_VALUE}", part) or re.fullmatch(
                rf"{_VALUE} = {qualified}", part
            )
            if found:
                return found.group(1)
    return None


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`plan` and every node under it."""
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def conditions_of(node: dict[str, Any]) -> list[str]:
    """A scan's conditions (those of the index scans under a bitmap scan included, but not
    those of one arm of a BitmapOr: each restricts only the rows of its arm)."""
    found = [node[k] for k in ("Index Cond", "Recheck Cond", "Filter") if k in node]
    if node["Node Type"] == "Bitmap Heap Scan":
        found += [n["Index Cond"] for n in _conjunctive(node) if "Index Cond" in n]
    return found


def _conjunctive(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`plan` and the nodes under it whose conditions hold of every row it yields: not
    below a BitmapOr (which yields the rows of either arm)."""
    yield plan
    for child in plan.get("Plans", ()):
        if child["Node Type"] != "BitmapOr":
            yield from _conjunctive(child)


def test_the_arms_of_a_bitmap_or_do_not_restrict_its_rows():
    plan = {
        "Node Type": "Bitmap Heap Scan",
        "Recheck Cond": "((organization_id = $1) OR (call_id = $2))",
        "Plans": [
            {
                "Node Type": "BitmapOr",
                "Plans": [
                    {"Node Type": "Bitmap Index Scan", "Index Cond": "(organization_id = $1)"},
                    {"Node Type": "Bitmap Index Scan", "Index Cond": "(call_id = $2)"},
                ],
            }
        ],
    }

    assert restricted_to(conditions_of(plan), "calls", "organization_id") is None


class Planner:
    """Verdicts on statements, from their plans on a database with the store's schema."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.positions = {  # where each table's distribution column is in its rows
            table: int(
                conn.execute(
                    "SELECT attnum FROM pg_attribute WHERE attrelid = %s::regclass"
                    " AND attname = %s",
                    (table, column),
                ).fetchone()[0]  # type: ignore[index]
            )
            - 1
            for table, column in DISTRIBUTED.items()
        }
        self._verdicts: dict[str, Verdict] = {}

    def verdict(self, statement: str) -> Verdict:
        if statement not in self._verdicts:
            self._verdicts[statement] = self._judge(statement)
        return self._verdicts[statement]

    def _judge(self, statement: str) -> Verdict:
        word = _first_word(statement)
        if word in UTILITY or statement.lstrip().startswith("--"):  # a migration's file
            if word == "COPY" and not re.search(r'\(\s*"?organization_id"?\s*[,)]', statement):
                return Verdict("unrouted", detail="COPY without organization_id")
            return Verdict("utility", detail=UTILITY.get(word, "the schema's migrations"))
        named = [
            name for name, listed in MULTI_SHARD.items() if re.search(listed.pattern, statement)
        ]
        try:
            with self.conn.transaction():
                row = self.conn.execute(
                    sql.SQL("EXPLAIN (GENERIC_PLAN, VERBOSE, FORMAT JSON) ") + sql.SQL(statement)  # type: ignore[arg-type]
                ).fetchone()
        except psycopg.Error as e:
            return Verdict("unrouted", detail=f"not planned: {e}")
        assert row is not None
        plan = row[0][0]["Plan"]
        values, unrouted, tables = self._routing(plan)
        if unrouted:
            if named:
                return Verdict("multi-shard", detail=named[0])
            return Verdict("unrouted", detail=", ".join(unrouted))
        if values:
            return Verdict("routed", values=values)
        if tables & set(REFERENCE):
            return Verdict("reference")
        return Verdict("coordinator")

    def _routing(self, plan: dict[str, Any]) -> tuple[list[str], list[str], set[str]]:
        """The values the plan's distributed tables are restricted to, the tables read or
        written without one, and every table named."""
        values: list[str] = []
        unrouted: list[str] = []
        tables: set[str] = set()
        for node in nodes(plan):
            table = node.get("Relation Name")
            if table is None:
                continue
            tables.add(table)
            if table not in DISTRIBUTED:
                continue
            column = DISTRIBUTED[table]
            if node["Node Type"] == "ModifyTable":
                if node["Operation"] != "Insert":
                    continue  # an update's or a delete's rows: its scan of the table, below
                value = self._inserted(node, table)
            else:
                value = restricted_to(conditions_of(node), node["Alias"], column)
            if value is None:
                unrouted.append(f"{table} ({node['Node Type']})")
            elif value != "carried":
                values.append(value)
        return values, unrouted, tables

    def _inserted(self, insert: dict[str, Any], table: str) -> str | None:
        """The value an insert gives the distribution column: a parameter or a literal, or
        `carried` from the rows of a CTE of the statement (checked on their own)."""
        source = next(n for n in insert["Plans"] if n.get("Parent Relationship") == "Outer")
        value = source["Output"][self.positions[table]]
        if re.fullmatch(_VALUE, value):
            return str(value)
        if source["Node Type"] == "CTE Scan" and value == f"{source['Alias']}.{DISTRIBUTED[table]}":
            return "carried"
        return None


def _first_word(statement: str) -> str:
    match = re.match(r"\s*([A-Za-z]+)", statement)
    return match.group(1).upper() if match else ""


def test_a_statement_restricted_to_one_organization_goes_to_its_shard(planner):
    verdict = planner.verdict("SELECT doc FROM calls WHERE organization_id = $1 AND call_id = $2")

    assert verdict == Verdict("routed", ["$1"])


def test_an_insert_goes_to_the_shard_of_the_organization_it_inserts(planner):
    verdict = planner.verdict(_positional(calls_sql._ADD_CALL))

    assert verdict == Verdict("routed", ["$1"])


def test_a_statement_of_several_tables_names_the_organization_of_each(planner):
    # A call and its usage in one statement: the usage row's organization comes from the
    # inserted call's (a CTE of the statement).
    verdict = planner.verdict(_positional(calls_sql._ADD_CALL_ALONE))

    assert verdict == Verdict("routed", ["$2", "$3"])  # both the organization, when run


def test_a_statement_across_organizations_is_unrouted_unless_listed(planner):
    unlisted = planner.verdict("SELECT doc FROM calls WHERE call_id = $1")
    listed = planner.verdict(
        "SELECT doc FROM calls WHERE call_status = 'scheduled' AND scheduled_timestamp <= $1"
    )

    assert unlisted.kind == "unrouted"
    assert listed == Verdict("multi-shard", detail="scheduler sweep")


def test_a_condition_that_does_not_restrict_every_row_does_not_route(planner):
    verdict = planner.verdict("SELECT doc FROM calls WHERE organization_id = $1 OR call_id = $2")

    assert verdict.kind == "unrouted"


def test_statements_of_no_table_or_of_reference_tables_alone_need_no_routing(planner):
    assert planner.verdict("SELECT pg_try_advisory_lock($1, $2)").kind == "coordinator"
    assert planner.verdict("SELECT doc FROM api_keys WHERE api_key = $1").kind == "reference"
    assert planner.verdict("LISTEN calls_webhook_events").kind == "utility"


@pytest.fixture
def planner(migrated_database_url: str) -> Iterator[Planner]:
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        yield Planner(conn)


def _positional(statement: str) -> str:
    """`statement` with psycopg's `%s` placeholders numbered as the server sees them."""
    numbers = iter(range(1, statement.count("%s") + 1))
    return re.sub(r"%s", lambda _: f"${next(numbers)}", statement)


# -- the statements: what the server was sent --------------------------------------------------


@dataclass(frozen=True)
class Executed:
    """One statement the store sent: its text and parameters, and its transaction (its
    session and virtual transaction id)."""

    transaction: tuple[str, str]
    statement: str
    parameters: dict[str, str | None]


_PARAMETER = re.compile(r"\$(\d+) = (?:NULL|'((?:[^']|'')*)')")


def read_statements(log: Path, application: str = APPLICATION) -> list[Executed]:
    """The statements `application` sent, in the order logged (`log_statement = all`, in
    PostgreSQL's JSON log format)."""
    found = []
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("application_name") != application or record["error_severity"] != "LOG":
            continue
        said = re.match(r"(?:statement|execute [^:]+): (.*)", record["message"], re.DOTALL)
        if said is None:
            continue
        parameters = {
            f"${found.group(1)}": None
            if found.group(2) is None
            else found.group(2).replace("''", "'")
            for found in _PARAMETER.finditer(record.get("detail", ""))
        }
        transaction = (record["session_id"], record.get("vxid", ""))
        found.append(Executed(transaction, said.group(1), parameters))
    return found


@dataclass
class Findings:
    """What the statements of a log are, for Citus."""

    kinds: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    distinct: dict[str, str] = field(default_factory=dict)  # statement -> its kind
    unrouted: dict[str, str] = field(default_factory=dict)  # statement -> why
    multi_shard: set[str] = field(default_factory=set)  # the MULTI_SHARD names seen
    # Statements run with values naming several organizations, and transactions whose
    # routed statements named several.
    mixed: list[str] = field(default_factory=list)
    spanning: list[list[str]] = field(default_factory=list)


def findings(statements: list[Executed], planner: Planner) -> Findings:
    """Each statement's verdict; each run's organization (its values' parameters), which
    must be one, as must each transaction's (but for the admin API's scope)."""
    found = Findings()
    organizations: dict[tuple[str, str], set[str]] = defaultdict(set)
    texts: dict[tuple[str, str], list[str]] = defaultdict(list)
    for run in statements:
        verdict = planner.verdict(run.statement)
        found.kinds[verdict.kind] += 1
        found.distinct[run.statement] = verdict.kind
        if verdict.kind == "unrouted":
            found.unrouted[run.statement] = verdict.detail
        elif verdict.kind == "multi-shard":
            found.multi_shard.add(verdict.detail)
        elif verdict.kind == "routed":
            named = {_value(value, run.parameters) for value in verdict.values}
            if len(named) != 1:
                found.mixed.append(f"{run.statement} with {run.parameters}")
            organizations[run.transaction] |= named
            texts[run.transaction].append(run.statement)
    found.spanning = [
        texts[t] for t, named in organizations.items() if len(named - {ADMIN_SCOPE}) > 1
    ]
    return found


def _value(value: str, parameters: dict[str, str | None]) -> str | None:
    if value.startswith("$"):
        return parameters.get(value)
    return value[1 : -len("'::text")].replace("''", "'")


class StatementLog:
    """A PostgreSQL server of the test's own that logs every statement it is sent, with its
    parameters, as JSON lines (`log_statement = all`, `jsonlog`)."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="calls-statements-"))
        _as_server_user(self.directory)
        self.cluster = Cluster(self.directory / "data")
        self.path = self.directory / "log" / "statements.json"

    def start(self) -> None:
        self.cluster.init(
            logging_collector="on",
            log_destination="jsonlog",
            log_directory=str(self.directory / "log"),
            log_filename="statements",
            log_statement="all",
            log_parameter_max_length="100",
            # A throwaway, as the tests' own server: nothing need survive a crash.
            fsync="off",
            synchronous_commit="off",
            full_page_writes="off",
        )
        self.cluster.start()

    def statements(self) -> list[Executed]:
        """Every statement the store sent so far (once the log has them all)."""
        mark = f"end of the statements {time.monotonic_ns()}"
        with psycopg.connect(self.cluster.url(), application_name="statement-log") as conn:
            conn.execute(sql.SQL("SELECT {}").format(sql.Literal(mark)))
        deadline = time.monotonic() + 30
        while not (self.path.exists() and mark in self.path.read_text()):
            assert time.monotonic() < deadline, "the log did not catch up"
            time.sleep(0.1)
        return read_statements(self.path)

    def planner_database(self) -> str:
        """The URL of a database with the store's schema, for `Planner` (its statements
        are not the store's: another application_name)."""
        with psycopg.connect(self.cluster.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE planned")
        url = self.cluster.url("planned")
        with psycopg.connect(url) as conn:
            migrate(conn)
        return url

    def stop(self) -> None:
        self.cluster.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def check_statements(log: StatementLog, run: Callable[[], None]) -> Findings:
    """`run()` (the store's work, on `log`'s server), then the findings on every statement
    the store sent meanwhile."""
    run()
    statements = log.statements()
    with psycopg.connect(log.planner_database(), autocommit=True) as conn:
        return findings(statements, Planner(conn))
