"""Persistence: the `Store` interface and its backends (TinyDB is the embedded default)."""

from calls_server.storage.embedded import EmbeddedStore
from calls_server.storage.interface import DatabaseNotEmpty, Store
from calls_server.storage.journal import CorruptJournal, DataDirectoryLocked, JournalFailed

__all__ = [
    "CorruptJournal",
    "DataDirectoryLocked",
    "DatabaseNotEmpty",
    "EmbeddedStore",
    "JournalFailed",
    "Store",
]
