"""Benchmark: the real server under wrk on loopback, its ratios to a bare Starlette ceiling
measured side by side.

    .venv/bin/python bench/run.py            # needs wrk (Debian: apt-get install wrk)
    .venv/bin/python bench/run.py --sizes 1000,100000,1000000 --rounds 3

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
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calls_server.domain import calls, keys  # noqa: E402
from calls_server.integrations.clock import wall_clock  # noqa: E402
from calls_server.storage.journal import write_snapshot  # noqa: E402

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


def make_dataset(directory: Path, size: int) -> tuple[dict[str, str], list[str]]:
    """A data directory with one organization, one key and `size` varied calls."""
    rng = random.Random(size)
    organization = keys.new_organization(0, "bench", "Benchmark")
    key, secret = keys.new_api_key("bench", 0)
    table: dict[str, calls.Call] = {}
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
        table[str(n + 1)] = call
    write_snapshot(
        directory,
        0,
        {"calls": table, "organizations": {"1": organization}, "api_keys": {"1": key}},
    )
    headers = {"BENCH_KEY": key["api_key"], "BENCH_SECRET": secret}
    return headers, [table[str(i)]["call_id"] for i in rng.sample(range(1, size + 1), 1000)]


def start(
    command: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], float]:
    """Start a server pinned to the server core; return it and its seconds to first answer."""
    began = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command],
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
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def wrk(
    name: str,
    port: int,
    env: dict[str, str],
    args: argparse.Namespace,
    connections: int | None = None,
) -> Result:
    """One wrk run (after a short warm-up) and its parsed numbers."""
    command = [
        "taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections or args.connections}",
        "--latency", "-s", str(WRK_SCRIPTS / f"{name}.lua"),
        f"http://127.0.0.1:{port}{PATHS[name]}",
    ]  # fmt: skip
    environ = {**os.environ, **env}
    subprocess.run(
        [*command[:5], "-d1s", *command[5:]], env=environ, capture_output=True, check=True
    )
    out = subprocess.run(
        [*command[:5], f"-d{args.duration}s", *command[5:]],
        env=environ, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Result(
        name,
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        _millis(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        _millis(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        int(errors.group(1)) if errors else 0,
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
) -> list[tuple[Result, Result]]:
    """(ceiling, case) for each round, the ceiling measured right before the case."""
    pairs = []
    ceiling_case = CEILING_OF[name]
    ceiling_env = {**env, "BENCH_KEY": "k", "BENCH_SECRET": "s"}
    for _ in range(args.rounds):
        ceiling = wrk(ceiling_case, servers.ceiling_port, ceiling_env, args, connections)
        pairs.append((ceiling, wrk(name, port, env, args, connections)))
    return pairs


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(min(values))} to {fmt.format(max(values))}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000", help="store sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="ceiling/case pairs per case")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--cases", default="create,create-key,get,update,list", help="cases to run")
    parser.add_argument("--no-reference", action="store_true", help="skip the FastAPI row")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = args.cases.split(",")

    work = Path(tempfile.mkdtemp(prefix="calls-bench-"))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; servers on core {SERVER_CORE}, wrk on core {LOAD_CORE}, "
        f"{args.connections} connections, {args.duration}s per run, {args.rounds} rounds; "
        f"work dir {work}"
    )
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

    measured: dict[tuple[str, str], list[tuple[Result, Result]]] = {}
    startup: dict[int, float] = {}
    memory: dict[int, float] = {}
    try:
        if reference_process is not None:
            env = {"BENCH_KEY": "k", "BENCH_SECRET": "s", "BENCH_IDS": str(ids_for_reference)}
            for name in ("create", "get"):
                measured[(name, "reference")] = interleaved(
                    name, servers.reference_port, env, args, servers
                )
        for size in sizes:
            data = work / f"data-{size}"
            data.mkdir()
            env, ids = make_dataset(data, size)
            ids_file = work / f"ids-{size}.txt"
            ids_file.write_text("\n".join(ids) + "\n")
            env["BENCH_IDS"] = str(ids_file)
            process, startup[size] = start(
                [sys.executable, "-m", "calls_server.cli", "--data-dir", str(data), "serve",
                 "--port", str(args.port), "--log-level", "warning"],
                args.port, work / f"server-{size}.log",
            )  # fmt: skip
            try:
                memory[size] = rss_mib(process.pid)
                for name in cases:
                    measured[(name, str(size))] = interleaved(name, args.port, env, args, servers)
                    if name == "list":  # latency without queueing: one request at a time
                        measured[("list-1", str(size))] = interleaved(
                            "list", args.port, env, args, servers, connections=1
                        )
            finally:
                stop(process)
    finally:
        stop(ceiling_process)
        if reference_process is not None:
            stop(reference_process)

    report(measured, sizes, startup, memory)
    if args.json:
        raw = {
            f"{name}@{size}": [[vars(c), vars(r)] for c, r in pairs]
            for (name, size), pairs in measured.items()
        }
        args.json.write_text(json.dumps({"runs": raw, "startup_s": startup, "rss_mib": memory}))
    return 0


def report(
    measured: dict[tuple[str, str], list[tuple[Result, Result]]],
    sizes: list[int],
    startup: dict[int, float],
    memory: dict[int, float],
) -> None:
    """The tables README's performance section shows."""
    print()
    print(
        "| case | calls stored | req/s (median) | spread | p50 ms | p99 ms | ceiling req/s "
        "| ratio (median) | ratio spread | target | met | non-2xx |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|---:|")
    for (name, size), pairs in measured.items():
        rates = [r.requests_per_second for _, r in pairs]
        ceilings = [c.requests_per_second for c, _ in pairs]
        ratios = [r.requests_per_second / c.requests_per_second for c, r in pairs]
        if size == "reference":
            label, stored = f"FastAPI + pydantic, in memory: {LABELS[name]}", "-"
        else:
            label, stored = LABELS[name], f"{int(size):,}"
        target = TARGETS.get(name) if size != "reference" else None
        met = "" if target is None else ("yes" if median(ratios) >= target else "no")
        ceiling_name = "GET" if CEILING_OF[name] == "get" else "create"
        print(
            f"| {label} | {stored} | {median(rates):,.0f} | {spread(rates)} "
            f"| {median([r.p50_ms for _, r in pairs]):.2f} "
            f"| {median([r.p99_ms for _, r in pairs]):.2f} "
            f"| {median(ceilings):,.0f} ({ceiling_name}) | {median(ratios):.2f} "
            f"| {spread(ratios, '{:.2f}')} | {'' if target is None else f'≥ {target:.2f}'} "
            f"| {met} | {sum(r.errors for _, r in pairs)} |"
        )
    print()
    print("| measure | value |")
    print("|---|---:|")
    for size in sizes:
        print(f"| start-up to first answer, {size:,} calls | {startup[size]:.2f} s |")
        print(f"| server RSS after start, {size:,} calls | {memory[size]:.0f} MiB |")
    for size in sizes:
        plain, keyed = measured.get(("create", str(size))), measured.get(("create-key", str(size)))
        if plain and keyed:
            # Each within its round, against the ceiling measured right before it.
            cost = median(
                [r.requests_per_second / c.requests_per_second for c, r in keyed]
            ) / median([r.requests_per_second / c.requests_per_second for c, r in plain])
            met = "yes" if cost >= 0.85 else "no"
            print(
                f"| create with Idempotency-Key ÷ without, {size:,} calls (target ≥ 0.85) "
                f"| {cost:.2f} ({met}) |"
            )
    small = min(sizes)
    for large in sizes:
        if large == small:
            continue
        per_call = (memory[large] - memory[small]) * 1024 * 1024 / (large - small)
        print(f"| memory per stored call ({large:,}) | {per_call / 1024:.1f} KiB |")
        for name in ("create", "get", "update"):
            if (name, str(large)) in measured and (name, str(small)) in measured:
                ratio = median(
                    [r.requests_per_second for _, r in measured[(name, str(large))]]
                ) / median([r.requests_per_second for _, r in measured[(name, str(small))]])
                met = "yes" if ratio >= 0.8 else "no"
                label = f"{name}: req/s at {large:,} ÷ at {small:,} (target ≥ 0.80)"
                print(f"| {label} | {ratio:.2f} ({met}) |")


if __name__ == "__main__":
    sys.exit(main())
