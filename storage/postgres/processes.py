"""The processes that serve the database (see postgres_presence)."""

from __future__ import annotations

import contextlib

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout

from calls_server.storage.postgres.pool import Connections
from calls_server.storage.postgres_presence import CHANNEL, Presence


class ProcessesMixin(Connections):
    """`Processes`."""

    _presence: Presence

    @property
    def process_id(self) -> str:
        """This process's id among those serving the database (see postgres_presence)."""
        return self._presence.process_id

    def live_processes(self) -> set[str]:
        """The ids of the processes serving the database now."""
        with self._reading() as conn:
            return self._presence.live(conn) | {self.process_id}

    def _notify_deliverer(self) -> None:
        with (
            contextlib.suppress(psycopg.Error, PoolClosed, PoolTimeout),
            self._pool.connection(timeout=1.0) as conn,
        ):
            conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
