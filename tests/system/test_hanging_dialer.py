"""A real server whose dialer hangs: nothing else waits on it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import running_server, wait_for

SECRET = "dialer-secret-0123456789"


def test_a_hanging_dialer_starves_neither_other_requests_nor_health(tmp_path, receiver):
    # More phone calls at once than the server has worker threads (40), each job hanging 3 s.
    receiver.replies = [(202, 3.0)] * 48
    env = {
        "CALLS_DIALER_URL": receiver.url,
        "CALLS_DIALER_SECRET": SECRET,
        "CALLS_DIALER_TIMEOUT": "10",
        "CALLS_DIALER_ATTEMPTS": "1",
        "CALLS_DIALER_CONCURRENCY": "16",
    }
    with running_server(tmp_path / "data", **env) as server:
        dialing, other = server.new_key_headers(), server.new_key_headers()
        url = f"{server.base_url}/api/calls"
        body = {
            "from_number": "+14157774444",
            "to_number": "+12137774445",
            "override_agent_id": "a",
        }

        def place(_: int) -> int:
            return httpx.post(
                f"{url}/create-phone-call", json=body, headers=dialing, timeout=60
            ).status_code

        with ThreadPoolExecutor(max_workers=48) as pool:
            placed = pool.map(place, range(48))
            wait_for(lambda: len(receiver.received) >= 16)  # the dial pool is full, and hangs
            started = time.monotonic()
            health = httpx.get(f"{server.base_url}/api/health", timeout=30)
            health_seconds = time.monotonic() - started
            started = time.monotonic()
            created = httpx.post(f"{url}/create", json={"agent_id": "b"}, headers=other, timeout=30)
            create_seconds = time.monotonic() - started
            statuses = list(placed)

    assert health.status_code == 200
    assert created.status_code == 200
    # Measured while 48 phone calls wait on a dialer that hangs 3 s each: not held up by it.
    assert health_seconds < 2.0, health_seconds
    assert create_seconds < 2.0, create_seconds
    assert statuses == [200] * 48


def test_health_is_answered_while_the_dialer_hangs(tmp_path, receiver):
    """Phone calls whose dialer never answers hold their worker threads; liveness is
    answered on the event loop all the same."""
    receiver.reply_to = lambda _: (202, 8.0)  # the dialer takes 8 s per attempt
    env = {
        "CALLS_DIALER_URL": receiver.url,
        "CALLS_DIALER_SECRET": "dialer-secret",
        "CALLS_DIALER_TIMEOUT": "10",
        "CALLS_DIALER_ATTEMPTS": "1",
        "CALLS_DIALER_CONCURRENCY": "2",
    }
    with running_server(tmp_path / "data", **env) as server:
        headers = server.new_key_headers()
        # An agent named: without one (the number has no outbound agent) each request was a
        # 400, and the dialer was never reached.
        body = {
            "from_number": "+14155550100",
            "to_number": "+14155550101",
            "override_agent_id": "a",
        }
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            hanging = [
                http.build_request(
                    "POST", "/api/calls/create-phone-call", json=body, headers=headers
                )
                for _ in range(6)
            ]
            threads = [threading.Thread(target=http.send, args=(r,)) for r in hanging]
            for thread in threads:
                thread.start()
            wait_for(lambda: len(receiver.received) >= 2)  # both dialing threads hang
            started = time.monotonic()
            health = http.get("/api/health")
            waited = time.monotonic() - started
            for thread in threads:
                thread.join()

    assert health.status_code == 200
    assert waited < 2, f"liveness took {waited:.1f} s while the dialer hung"
