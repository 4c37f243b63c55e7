"""Benchmark: batch calls (outbound campaigns) on the sandbox dialer: how fast a batch is
dialed within its cap, that its quiet hours are kept, and what running campaigns cost the API.

    .venv/bin/python bench/batches.py            # about 10 minutes; needs wrk
    .venv/bin/python bench/batches.py --parts dispatch,quiet --tasks 200
    .venv/bin/python bench/batches.py --parts latency --rounds 3 --wrk-duration 10

Servers are `calls-server serve --create-org bench` with the sandbox dialer
(CALLS_SANDBOX=true, time scale 1: a call of 2 s lasts 2 s), pinned to core 0 with `taskset`;
wrk and this script run on core 1. Three parts:

1. dispatch: one batch of --tasks (1,000) tasks, each a call the sandbox answers and ends
   after --call-ms (2 s), with concurrency_limit --cap (50) and CALLS_BATCH_CONCURRENCY the
   same. The script polls GET /batch-call/{id} every 50 ms from the create until the batch
   is final: the wall time, tasks per second, and the highest `in_progress` polled. Then it
   lists the batch's calls (GET /api/calls) and finds the most whose [start_timestamp,
   end_timestamp) overlap, and lists its tasks (GET /batch-call/{id}/tasks) to recount the
   batch's counters. Both peaks must be at most the cap, the counters equal the recount.
2. quiet: on the same server, a batch (--tasks tasks, cap 10, calls of 1 s) whose quiet hours
   (UTC) are the whole minute that starts --quiet-lead (15) s after the create (the script
   waits for such a minute) and ends one minute later. --quiet-follow (15) s after the window
   it cancels the batch, waits for its calls to end and lists them: how many started before,
   inside (must be none) and after the window, the last start before it and the first after.
3. latency: a fresh server (CALLS_BATCH_CONCURRENCY --busy-cap, 20), 1,000 calls created
   through the API. wrk (`bench/run.py`'s, a 1 s warm-up then --wrk-duration s) runs GET
   /api/calls/{id} and POST /api/calls/create with 1 and with 8 connections, --rounds
   times in each phase: idle (no batch); busy (--batches batches of --tasks tasks with
   calls of --busy-call-ms, 5 s, created at once and dispatched while wrk runs, the
   dispatcher dialing and settling throughout); idle again (the batches cancelled and their
   calls ended: the same store, the dispatcher idle). Reported: medians per phase, p99 busy
   ÷ idle (goal at most 1.5), the tasks dialed per second while wrk ran, and the server's
   CPU use with no requests in each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

CALLS_SERVER = Path(sys.executable).parent / "calls-server"
SERVER_ENV = {
    "CALLS_SANDBOX": "true",
    "CALLS_SANDBOX_TIME_SCALE": "1",
    "CALLS_LOG_LEVEL": "warning",
}
FROM_NUMBER = "+14157774444"
FINAL = ("completed", "failed", "cancelled")
# A task's status (as listed, any case) -> the batch counter it is counted in.
COUNTER_OF = {
    "pending": "pending",
    "calling": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}
COUNTERS = ("total", "sent", "picked_up", *COUNTER_OF.values())
POLL_SECONDS = 0.05
CASES = (("get", 1), ("get", 8), ("create", 1), ("create", 8))
P99_GOAL = 1.5


# -- a server and its API -------------------------------------------------------------------------
class ApiError(RuntimeError):
    """The server answered a request with an error status."""


@dataclass
class Server:
    """A running `calls-server serve` (sandbox dialer) and a client with its key pair."""

    process: subprocess.Popen[bytes]
    port: int
    key: str
    secret: str
    data: Path
    client: httpx.Client

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """One request; the `data` of the envelope it answers."""
        response = self.client.request(method, path, json=body, params=params or None)
        if response.is_error:
            raise ApiError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()["data"]

    def wrk_env(self, ids_file: Path) -> dict[str, str]:
        """The environment bench/wrk/*.lua read."""
        return {"BENCH_KEY": self.key, "BENCH_SECRET": self.secret, "BENCH_IDS": str(ids_file)}


def serve(work: Path, name: str, port: int, env: dict[str, str]) -> Server:
    """A fresh server (its own data directory) on core 0, with the organization `bench`."""
    data, log = work / f"data-{name}", work / f"server-{name}.log"
    command = [
        str(CALLS_SERVER),
        "--data-dir",
        str(data),
        "serve",
        "--create-org",
        "bench",
        "--port",
        str(port),
    ]
    process, _ = run.start(command, port, log, env={**SERVER_ENV, **env})
    key, secret = key_pair(log)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"X-API-KEY": key, "X-API-SECRET": secret},
        timeout=60,
    )
    return Server(process, port, key, secret, data, client)


def key_pair(log: Path, wait: float = 10) -> tuple[str, str]:
    """The key pair `serve --create-org` printed (its `  export KEY=... SECRET=...` line)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = re.search(r"^  export KEY=(\S+) SECRET=(\S+)$", log.read_text(), re.MULTILINE)
        if found:
            return found.group(1), found.group(2)
        time.sleep(0.05)
    raise RuntimeError(f"no key pair in {log}")


def shut(server: Server) -> None:
    """Stop the server and drop its data directory (its log stays)."""
    server.client.close()
    run.stop(server.process)
    shutil.rmtree(server.data, ignore_errors=True)


def new_agent(server: Server) -> str:
    return str(server.call("POST", "/api/agents/create", {"agent_name": "bench"})["agent_id"])


def batch_tasks(count: int, call_ms: int) -> list[dict[str, Any]]:
    """`count` tasks to distinct numbers, each a call answered and ended after `call_ms`."""
    variables = {"sandbox_outcome": "completed", "sandbox_duration_ms": call_ms}
    return [{"to_number": f"+1555{n:07d}", "dynamic_variables": variables} for n in range(count)]


def create_batch(
    server: Server,
    agent_id: str,
    tasks: list[dict[str, Any]],
    cap: int,
    quiet_hours: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A batch sent now (dialing starts at once); the batch as answered."""
    body: dict[str, Any] = {
        "from_number": FROM_NUMBER,
        "agent_id": agent_id,
        "concurrency_limit": cap,
        "tasks": tasks,
    }
    if quiet_hours is not None:
        body["quiet_hours"] = quiet_hours
    return dict(server.call("POST", "/batch-call", body))


def get_batch(server: Server, batch_id: str) -> dict[str, Any]:
    return dict(server.call("GET", f"/batch-call/{batch_id}"))


def all_batches(server: Server) -> list[dict[str, Any]]:
    """Every batch of the organization (the list without a limit is one page)."""
    return list(server.call("GET", "/batch-call/list")["batch_calls"])


def calls_of(server: Server, batch_id: str) -> list[dict[str, Any]]:
    """The calls the batch placed, from the calls list (page by page)."""
    found: list[dict[str, Any]] = []
    page = 0
    while True:
        listed = server.call("GET", "/api/calls", limit=100, page=page)["calls"]
        found += [c for c in listed if (c.get("metadata") or {}).get("batch_call_id") == batch_id]
        if len(listed) < 100:
            return found
        page += 1


def tasks_of(server: Server, batch_id: str) -> list[dict[str, Any]]:
    """Every task of the batch, page by page."""
    found: list[dict[str, Any]] = []
    page = 0
    while True:
        data = server.call("GET", f"/batch-call/{batch_id}/tasks", page=page, limit=100)
        found += data["tasks"]
        if not data["pagination"]["has_next_page"]:
            return found
        page += 1


def wait_final(
    server: Server, batch_id: str, timeout: float, seen: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Poll the batch every 50 ms (each state handed to `seen`) until it is final."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = get_batch(server, batch_id)
        seen(batch)
        if batch["status"].lower() in FINAL:
            return batch
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"batch {batch_id} not final after {timeout:.0f} s")


def wait_calls_ended(server: Server, timeout: float = 120) -> None:
    """Until no batch of the organization has a call under way."""
    deadline = time.monotonic() + timeout
    while any(b["in_progress"] for b in all_batches(server)):
        if time.monotonic() > deadline:
            raise TimeoutError("batch calls still under way")
        time.sleep(0.2)


def recount(tasks: list[dict[str, Any]]) -> dict[str, int]:
    """The batch counters, counted from its tasks."""
    counts = dict.fromkeys(COUNTERS, 0)
    for task in tasks:
        counts["total"] += 1
        counts[COUNTER_OF[task["status"].lower()]] += 1
        counts["sent"] += task["attempts"] > 0
        counts["picked_up"] += bool(task["picked_up"])
    return counts


def most_at_once(intervals: list[tuple[int, int]]) -> int:
    """The most half-open intervals [start, end) that overlap at one instant."""
    # At the same instant an end sorts before a start: touching intervals do not overlap.
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = under_way = 0
    for _, step in events:
        under_way += step
        most = max(most, under_way)
    return most


def call_interval(call: dict[str, Any]) -> tuple[int, int]:
    """When the call was under way (an unended one: until now)."""
    return call["start_timestamp"], call.get("end_timestamp") or time.time_ns() // 1_000_000


# -- 1. dispatch of one batch ---------------------------------------------------------------------
@dataclass
class Dispatch:
    tasks: int
    cap: int
    call_ms: int
    status: str
    seconds: float  # from sending the create to the first poll answering a final status
    server_seconds: float  # the batch's created_timestamp to its last change (server clock)
    polls: int
    highest_in_progress: int
    most_calls_at_once: int
    calls: int
    counters: dict[str, int]
    recounted: dict[str, int]

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / self.seconds

    @property
    def counters_match(self) -> bool:
        return self.counters == self.recounted


def measure_dispatch(server: Server, agent_id: str, args: argparse.Namespace) -> Dispatch:
    """One batch dialed from create to its final status, polled every 50 ms."""
    highest, polls = 0, 0

    def seen(batch: dict[str, Any]) -> None:
        nonlocal highest, polls
        highest, polls = max(highest, batch["in_progress"]), polls + 1

    began = time.perf_counter()
    created = create_batch(server, agent_id, batch_tasks(args.tasks, args.call_ms), args.cap)
    batch = wait_final(server, created["batch_call_id"], args.timeout, seen)
    seconds = time.perf_counter() - began
    placed = calls_of(server, batch["batch_call_id"])
    return Dispatch(
        tasks=args.tasks,
        cap=args.cap,
        call_ms=args.call_ms,
        status=batch["status"].lower(),
        seconds=seconds,
        server_seconds=(batch["updated_timestamp"] - batch["created_timestamp"]) / 1000,
        polls=polls,
        highest_in_progress=highest,
        most_calls_at_once=most_at_once([call_interval(c) for c in placed]),
        calls=len(placed),
        counters={name: batch[name] for name in COUNTERS},
        recounted=recount(tasks_of(server, batch["batch_call_id"])),
    )


# -- 2. quiet hours -------------------------------------------------------------------------------
@dataclass
class Quiet:
    window: str  # HH:MM-HH:MM UTC
    lead_seconds: float  # the create, this long before the window
    before: int  # calls started before the window, inside it, after it
    inside: int
    after: int
    last_start_before_ms: int | None  # the window's start minus the last start before it
    first_start_after_ms: int | None  # the first start after the window minus its end


def next_quiet_minute(lead: float) -> int:
    """Sleep until the next whole UTC minute at least `lead` s away is exactly `lead` s
    away; answer that minute (Unix ms)."""
    now = time.time()
    minute = -(-(now + lead) // 60) * 60
    time.sleep(max(0.0, minute - lead - time.time()))
    return int(minute * 1000)


def hh_mm(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%H:%M")


def measure_quiet_hours(server: Server, agent_id: str, args: argparse.Namespace) -> Quiet:
    """A batch whose quiet minute starts shortly after it does; where its calls started."""
    start = next_quiet_minute(args.quiet_lead)
    end = start + 60_000
    quiet = {"enabled": True, "start_time": hh_mm(start), "end_time": hh_mm(end), "timezone": "UTC"}
    created_at = time.time()
    tasks = batch_tasks(args.tasks, args.quiet_call_ms)
    batch_id = create_batch(server, agent_id, tasks, args.quiet_cap, quiet)["batch_call_id"]
    time.sleep(max(0.0, end / 1000 + args.quiet_follow - time.time()))
    if get_batch(server, batch_id)["status"].lower() not in FINAL:
        server.call("POST", f"/batch-call/{batch_id}/cancel")
    wait_calls_ended(server)
    starts = sorted(c["start_timestamp"] for c in calls_of(server, batch_id))
    before = [s for s in starts if s < start]
    after = [s for s in starts if s >= end]
    return Quiet(
        window=f"{quiet['start_time']}-{quiet['end_time']} UTC",
        lead_seconds=start / 1000 - created_at,
        before=len(before),
        inside=len(starts) - len(before) - len(after),
        after=len(after),
        last_start_before_ms=start - before[-1] if before else None,
        first_start_after_ms=after[0] - end if after else None,
    )


# -- 3. API latency while batches are dispatched -------------------------------------------------
@dataclass
class Sample:
    """One wrk run, and (while busy) the tasks the dispatcher dialed meanwhile."""

    phase: str
    case: str
    connections: int
    result: run.Result
    seconds: float
    dialed: int | None = None


@dataclass
class Latency:
    batches: int
    tasks: int
    samples: list[Sample] = field(default_factory=list)
    create_seconds: list[float] = field(default_factory=list)  # each batch's create request
    background_cpu: dict[str, float] = field(default_factory=dict)  # phase -> % of a core


def created_calls(server: Server, count: int, path: Path) -> Path:
    """`count` calls made through the API; their ids written to `path`, one a line."""
    body = {"agent_id": "agent-123", "call_type": "PHONE_CALL"}
    ids = [server.call("POST", "/api/calls/create", body)["call"]["call_id"] for _ in range(count)]
    path.write_text("\n".join(ids) + "\n")
    return path


def dialed_so_far(server: Server) -> int:
    """Tasks dialed at least once, across every batch."""
    return sum(batch["sent"] for batch in all_batches(server))


def cpu_percent(pid: int, seconds: float) -> float:
    """The CPU the process uses over `seconds` with no requests, in % of one core."""
    before = run.cpu_seconds([pid])
    time.sleep(seconds)
    return (run.cpu_seconds([pid]) - before) / seconds * 100


def run_phase(
    server: Server, env: dict[str, str], args: argparse.Namespace, phase: str, found: Latency
) -> None:
    """The server's CPU use with no requests, then --rounds rounds of every case."""
    found.background_cpu[phase] = cpu_percent(server.process.pid, args.cpu_seconds)
    for _ in range(args.rounds):
        for case, connections in CASES:
            sample = one_run(server, env, args, phase, case, connections)
            found.samples.append(sample)
            result = sample.result
            print(
                f"  {phase:10} {case:6} c{connections}: {result.requests_per_second:7,.0f} req/s"
                f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
                + (
                    f"  {sample.dialed / sample.seconds:.1f} dialed/s"
                    if sample.dialed is not None
                    else ""
                ),
                flush=True,
            )


def one_run(
    server: Server,
    env: dict[str, str],
    args: argparse.Namespace,
    phase: str,
    case: str,
    connections: int,
) -> Sample:
    """One wrk run (bench/run.py's: a 1 s warm-up, then --wrk-duration s); while busy, with
    the tasks dialed from its start to its end."""
    busy = phase == "busy"
    began, dialed = time.perf_counter(), dialed_so_far(server) if busy else 0
    wrk_args = argparse.Namespace(duration=args.wrk_duration, connections=connections)
    result = run.wrk(case, server.port, env, wrk_args, connections)
    sample = Sample(phase, case, connections, result, time.perf_counter() - began)
    if busy:
        sample.dialed = dialed_so_far(server) - dialed
    return sample


def measure_latency(work: Path, args: argparse.Namespace) -> Latency:
    """Idle, then --batches batches being dispatched, then idle again (batches cancelled)."""
    found = Latency(batches=args.batches, tasks=args.tasks)
    server = serve(work, "latency", args.port + 1, {"CALLS_BATCH_CONCURRENCY": str(args.busy_cap)})
    try:
        env = server.wrk_env(created_calls(server, 1000, work / "ids.txt"))
        run_phase(server, env, args, "idle", found)
        agent_id = new_agent(server)
        tasks = batch_tasks(args.tasks, args.busy_call_ms)
        ids = []
        for _ in range(args.batches):
            began = time.perf_counter()
            ids.append(create_batch(server, agent_id, tasks, args.busy_cap)["batch_call_id"])
            found.create_seconds.append(time.perf_counter() - began)
        run_phase(server, env, args, "busy", found)
        for batch_id in ids:
            server.call("POST", f"/batch-call/{batch_id}/cancel")
        wait_calls_ended(server)
        run_phase(server, env, args, "idle after", found)
    finally:
        shut(server)
    return found


# -- the report ------------------------------------------------------------------------------------
def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def millis(value: int | None) -> str:
    return "-" if value is None else f"{value:,} ms"


def table(rows: list[tuple[str, str]]) -> None:
    """A two-column markdown table: measure, value."""
    print("| measure | value |\n|---|---:|")
    for label, value in rows:
        print(f"| {label} | {value} |")


def report_dispatch(d: Dispatch) -> None:
    ideal = d.cap / (d.call_ms / 1000)
    counters = ", ".join(f"{name} {value}" for name, value in d.counters.items() if value)
    print(f"\n### Dispatch: {d.tasks:,} tasks, cap {d.cap}, calls of {d.call_ms / 1000:g} s\n")
    rows = [
        ("final status", f"{d.status} ({d.calls:,} calls placed)"),
        ("wall time, create to final status (polled)", f"{d.seconds:.1f} s"),
        ("the batch's created_timestamp to its last change", f"{d.server_seconds:.1f} s"),
        ("tasks per second", f"{d.tasks_per_second:.1f} (cap ÷ call length: {ideal:.1f})"),
        (
            f"highest in_progress, polled every 50 ms ({d.polls:,} polls)",
            f"{d.highest_in_progress} (≤ {d.cap}: {yes(d.highest_in_progress <= d.cap)})",
        ),
        (
            "most calls under way at once (their start and end timestamps)",
            f"{d.most_calls_at_once} (≤ {d.cap}: {yes(d.most_calls_at_once <= d.cap)})",
        ),
        ("counters = a recount of the tasks", f"{yes(d.counters_match)} ({counters})"),
    ]
    if not d.counters_match:
        rows.append(("the recount", str(d.recounted)))
    table(rows)


def report_quiet(q: Quiet, args: argparse.Namespace) -> None:
    print(
        f"\n### Quiet hours: {args.tasks:,} tasks, cap {args.quiet_cap}, calls of "
        f"{args.quiet_call_ms / 1000:g} s, quiet {q.window}\n"
    )
    table(
        [
            ("batch created", f"{q.lead_seconds:.1f} s before the window"),
            (
                "calls started before / inside / after the window",
                f"{q.before} / {q.inside} / {q.after} (none inside: {yes(q.inside == 0)})",
            ),
            ("last start before the window", f"{millis(q.last_start_before_ms)} before its start"),
            (
                "first start after the window (resume delay)",
                f"{millis(q.first_start_after_ms)} after its end",
            ),
        ]
    )


def median_of(samples: list[Sample], value: Callable[[run.Result], float]) -> float:
    return statistics.median(value(s.result) for s in samples)


def report_latency(found: Latency, args: argparse.Namespace) -> dict[str, float]:
    """The latency tables; answers p99 busy ÷ idle per case."""
    print(
        f"\n### API latency with {found.batches} batches of {found.tasks:,} tasks pending "
        f"(CALLS_BATCH_CONCURRENCY {args.busy_cap}, calls of {args.busy_call_ms / 1000:g} s)\n"
        f"\nwrk, {args.wrk_duration} s per run, {args.rounds} rounds per phase; medians; idle: "
        "the runs before the batches were created and after they were cancelled.\n"
    )
    print(
        "| case | conns | idle req/s | busy req/s | idle p50 ms | busy p50 ms | idle p99 ms "
        f"| busy p99 ms | p99 busy ÷ idle | ≤ {P99_GOAL:g} | non-2xx |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|:-:|---:|")
    ratios = {}
    for case, connections in CASES:
        mine = [s for s in found.samples if (s.case, s.connections) == (case, connections)]
        idle = [s for s in mine if s.phase != "busy"]
        busy = [s for s in mine if s.phase == "busy"]
        p99_idle, p99_busy = median_of(idle, _p99), median_of(busy, _p99)
        ratio = ratios[f"{case} c{connections}"] = p99_busy / p99_idle
        label = "GET /api/calls/{id}" if case == "get" else "POST /api/calls/create"
        print(
            f"| {label} | {connections} | {median_of(idle, _rate):,.0f} "
            f"| {median_of(busy, _rate):,.0f} | {median_of(idle, _p50):.2f} "
            f"| {median_of(busy, _p50):.2f} | {p99_idle:.2f} | {p99_busy:.2f} | {ratio:.2f} "
            f"| {yes(ratio <= P99_GOAL)} | {sum(s.result.errors for s in mine)} |"
        )
    busy_runs = [s for s in found.samples if s.dialed is not None]
    dialed = sum(s.dialed or 0 for s in busy_runs)
    seconds = sum(s.seconds for s in busy_runs)
    per_run = [(s.dialed or 0) / s.seconds for s in busy_runs]
    creates = sorted(found.create_seconds)
    ceiling = args.busy_cap / (args.busy_call_ms / 1000)
    print()
    table(
        [
            (
                "tasks dialed per second while wrk ran (busy)",
                f"{dialed / seconds:.2f} ({dialed:,} in {seconds:.0f} s; per run "
                f"{min(per_run):.2f} to {max(per_run):.2f}; cap ÷ call length {ceiling:.1f})",
            ),
            (
                f"creating one batch of {found.tasks:,} tasks",
                f"median {statistics.median(creates) * 1000:,.0f} ms, "
                f"max {creates[-1] * 1000:,.0f} ms",
            ),
            (
                f"server CPU with no requests ({args.cpu_seconds:g} s, % of a core)",
                ", ".join(f"{phase} {pct:.1f}%" for phase, pct in found.background_cpu.items()),
            ),
        ]
    )
    return ratios


def _p50(r: run.Result) -> float:
    return r.p50_ms


def _p99(r: run.Result) -> float:
    return r.p99_ms


def _rate(r: run.Result) -> float:
    return r.requests_per_second


# -- main ------------------------------------------------------------------------------------------
def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--parts", default="dispatch,quiet,latency", help="parts to run, comma-separated")
    add("--tasks", type=int, default=1000, help="tasks per batch (at most 1000)")
    add("--cap", type=int, default=50, help="dispatch: concurrency_limit and org cap")
    add("--call-ms", type=int, default=2000, help="dispatch: length of each call")
    add("--timeout", type=float, default=600, help="dispatch: seconds to wait for the batch")
    add("--quiet-cap", type=int, default=10, help="quiet: concurrency_limit")
    add("--quiet-call-ms", type=int, default=1000, help="quiet: length of each call")
    add("--quiet-lead", type=float, default=15, help="quiet: create this long before the window")
    add("--quiet-follow", type=float, default=15, help="quiet: seconds watched after it")
    add("--batches", type=int, default=100, help="latency: batches pending")
    add("--busy-cap", type=int, default=20, help="latency: CALLS_BATCH_CONCURRENCY")
    add("--busy-call-ms", type=int, default=5000, help="latency: length of each batch call")
    add("--wrk-duration", type=int, default=10, help="latency: seconds per wrk run")
    add("--rounds", type=int, default=2, help="latency: rounds of every case per phase")
    add("--cpu-seconds", type=float, default=5, help="latency: CPU sampled with no requests")
    add("--port", type=int, default=18280, help="this port and the next one")
    add("--json", type=Path, help="also write the raw numbers here")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    parts = args.parts.split(",")
    os.sched_setaffinity(0, {int(run.LOAD_CORE)})  # this script and wrk: off the server's core
    work = Path(tempfile.mkdtemp(prefix="calls-batches-"))
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    print(
        f"machine: {os.cpu_count()} cores, {cpu.group(1) if cpu else platform.machine()}, "
        f"Python {platform.python_version()}; server on core {run.SERVER_CORE}, this script "
        f"and wrk on core {run.LOAD_CORE}; sandbox dialer, time scale 1; logs in {work}",
        flush=True,
    )
    dispatch = quiet = latency = None
    if "dispatch" in parts or "quiet" in parts:
        server = serve(work, "dispatch", args.port, {"CALLS_BATCH_CONCURRENCY": str(args.cap)})
        try:
            agent_id = new_agent(server)
            if "dispatch" in parts:
                print("dispatch: one batch...", flush=True)
                dispatch = measure_dispatch(server, agent_id, args)
            if "quiet" in parts:
                print("quiet hours: waiting for a whole minute...", flush=True)
                quiet = measure_quiet_hours(server, agent_id, args)
        finally:
            shut(server)
    if "latency" in parts:
        print("latency: idle, busy, idle after...", flush=True)
        latency = measure_latency(work, args)

    print("\n## Batch calls")
    if dispatch is not None:
        report_dispatch(dispatch)
    if quiet is not None:
        report_quiet(quiet, args)
    ratios = report_latency(latency, args) if latency is not None else {}
    if args.json:
        raw = {
            "dispatch": asdict(dispatch) if dispatch else None,
            "quiet": asdict(quiet) if quiet else None,
            "latency": asdict(latency) if latency else None,
            "p99_ratios": ratios,
        }
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
