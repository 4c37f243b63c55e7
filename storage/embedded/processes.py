"""The processes that serve the store: this one only."""

from __future__ import annotations

from calls_server.storage.embedded.lock import Locked


class ProcessesMixin(Locked):
    """`Processes`."""

    _process_id: str

    @property
    def process_id(self) -> str:
        """This process's id: new at each open (the directory's lock keeps others out)."""
        return self._process_id

    def live_processes(self) -> set[str]:
        """Only this one: a data directory is served by one process at a time."""
        return {self._process_id}
