"""Persistence: the `Store` interface and its backends (TinyDB is the embedded default)."""

from storage.embedded import EmbeddedStore
from storage.interface import Store
from storage.journal import CorruptJournal, DataDirectoryLocked, JournalFailed

__all__ = ["CorruptJournal", "DataDirectoryLocked", "EmbeddedStore", "JournalFailed", "Store"]
