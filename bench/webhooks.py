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

    .venv/bin/python bench/webhooks.py --unpinned --connections 64 --duration 60 --only-webhooks

reproduces an outside test's conditions instead: server, wrk and receiver unpinned on the
same cores, more connections (creates at the rate the API acknowledges), a longer run. With
`--timeline` (seconds) it also prints, per window of the load and of the drain after it,
the deliveries per second, the lag of the events that arrived in it, and the server's
`calls_webhook_events_queued` gauge read from its /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench.run  # noqa: E402
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


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user and system) of each thread of the process: tid -> (name, seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return found


def cpu_by_thread(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds between two samples, by thread name (numbered ones summed: webhook-io)."""
    spent: dict[str, float] = {}
    for tid, (name, seconds) in after.items():
        kind = name.rstrip("0123456789_")
        spent[kind] = spent.get(kind, 0.0) + seconds - before.get(tid, (name, 0.0))[1]
    return spent


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


class Gauge:
    """Reads the server's webhook gauges from its metrics port once a second, on a thread."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.samples: list[tuple[float, float, float]] = []  # at (ms), queued, delivered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                text = httpx.get(self.url, timeout=5).text
            except httpx.HTTPError:
                continue
            queued = re.search(r"^calls_webhook_events_queued (\S+)", text, re.M)
            delivered = re.search(r"^calls_webhook_delivery_lag_seconds_count (\S+)", text, re.M)
            if queued and delivered:
                self.samples.append(
                    (time.time() * 1000, float(queued.group(1)), float(delivered.group(1)))
                )

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def timeline(
    arrivals: list[tuple[str, str, float, float]],
    samples: list[tuple[float, float, float]],
    began: float,
    load_ended: float,
    every: int,
) -> None:
    """Per window of `every` seconds from the load's start (its 1 s warm-up included)."""
    print()
    print("| seconds | phase | deliveries/s | lag p50 / p99 of arrivals | events queued (end) |")
    print("|---|---|---:|---:|---:|")
    end = max([a[2] for a in arrivals] + [load_ended])
    start_ms = began
    while start_ms < end:
        stop_ms = start_ms + every * 1000
        lags = [lag for _, _, at, lag in arrivals if start_ms <= at < stop_ms]
        queued = [q for at, q, _ in samples if start_ms <= at < stop_ms]
        phase = "load" if start_ms < load_ended else "drain"
        last = f"{queued[-1]:,.0f}" if queued else "-"
        print(
            f"| {(start_ms - began) / 1000:.0f}-{(stop_ms - began) / 1000:.0f} | {phase} | "
            f"{len(lags) / every:,.0f} | {percentile(lags, 0.5) / 1000:.2f} s / "
            f"{percentile(lags, 0.99) / 1000:.2f} s | {last} |"
        )
        start_ms = stop_ms


def run(args: argparse.Namespace, work: Path, receiver: Receiver, hooks: int) -> dict[str, Any]:
    """One server, `hooks` webhooks, `--duration` seconds of creates; its numbers."""
    data = work / f"data-{hooks}"
    metrics_port = args.port + 1
    process, _ = start(
        [sys.executable, "-m", "calls_server.cli", "--data-dir", str(data), "serve",
         "--port", str(args.port), "--log-level", "warning"],
        args.port, work / f"server-{hooks}.log",
        env={"CALLS_METRICS_PORT": str(metrics_port)},
        cores=args.server_cores,
    )  # fmt: skip
    receiver.arrivals.clear()
    gauge = Gauge(metrics_port)
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
        cpu_before = thread_cpu(process.pid)
        result = wrk("create", args.port, env, args)
        load_ended = time.time() * 1000
        # Every call acknowledged (warm-up included) owes each webhook one event.
        total = httpx.post(f"{base}/calls", json={"limit": 1}, headers=headers, timeout=30).json()[
            "data"
        ]["pagination"]["total_count"]
        owed = hooks * total
        while len({(h, e) for h, e, _, _ in receiver.arrivals}) < owed:
            time.sleep(0.05)
            if time.time() * 1000 - load_ended > args.drain_limit * 1000:
                raise RuntimeError(f"the backlog did not drain within {args.drain_limit} s")
        drained = time.time() * 1000
        spent = cpu_by_thread(cpu_before, thread_cpu(process.pid))
    finally:
        gauge.close()
        stop(process)
    arrivals = list(receiver.arrivals)
    if hooks and args.timeline:
        timeline(arrivals, gauge.samples, began, load_ended, args.timeline)
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
        # CPU of the server's threads from the load's start until the backlog drained: the
        # deliverer's (named webhook-*, on Linux) per event owed, the others' per create.
        "api_ms_per_create": sum(v for k, v in spent.items() if not k.startswith("webhook-"))
        / max(total, 1)
        * 1000,
        "delivery_ms_per_event": sum(v for k, v in spent.items() if k.startswith("webhook-"))
        / max(owed, 1)
        * 1000,
        "server_ms_per_create": sum(spent.values()) / max(total, 1) * 1000,
        "delivery_threads": {
            k: v / max(owed, 1) * 1000 for k, v in spent.items() if k.startswith("webhook-")
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds of load")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--receiver-port", type=int, default=18090)
    parser.add_argument(
        "--unpinned", action="store_true",
        help="server, wrk and receiver share every core, none pinned (the default pins the "
        "server to core 0, wrk and the receiver to core 1)",
    )  # fmt: skip
    parser.add_argument(
        "--only-webhooks", action="store_true", help="skip the run without webhooks"
    )
    parser.add_argument(
        "--timeline", type=int, default=0, metavar="SECONDS",
        help="print deliveries/s, lag and the queued gauge per window of this many seconds",
    )  # fmt: skip
    parser.add_argument(
        "--drain-limit", type=int, default=600, help="seconds to wait for the backlog to drain"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="calls-bench-webhooks-"))
    every_core = ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
    if args.unpinned:
        args.server_cores = every_core
        bench.run.LOAD_CORE = every_core  # wrk runs where it likes too
        placement = f"server, wrk and receiver unpinned on cores {every_core}"
    else:
        args.server_cores = "0"
        os.sched_setaffinity(0, {int(LOAD_CORE)})  # the receiver's thread runs in this process
        placement = f"server on core 0, wrk and receiver on core {LOAD_CORE}"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {placement}, {args.connections} connections, "
        f"{args.duration}s of creates"
    )
    receiver = Receiver(args.receiver_port)
    os.environ.update(
        {
            "CALLS_ADMIN_TOKEN": ADMIN_TOKEN,
            "CALLS_WEBHOOK_ALLOW_HTTP": "true",
            "CALLS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        }
    )
    without = (
        {"creates_per_second": float("nan")} if args.only_webhooks else run(args, work, receiver, 0)
    )
    with_two = run(args, work, receiver, 2)

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
    print(f"| server CPU per create, all threads (load and drain) | "
          f"{without.get('server_ms_per_create', float('nan')):.3f} ms | "
          f"{with_two['server_ms_per_create']:.3f} ms |")  # fmt: skip
    print(f"| server CPU per create, API threads (load and drain) | "
          f"{without.get('api_ms_per_create', float('nan')):.3f} ms | "
          f"{with_two['api_ms_per_create']:.3f} ms |")  # fmt: skip
    print(f"| server CPU per event, delivery threads (webhook-*) | - | "
          f"{with_two['delivery_ms_per_event']:.3f} ms |")  # fmt: skip
    threads = ", ".join(f"{k} {v:.3f}" for k, v in sorted(with_two["delivery_threads"].items()))
    print(f"\n(delivery threads, ms of CPU per event: {threads})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
