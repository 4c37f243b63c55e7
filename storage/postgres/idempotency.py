"""Idempotency keys: the answers kept, the claims of requests under way, and the mark a
claim gets in the transaction of each record added under it (`_mark_claim`)."""

from __future__ import annotations

from typing import cast

from calls_server.domain.idempotency import IdempotentAnswer
from calls_server.storage.interface import UNDER_CLAIM
from calls_server.storage.postgres.documents import _json
from calls_server.storage.postgres.pool import Connection, Connections


class IdempotencyMixin(Connections):
    """`IdempotencyRecords`: the table idempotency_keys."""

    def find_idempotent(self, scope: str, key: str) -> IdempotentAnswer | None:
        """The answer kept for `key` in `scope`, if any (callers compare `expires_at`)."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT doc FROM idempotency_keys WHERE scope = %s AND key = %s", (scope, key)
            ).fetchone()
        return None if row is None else cast(IdempotentAnswer, row[0])

    def claim_idempotent(self, claim: IdempotentAnswer, now: int) -> IdempotentAnswer | None:
        """Record `claim` unless an unexpired record of its key exists (answered then):
        several processes may get the same key at once, and exactly one runs it. A claim
        marked `written` expires with the answer it stands for (`_mark_claim`)."""
        with self._transaction() as conn:
            taken = conn.execute(
                "INSERT INTO idempotency_keys AS k (scope, key, expires_at, doc)"
                " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (scope, key) DO UPDATE"
                " SET expires_at = excluded.expires_at, doc = excluded.doc"
                " WHERE k.expires_at <= %s RETURNING 1",
                (claim["scope"], claim["key"], claim["expires_at"], _json(claim), now),
            ).fetchone()
            if taken is not None:
                return None
            row = conn.execute(
                "SELECT doc FROM idempotency_keys WHERE scope = %s AND key = %s",
                (claim["scope"], claim["key"]),
            ).fetchone()
        assert row is not None  # the conflicting row, locked by the upsert until commit
        return cast(IdempotentAnswer, row[0])

    def release_idempotent(self, claim: IdempotentAnswer) -> None:
        """Remove `claim` if it is still the record of its key; if a record was added
        under it (see `UNDER_CLAIM`), mark it `ended` instead: a retry answers that."""
        mine = (
            " WHERE scope = %s AND key = %s AND doc->>'status' = %s"
            " AND (doc->>'created_at')::bigint = %s AND doc->>'fingerprint' = %s"
        )
        params = (
            claim["scope"],
            claim["key"],
            str(claim["status"]),
            claim["created_at"],
            claim["fingerprint"],
        )
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM idempotency_keys" + mine + " AND doc->'written' IS NULL", params
            )
            conn.execute(
                "UPDATE idempotency_keys SET doc = doc || '{\"ended\": true}'::jsonb"
                + mine
                + " AND doc->'written' IS NOT NULL",
                params,
            )

    def keep_idempotent(self, answer: IdempotentAnswer) -> None:
        """Keep `answer` (replacing one of the same scope and key), dropping its scope's
        answers expired by its `created_at` (one scope: one shard under Citus). Committed,
        so durable, when it returns."""
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM idempotency_keys WHERE scope = %s AND expires_at <= %s",
                (answer["scope"], answer["created_at"]),
            )
            conn.execute(
                "INSERT INTO idempotency_keys (scope, key, expires_at, doc)"
                " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (scope, key)"
                " DO UPDATE SET expires_at = excluded.expires_at, doc = excluded.doc",
                (answer["scope"], answer["key"], answer["expires_at"], _json(answer)),
            )


def _mark_claim(conn: Connection, kind: str, record_id: str) -> None:
    """Mark the Idempotency-Key claim the request runs under, if any (`UNDER_CLAIM`), in
    the transaction that adds the record `kind` `record_id`: committed with it or not at
    all, and kept as long as an answer would be (never taken over by another claim
    meanwhile: that would add the record twice). Its lease stays the claim's, as
    `lease_until`: until then its request may still be running (a call being dialed), and
    a retry is told it is in flight, not that it is done."""
    under = UNDER_CLAIM.get()
    if under is None:
        return
    claim, kept_until = under
    mark = {
        "written": {"kind": kind, "id": record_id},
        "lease_until": claim["expires_at"],
        "expires_at": kept_until,
    }
    conn.execute(
        "UPDATE idempotency_keys SET expires_at = %s, doc = doc || %s::jsonb"
        " WHERE scope = %s AND key = %s AND doc->>'status' = %s"
        " AND (doc->>'created_at')::bigint = %s AND doc->>'fingerprint' = %s",
        (
            kept_until,
            _json(mark),
            claim["scope"],
            claim["key"],
            str(claim["status"]),
            claim["created_at"],
            claim["fingerprint"],
        ),
    )
