"""Idempotency keys: the answers kept (by scope and key, oldest first); no claims (one
process serves a data directory)."""

from __future__ import annotations

from typing import cast

from calls_server.domain.idempotency import IdempotentAnswer
from calls_server.storage.embedded.documents import _copy
from calls_server.storage.embedded.lock import Locked, _unavailable_when_failed
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
        """None: one process serves a data directory, and it knows what it runs."""
        return None

    def release_idempotent(self, claim: IdempotentAnswer) -> None:
        """Nothing to release: no claim was written."""

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
