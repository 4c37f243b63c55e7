"""A real server: exporting every call by cursor while others are created."""

from __future__ import annotations

import threading

import httpx

from tests.conftest import running_server


def test_exporting_10k_calls_while_inserting_skips_and_repeats_none(tmp_path):
    """A real server: one client exports every call by cursor, oldest first, while another
    creates more; every call there before the export is listed exactly once."""
    with running_server(tmp_path / "data") as server:
        headers = server.new_key_headers()
        before = _fill(server, headers, 10_000)
        stop = threading.Event()
        added: list[str] = []

        def insert() -> None:
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
                while not stop.is_set():
                    created = http.post("/api/calls/create", json={"agent_id": "agent-2"})
                    added.append(created.json()["data"]["call"]["call_id"])

        inserter = threading.Thread(target=insert)
        inserter.start()
        exported: list[str] = []
        try:
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
                cursor = None
                while True:
                    params = {"limit": 100, "sort_order": "ascending", "cursor": cursor}
                    listed = http.get("/api/calls", params={k: v for k, v in params.items() if v})
                    data = listed.json()["data"]
                    exported += [c["call_id"] for c in data["calls"]]
                    cursor = data["pagination"]["next_cursor"]
                    if cursor is None:
                        break
        finally:
            stop.set()
            inserter.join()

    assert len(before) == 10_000
    assert added  # calls were created while the export ran
    assert len(exported) == len(set(exported))  # none twice
    assert before <= set(exported)  # none skipped
    assert set(exported) <= before | set(added)


def _fill(server, headers, count: int) -> set[str]:
    """Create `count` calls over four connections; their ids."""
    made: list[str] = []

    def create(n: int) -> None:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
            for _ in range(n):
                created = http.post("/api/calls/create", json={"agent_id": "agent-1"})
                made.append(created.json()["data"]["call"]["call_id"])

    threads = [threading.Thread(target=create, args=(count // 4,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return set(made)
