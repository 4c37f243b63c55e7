"""A real server under concurrent load: nothing lost, and nothing acknowledged lost to kill -9."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import httpx

from tests.conftest import running_server


def run_threads(count: int, target, *args) -> None:
    threads = [threading.Thread(target=target, args=(n, *args)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_32_concurrent_clients_lose_no_call_and_no_metadata_merge(tmp_path):
    clients, each, shared_count = 32, 100, 64  # 50 merges a shared call: within its limits
    with running_server(tmp_path / "data") as server:
        headers = server.new_key_headers()
        url = server.base_url + "/api/calls"
        shared = [
            httpx.post(f"{url}/create", json={"agent_id": "shared"}, headers=headers).json()[
                "data"
            ]["call"]["call_id"]
            for _ in range(shared_count)
        ]
        failures: list[str] = []

        def client(n: int) -> None:
            # 100 creates and 100 metadata merges, the merges spread over the shared calls.
            with httpx.Client(headers=headers, timeout=60) as http:
                for i in range(each):
                    created = http.post(f"{url}/create", json={"agent_id": f"agent-{n}"})
                    target = shared[(n + i) % shared_count]
                    merged = http.put(f"{url}/{target}", json={"metadata": {f"{n}-{i}": i}})
                    if created.status_code != 200 or merged.status_code != 200:
                        failures.append(f"{created.status_code} {merged.status_code}")

        run_threads(clients, client)

        assert failures == []
        ids: set[str] = set()
        page, pages = 0, 1
        while page < pages:
            body = {"page": page, "limit": 100}
            data = httpx.post(url, json=body, headers=headers).json()["data"]
            ids |= {c["call_id"] for c in data["calls"]}
            page, pages = page + 1, data["pagination"]["total_pages"]
        assert data["pagination"]["total_count"] == clients * each + shared_count
        assert len(ids) == clients * each + shared_count
        merged_keys = set()
        for call_id in shared:
            final = httpx.get(f"{url}/{call_id}", headers=headers).json()["data"]
            assert len(final["events"]) == len(final["metadata"]) + 1
            merged_keys |= set(final["metadata"])
        assert merged_keys == {f"{n}-{i}" for n in range(clients) for i in range(each)}


@dataclass
class Ledger:
    """What the server acknowledged (2xx) before it was killed."""

    created: set[str] = field(default_factory=set)
    updated: dict[str, set[str]] = field(default_factory=dict)  # call id -> metadata keys
    deleted: set[str] = field(default_factory=set)
    # Deletes sent but not acknowledged: either outcome is allowed.
    delete_sent: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def test_every_acknowledged_write_survives_kill_9_under_load(tmp_path):
    data = tmp_path / "data"
    ledger = Ledger()
    rng = random.Random(7)
    with running_server(data) as server:
        headers = server.new_key_headers()

    for round_ in range(4):
        # Compact often, so that kills also land during snapshots and segment rotation.
        with running_server(data, CALLS_COMPACT_EVERY="40") as server:
            url = server.base_url + "/api/calls"
            stop = threading.Event()

            def client(
                n: int, url: str = url, round_: int = round_, stop: threading.Event = stop
            ) -> None:
                mine: list[str] = []
                with httpx.Client(headers=headers, timeout=5) as http:
                    for i in range(10_000):
                        if stop.is_set():
                            return
                        try:
                            if not mine or i % 3 == 0:
                                call_id = f"r{round_}-c{n}-{i}"
                                r = http.post(
                                    f"{url}/create", json={"agent_id": "a", "call_id": call_id}
                                )
                                if r.status_code == 200:
                                    with ledger.lock:
                                        ledger.created.add(call_id)
                                    mine.append(call_id)
                            elif i % 7 == 0:
                                call_id = mine.pop(0)
                                with ledger.lock:
                                    ledger.delete_sent.add(call_id)
                                r = http.delete(f"{url}/{call_id}")
                                if r.status_code == 200:
                                    with ledger.lock:
                                        ledger.deleted.add(call_id)
                            else:
                                call_id, key = rng.choice(mine), f"k{round_}-{n}-{i}"
                                r = http.put(f"{url}/{call_id}", json={"metadata": {key: i}})
                                if r.status_code == 200:
                                    with ledger.lock:
                                        ledger.updated.setdefault(call_id, set()).add(key)
                        except httpx.TransportError:
                            return

            threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.8, 2.0))
            server.process.kill()  # SIGKILL, mid-load
            server.process.wait()
            stop.set()
            for t in threads:
                t.join()

    assert len(ledger.created) > 100
    with running_server(data) as server:
        url = server.base_url + "/api/calls"
        with httpx.Client(headers=headers, timeout=30) as http:
            for call_id in ledger.created:
                got = http.get(f"{url}/{call_id}")
                if call_id in ledger.deleted:
                    assert got.status_code == 404, call_id
                    continue
                if call_id in ledger.delete_sent and got.status_code == 404:
                    continue
                assert got.status_code == 200, call_id
                call = got.json()["data"]
                keys = {k for k in call["metadata"] if k.startswith("k")}
                assert ledger.updated.get(call_id, set()) <= keys, call_id
                # Every update is whole: its metadata key and its event, or neither.
                updates = [e for e in call["events"] if e["event"] == "Call updated via API"]
                assert len(updates) == len(keys), call_id
