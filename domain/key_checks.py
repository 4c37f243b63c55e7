"""A key pair's check against the database, carried by the request's read of the store.

On a store whose reads are round trips (PostgreSQL), a request that only reads would make
two: the key's record, then what it asks for. Where the request path allows it
(`carrying`: a handler that only reads, run with the security function on one worker
thread), the security function may verify the pair against the key's record as last read
in this process and leave a `KeyCheck`: the store's read then reads the key's record afresh
in the same statement and hands it to `Carrying.confirmed`, and the request path reads it
on its own (`Carrying.settle`) when no read carried the check. A request that may write
has the pair verified on the event loop (no hop to a worker thread for it) and the check
settled on the handler's worker thread before the handler runs. Either way the key's record
is read from the database by every request before its answer is given, so a revocation
holds at once in every process; only the order differs, which a handler that only reads
cannot tell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from calls_server.domain.keys import ApiKey


@dataclass(frozen=True)
class KeyCheck:
    """The check owed for one request's key pair."""

    api_key: str  # the key's public part, to read its record by
    # Raises Unauthorized unless the record read now (None: gone) still verifies the pair.
    confirm: Callable[[ApiKey | None], None]
    # Reads the key's record in a round trip of its own.
    find: Callable[[str], ApiKey | None]
    # The record the pair was verified against (a write may be made on condition that the
    # database still holds it).
    known: ApiKey | None = None


class ReadNeeded(Exception):
    """The pair cannot be verified without reading the key's record, and the request path
    asked for no read (`Carrying.on_loop`): it verifies the pair on a worker thread."""


class Carrying:
    """One request's check owed, if any (`check`), until a read confirms it. `on_loop`: the
    pair is being verified on the event loop, where nothing may wait for the store."""

    def __init__(self, on_loop: bool = False) -> None:
        self.check: KeyCheck | None = None
        self.on_loop = on_loop

    def confirmed(self, found: ApiKey | None) -> None:
        """The owed check done with the key's record `found` by a read: raises Unauthorized
        if the pair no longer verifies."""
        check, self.check = self.check, None
        if check is not None:
            check.confirm(found)

    def settle(self) -> None:
        """Do the owed check, if no read did it, with a read of its own (owed still if that
        read fails)."""
        check, self.check = self.check, None
        if check is None:
            return
        try:
            found = check.find(check.api_key)
        except BaseException:
            self.check = check
            raise
        check.confirm(found)


_CARRYING: ContextVar[Carrying | None] = ContextVar("calls_server.key_checks", default=None)


@contextmanager
def carrying(on_loop: bool = False, slot: Carrying | None = None) -> Iterator[Carrying]:
    """Let the request's reads carry its key check (`slot`'s, or a new one's) while the
    block runs: the request path settles it, at the end or, for a handler that writes,
    before it runs; a store settles it before it writes (`settle_before_writing`)."""
    slot = slot or Carrying(on_loop)
    token = _CARRYING.set(slot)
    try:
        yield slot
    finally:
        _CARRYING.reset(token)


def current() -> Carrying | None:
    """The running request's `Carrying`, if its reads may carry its key check."""
    return _CARRYING.get()


def take() -> tuple[Carrying, KeyCheck] | None:
    """The running request's owed key check, taken from it for a store to carry in its
    write (handed back to `Carrying.confirmed` with the record read, or put back in
    `Carrying.check` if the write failed), if one is owed and may be carried."""
    slot = _CARRYING.get()
    if slot is None or slot.check is None or slot.on_loop or slot.check.known is None:
        return None
    check, slot.check = slot.check, None
    return slot, check


def settle_before_writing() -> None:
    """Settle the running request's key check, if one is owed: what a store calls before it
    writes anything (or holds a connection), so that a revoked key never writes."""
    slot = _CARRYING.get()
    if slot is not None and slot.check is not None and not slot.on_loop:
        slot.settle()
