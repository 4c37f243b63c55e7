"""Benchmark: webhook delivery throughput and lag while the API is under sustained load.

    .venv/bin/python bench/webhooks.py       # needs wrk (Debian: apt-get install wrk)

Starts `calls-server serve` pinned to core 0 with two webhooks of one organization, both
pointing at a minimal asyncio HTTP receiver on loopback (keep-alive, answers 200 at once)
pinned to core 1 with wrk. wrk then creates calls (the seed request) for `--duration`
seconds; every create owes each webhook one event, so the server must deliver two events
per acknowledged create. The receiver notes, for each event, the delay from the change
(the event's `timestamp`) to its arrival. It prints the API's create rate, the delivery
rate during the load, the lag's p50, p99 and max, and how long the backlog took to drain
once the load stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import LOAD_CORE, start, stop, wrk  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789"


class Receiver:
    """An HTTP/1.1 keep-alive receiver on its own thread: records (event_id, lag ms)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.arrivals: list[tuple[str, str, float, float]] = []  # hook, event, at, lag ms
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=512)
        )
        self._ready.set()
        self._loop.run_until_complete(server.serve_forever())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                now = time.time() * 1000
                event = json.loads(body)
                self.arrivals.append(
                    (event["webhook_id"], event["event_id"], now, now - event["timestamp"])
                )
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def run(args: argparse.Namespace, work: Path, receiver: Receiver, hooks: int) -> dict[str, float]:
    """One server, `hooks` webhooks, `--duration` seconds of creates; its numbers."""
    data = work / f"data-{hooks}"
    process, _ = start(
        [sys.executable, "-m", "calls_server.cli", "--data-dir", str(data), "serve",
         "--port", str(args.port), "--log-level", "warning"],
        args.port, work / f"server-{hooks}.log",
    )  # fmt: skip
    receiver.arrivals.clear()
    try:
        base = f"http://127.0.0.1:{args.port}/api"
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        httpx.post(f"{base}/organizations", json={"organization_id": "bench"}, headers=admin)
        key = httpx.post(f"{base}/organizations/bench/api-keys", headers=admin).json()["data"]
        headers = {"X-API-KEY": key["api_key"], "X-API-SECRET": key["api_secret"]}
        for n in range(hooks):
            hook = {
                "name": f"hook-{n}",
                "url": f"http://127.0.0.1:{args.receiver_port}/{n}",
                "status_events": True,  # every status change: one event per create
            }
            created = httpx.post(f"{base}/post-call-webhooks/create", json=hook, headers=headers)
            created.raise_for_status()
        env = {"BENCH_KEY": key["api_key"], "BENCH_SECRET": key["api_secret"]}

        began = time.time() * 1000
        result = wrk("create", args.port, env, args)
        load_ended = time.time() * 1000
        # Every call acknowledged (warm-up included) owes each webhook one event.
        total = httpx.post(f"{base}/calls", json={"limit": 1}, headers=headers, timeout=30).json()[
            "data"
        ]["pagination"]["total_count"]
        owed = hooks * total
        while len({(h, e) for h, e, _, _ in receiver.arrivals}) < owed:
            time.sleep(0.05)
            if time.time() * 1000 - load_ended > 600_000:
                raise RuntimeError("the backlog did not drain within 10 minutes")
        drained = time.time() * 1000
    finally:
        stop(process)
    arrivals = list(receiver.arrivals)
    lags = [lag for _, _, _, lag in arrivals] or [0.0]
    return {
        "creates": total,
        "creates_per_second": result.requests_per_second,
        "owed": owed,
        "delivered_per_second": sum(began <= a[2] <= load_ended for a in arrivals)
        / (args.duration + 1),
        "lag_p50": percentile(lags, 0.5),
        "lag_p99": percentile(lags, 0.99),
        "lag_max": max(lags),
        "drained_after": (drained - load_ended) / 1000,
        "duplicates": len(arrivals) - len({(h, e) for h, e, _, _ in arrivals}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds of load")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--receiver-port", type=int, default=18090)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="calls-bench-webhooks-"))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; server on core 0, wrk and receiver on core "
        f"{LOAD_CORE}, {args.connections} connections, {args.duration}s of creates"
    )
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # the receiver's thread runs in this process
    receiver = Receiver(args.receiver_port)
    os.environ.update(
        {
            "CALLS_ADMIN_TOKEN": ADMIN_TOKEN,
            "CALLS_WEBHOOK_ALLOW_HTTP": "true",
            "CALLS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        }
    )
    without, with_two = run(args, work, receiver, 0), run(args, work, receiver, 2)

    print()
    print("| measure | no webhooks | 2 webhooks |")
    print("|---|---:|---:|")
    print(f"| API creates/s under load (wrk) | {without['creates_per_second']:,.0f} | "
          f"{with_two['creates_per_second']:,.0f} |")  # fmt: skip
    print(f"| events owed (1 s warm-up included) | 0 | {with_two['owed']:,.0f} |")
    print(f"| deliveries/s during the load | - | {with_two['delivered_per_second']:,.0f} |")
    print(f"| delivery lag p50 / p99 / max | - | {with_two['lag_p50']:.0f} ms / "
          f"{with_two['lag_p99']:.0f} ms / {with_two['lag_max']:.0f} ms |")  # fmt: skip
    print(f"| backlog left when the load stopped | - | drained in "
          f"{with_two['drained_after']:.1f} s |")  # fmt: skip
    print(f"| duplicate deliveries | - | {with_two['duplicates']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
