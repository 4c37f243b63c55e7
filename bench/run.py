"""Benchmark: the real server under wrk on loopback, side by side with a bare Starlette ceiling.

    .venv/bin/python bench/run.py            # needs wrk (Debian: apt-get install wrk)

For each store size (1k and 100k calls by default) it writes a data directory, starts
`calls-server serve` pinned to core 0, times its start-up, reads its memory, and runs wrk
pinned to core 1 against: POST /api/calls/create (the seed request), GET /api/calls/{id},
PUT /api/calls/{id} (a metadata merge) and a filtered POST /api/calls page of 20. The bare
Starlette endpoint (bench/bare_app.py) runs the same way for the create ceiling. It prints
requests/s, p50 and p99 per case, and the ratios the targets are stated in.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
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


def start(command: list[str], port: int, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start a server pinned to the server core; return it and its seconds to first answer."""
    began = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command], stdout=out, stderr=subprocess.STDOUT
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000", help="store sizes, comma-separated")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--cases", default="create,get,update,list", help="cases to run")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = args.cases.split(",")

    work = Path(tempfile.mkdtemp(prefix="calls-bench-"))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; server on core {SERVER_CORE}, wrk on core {LOAD_CORE}, "
        f"{args.connections} connections, {args.duration}s per case; work dir {work}"
    )

    ceiling_process, _ = start(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT), "bench.bare_app:app",
         "--port", str(args.port), "--log-level", "warning"],
        args.port, work / "bare.log",
    )  # fmt: skip
    try:
        ceiling = wrk("create", args.port, {"BENCH_KEY": "k", "BENCH_SECRET": "s"}, args)
    finally:
        stop(ceiling_process)

    results: dict[int, dict[str, Result]] = {}
    startup: dict[int, float] = {}
    memory: dict[int, float] = {}
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
            results[size] = {name: wrk(name, args.port, env, args) for name in cases}
            if "list" in cases:
                # Latency without queueing: one request at a time.
                results[size]["list-1"] = wrk("list", args.port, env, args, 1)
        finally:
            stop(process)

    print()
    print("| case | calls stored | requests/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    row = "| {} | {} | {:,.0f} | {:.2f} | {:.2f} | {} |"
    print(row.format("bare Starlette create (ceiling)", "-", ceiling.requests_per_second,
                     ceiling.p50_ms, ceiling.p99_ms, ceiling.errors))  # fmt: skip
    labels = {
        "create": "POST /api/calls/create",
        "get": "GET /api/calls/{id}",
        "update": "PUT /api/calls/{id}",
        "list": "POST /api/calls (filtered, 20)",
        "list-1": "POST /api/calls (filtered, 20), 1 connection",
    }
    for size in sizes:
        for name, r in results[size].items():
            print(row.format(labels[name], f"{size:,}", r.requests_per_second, r.p50_ms,
                             r.p99_ms, r.errors))  # fmt: skip
    print()
    print("| measure | value |")
    print("|---|---:|")
    for size in sizes:
        print(f"| start-up to first answer, {size:,} calls | {startup[size]:.2f} s |")
        print(f"| server RSS after start, {size:,} calls | {memory[size]:.0f} MiB |")
    small, large = min(sizes), max(sizes)
    if small != large:
        per_call = (memory[large] - memory[small]) * 1024 * 1024 / (large - small)
        print(f"| memory per stored call | {per_call / 1024:.1f} KiB |")
        for name in cases:
            ratio = (
                results[large][name].requests_per_second / results[small][name].requests_per_second
            )
            print(f"| {name}: throughput at {large:,} / at {small:,} | {ratio:.2f} |")
    for size in sizes if "create" in cases else []:
        ratio = results[size]["create"].requests_per_second / ceiling.requests_per_second
        print(f"| create at {size:,} / bare Starlette ceiling | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
