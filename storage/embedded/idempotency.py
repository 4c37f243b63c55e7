"""Idempotency keys: the answers kept (by scope and key, oldest first), and the marks of
requests that added a record under a key (`UNDER_CLAIM`) and were not answered yet.

No claims otherwise: one process serves a data directory, and it knows what it runs. But a
create's record is in the journal before its answer is kept (after the record's fsync), so
a kill in between would leave a record no answer speaks for, and the retry would create it
again: the record's own journal record therefore carries a mark of its key (`_mark_claim`),
which the answer replaces once kept. A retry that finds a mark answers from the record
(`handlers.idempotency_keys`), as on PostgreSQL."""

from __future__ import annotations

from typing import cast

from calls_server.domain.idempotency import RUNNING, IdempotentAnswer
from calls_server.storage.embedded.documents import _copy
from calls_server.storage.embedded.lock import Locked, _unavailable_when_failed
from calls_server.storage.interface import UNDER_CLAIM
from calls_server.storage.tinydb_table import JournaledTable, raw_documents


class IdempotencyMixin(Locked):
    """`IdempotencyRecords`: the table idempotency_keys."""

    _idempotency: JournaledTable
    _kept: dict[tuple[str, str], int]

    def find_idempotent(self, scope: str, key: str) -> IdempotentAnswer | None:
        # Called on the event loop for every keyed create: no lock, as in find_api_key
        # (dict reads are atomic; an answer pruned meanwhile is an answer not found).
        self._check_usable()
        doc_id = self._kept.get((scope, key))
        found = None if doc_id is None else raw_documents(self._idempotency).get(str(doc_id))
        return None if found is None else cast(IdempotentAnswer, _copy(found))

    def claim_idempotent(self, claim: IdempotentAnswer, now: int) -> IdempotentAnswer | None:
        """The key's mark, if a request added its record under it and was not answered: it
        has ended (one process serves a data directory, and the caller runs no twin of it
        here), or its process stopped. None otherwise: nothing to claim from another."""
        found = self.find_idempotent(claim["scope"], claim["key"])
        if found is None or found["status"] != RUNNING or found["expires_at"] <= now:
            return None
        return cast(IdempotentAnswer, {**found, "ended": True})

    def release_idempotent(self, claim: IdempotentAnswer) -> None:
        """Nothing to release: a claim is written only as the mark of a record added under
        it (`_mark_claim`), which stays for the retry to answer from."""

    def _mark_claim(self, kind: str, record_id: str) -> tuple[tuple[str, str], int] | None:
        """In the journal transaction adding the record `kind` `record_id`: the mark of the
        Idempotency-Key claim the request runs under (`UNDER_CLAIM`), if any, kept as long
        as its answer would be. What `_index_mark` indexes once the transaction is written
        (the caller holds the lock)."""
        under = UNDER_CLAIM.get()
        if under is None:
            return None
        claim, kept_until = under
        slot = (claim["scope"], claim["key"])
        mark = {
            **claim,
            "written": {"kind": kind, "id": record_id},
            "lease_until": claim["expires_at"],
            "expires_at": kept_until,
        }
        replaced = self._kept.get(slot)
        if replaced is not None:
            self._idempotency.remove(doc_ids=[replaced])
        return slot, self._idempotency.insert(mark)

    def _index_mark(self, marked: tuple[tuple[str, str], int] | None) -> None:
        """Index a mark `_mark_claim` wrote, newest last (as kept answers)."""
        if marked is not None:
            slot, doc_id = marked
            self._kept.pop(slot, None)
            self._kept[slot] = doc_id

    def keep_idempotent(self, answer: IdempotentAnswer) -> None:
        # Written to the journal (the kernel has it: a killed process loses nothing), not
        # waited for: the next write's fsync covers it. The create it answers was made
        # durable before; a second fsync per create would cost a third of their rate.
        with _unavailable_when_failed(), self._lock:
            now = answer["created_at"]
            expired = []
            for slot, doc_id in self._kept.items():  # oldest first: stop at the first live one
                if raw_documents(self._idempotency)[str(doc_id)]["expires_at"] > now:
                    break
                expired.append((slot, doc_id))
            slot = (answer["scope"], answer["key"])
            replaced = self._kept.get(slot)
            with self._journal.transaction():
                gone = [doc_id for _, doc_id in expired]
                if replaced is not None and replaced not in gone:
                    gone.append(replaced)
                if gone:
                    self._idempotency.remove(doc_ids=gone)
                # A shallow copy: the answer is built for keeping, its body never changed.
                doc_id = self._idempotency.insert(dict(answer))
            for expired_slot, _ in expired:
                del self._kept[expired_slot]
            self._kept.pop(slot, None)
            self._kept[slot] = doc_id
