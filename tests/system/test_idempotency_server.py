"""Idempotency-Key on a real server: concurrent duplicates, and kept answers across a restart."""

from __future__ import annotations

import threading

import httpx

from tests.conftest import running_server


def test_concurrent_duplicates_create_one_call(tmp_path):
    """Twenty clients send the same create with the same key at once, to a real server."""
    with running_server(tmp_path / "data") as server:
        headers = server.new_key_headers()
        headers["Idempotency-Key"] = "burst"
        barrier = threading.Barrier(20)
        answers: list[httpx.Response] = []

        def send() -> None:
            barrier.wait()
            answers.append(
                httpx.post(
                    f"{server.base_url}/api/calls/create",
                    json={"agent_id": "agent-1"},
                    headers=headers,
                    timeout=30,
                )
            )

        threads = [threading.Thread(target=send) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        listed = httpx.get(f"{server.base_url}/api/calls", headers=headers).json()

    assert [a.status_code for a in answers] == [200] * 20
    assert len({a.json()["data"]["call"]["call_id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 19
    assert listed["data"]["pagination"]["total"] == 1


def test_a_kept_answer_survives_a_restart(tmp_path):
    data_dir = tmp_path / "data"
    with running_server(data_dir) as server:
        headers = {**server.new_key_headers(), "Idempotency-Key": "across-restart"}
        first = httpx.post(
            f"{server.base_url}/api/calls/create", json={"agent_id": "a"}, headers=headers
        )
    with running_server(data_dir) as server:
        retry = httpx.post(
            f"{server.base_url}/api/calls/create", json={"agent_id": "a"}, headers=headers
        )
        listed = httpx.get(f"{server.base_url}/api/calls", headers=headers).json()

    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert listed["data"]["pagination"]["total"] == 1
