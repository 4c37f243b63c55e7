"""The schema: numbered migrations (storage/migrations/NNNN_*.sql), applied in order under
an advisory lock, each version once."""

from __future__ import annotations

import re
from pathlib import Path

from calls_server.storage.postgres.pool import Connection

MIGRATIONS = Path(__file__).parent.parent / "migrations"
# The key of the advisory lock migrations hold: one process migrates, the others wait and
# then find nothing left to apply.
MIGRATION_LOCK = 0x63616C6C73  # "calls"


def migrations() -> list[tuple[int, str]]:
    """The schema's migrations, `(version, SQL)` in order: storage/migrations/NNNN_*.sql."""
    found: dict[int, str] = {}
    for path in sorted(MIGRATIONS.glob("*.sql")):
        named = re.fullmatch(r"(\d+)_\w+\.sql", path.name)
        if named is None:
            raise RuntimeError(f"{path}: a migration is named <number>_<name>.sql")
        version = int(named.group(1))
        if version in found:
            raise RuntimeError(f"{path}: migration {version} exists twice")
        found[version] = path.read_text("utf-8")
    return sorted(found.items())


def migrate(conn: Connection, up_to: int | None = None) -> list[int]:
    """Apply the migrations `conn`'s database lacks (up to version `up_to`, if given), in
    order, in one transaction that holds the migrations' advisory lock (so concurrent
    processes apply each once); the versions applied (none when up to date)."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("SET LOCAL statement_timeout = 0")  # building indexes may take long
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, text in migrations():
            if version in done or (up_to is not None and version > up_to):
                continue
            conn.execute(text.encode())  # several statements: the simple query protocol
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied
