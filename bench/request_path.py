"""The server's CPU per request, in-process, and where it goes by layer (issue 30).

    .venv/bin/python bench/request_path.py measure --cases get,create,update,list
    .venv/bin/python bench/request_path.py ab --base /tmp/base --rounds 5   # A/B of two trees
    .venv/bin/python bench/request_path.py layers --case update             # cProfile, by layer
    .venv/bin/python bench/request_path.py wrk-ab --base /tmp/base --rounds 3  # served, under wrk

The app is the one `calls-server serve` runs (its settings' defaults, the collector set up
as `serve` sets it), over an embedded store holding bench/run.py's `--calls` calls, driven
in this process as an ASGI server drives it, without a socket: one request at a time, the
requests of bench/wrk/<case>.lua (create: the seed request; get and update: random stored
calls, update a metadata merge; list: the filtered page of 20). Measured: the process's CPU
time (every thread: the handlers' worker threads, the journal's) per request, and the
wall time, after a warm-up of a tenth of the requests.

`ab` runs `measure` in fresh processes, alternately on the tree under test (this one) and
on `--base` (another checkout, imported through PYTHONPATH), `--rounds` times each, and
prints each case's median and range for both and their ratio: runs interleaved, so a
machine that slows down between runs moves both.

`layers` attributes the CPU of one case by layer: cProfile's own time of each function,
timed by its thread's CPU clock (a machine's load does not count in it; a wait counts
nothing), a C function's (such as orjson's) given to its callers in proportion, summed by
the layer its file belongs to (LAYERS). The profiler slows Python calls more than C work:
read the shares.
`wrk-ab` does what `ab` does with real servers: `calls-server serve` of each tree pinned to
core 0, wrk (`-t1 -c32`, bench/wrk/<case>.lua) pinned to core 1 for `--duration` seconds
after a 1 s warm-up; it reports the requests a second and the server's CPU time (all its
threads, from /proc) per request, which includes what the in-process runs leave out:
uvicorn, the HTTP parser and the socket's system calls.
The data directory is made once per size under `--data-root` and copied for each run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import json
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # bench/run.py's data set; never the tree's root (see `ab`)

Message = dict[str, Any]
CREATE_BODY = orjson.dumps(
    {
        "agent_id": "agent-123",
        "call_type": "PHONE_CALL",
        "direction": "OUTBOUND",
        "metadata": {"customer_id": "cust-001", "priority": "high", "campaign": "summer-2024"},
    }
)
LIST_BODY = orjson.dumps(
    {
        "page": 0,
        "limit": 20,
        "sort_by": "created_at",
        "sort_order": "descending",
        "filter_criteria": {"call_status": ["ENDED"], "agent_id": "agent-3"},
    }
)
NUMBERS = {"get": 5000, "create": 2000, "update": 2000, "list": 2000}

# Layers, by where a function is defined: (layer, a part of its file's path, its name or
# "" for any). The first that matches decides; a function matching none counts in its
# callers' layers (Starlette's request and headers objects, in the layer that reads them).
LAYERS = [
    ("store", "/storage/", ""),
    ("store", "tinydb/", ""),
    ("security", "handlers/security.py", ""),
    ("security", "domain/keys.py", ""),
    ("security", "domain/rate_limits.py", ""),
    ("handler", "/handlers/", ""),
    ("handler", "/domain/", ""),
    ("request path", "/request_path/", ""),
    ("request path", "<string>", ""),  # the compiled body validators
    ("request path", "connexion/lifecycle.py", ""),
    ("request path", "connexion/security/", ""),
    ("ASGI middlewares", "calls_server/middleware.py", ""),
    ("ASGI middlewares", "calls_server/metrics.py", ""),
    ("ASGI middlewares", "calls_server/console.py", ""),
    ("ASGI middlewares", "calls_server/logs.py", ""),
    ("ASGI middlewares", "calls_server/errors.py", ""),
    ("ASGI middlewares", "starlette/middleware/", ""),
    ("ASGI middlewares", "starlette/_exception_handler.py", ""),
    ("ASGI middlewares", "connexion/middleware/", ""),
    ("ASGI middlewares", "connexion/apps/", ""),
    ("uvicorn", "uvicorn/", ""),
    ("uvicorn", "calls_server/http_protocol.py", ""),
    ("thread hops", "anyio/", ""),
    ("thread hops", "concurrent/futures", ""),
    ("thread hops", "threading.py", ""),
]


def layer_of(path: str, name: str) -> str | None:
    """The layer of a function defined in `path` (None: a C function or other code)."""
    for layer, part, function in LAYERS:
        if part in path and (not function or name == function):
            return layer
    return None


# -- the app, in-process -----------------------------------------------------------------


class InProcess:
    """An app started by its lifespan and called as an ASGI server calls it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.lifespan: asyncio.Future[None] | None = None
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self.lifespan = asyncio.ensure_future(self.app(scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        started = await self.outbox.get()
        assert started["type"] == "lifespan.startup.complete", started

    async def stop(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.outbox.get()
        assert self.lifespan is not None
        await self.lifespan

    async def request(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": self.state.copy(),
        }
        received = False
        status, chunks = 0, []

        async def receive() -> Message:
            nonlocal received
            if received:
                await asyncio.Event().wait()  # no disconnect while the request runs
            received = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


def data_directory(root: Path, calls: int) -> tuple[Path, dict[str, str], list[str]]:
    """bench/run.py's data set of `calls` calls, made once under `root`: its directory, the
    key's headers and 1,000 stored ids."""
    from run import make_dataset, write_data_directory

    made = root / f"request-path-{calls}"
    if not (made / "done.json").exists():
        shutil.rmtree(made, ignore_errors=True)
        records, headers, ids = make_dataset(calls)
        (made / "data").mkdir(parents=True)
        write_data_directory(made / "data", records)
        (made / "done.json").write_text(json.dumps({"headers": headers, "ids": ids}))
    done = json.loads((made / "done.json").read_text())
    return made / "data", done["headers"], done["ids"]


def requests_of(case: str, ids: list[str]) -> Callable[[int], tuple[str, str, bytes]]:
    """The n-th request of `case`: method, path and body."""
    rng = random.Random(case)

    def create(n: int) -> tuple[str, str, bytes]:
        return "POST", "/api/calls/create", CREATE_BODY

    def get(n: int) -> tuple[str, str, bytes]:
        return "GET", f"/api/calls/{rng.choice(ids)}", b""

    def update(n: int) -> tuple[str, str, bytes]:
        body = b'{"metadata": {"bench_key": %d}}' % n
        return "PUT", f"/api/calls/{rng.choice(ids)}", body

    def listing(n: int) -> tuple[str, str, bytes]:
        return "POST", "/api/calls", LIST_BODY

    return {"create": create, "get": get, "update": update, "list": listing}[case]


def run_cases(
    cases: list[str],
    calls: int,
    data_root: Path,
    scale: float,
    profiles: list[cProfile.Profile] | None,
) -> dict[str, dict[str, float]]:
    """Each case's CPU and wall microseconds per request, in a fresh copy of the data set.
    With `profiles` (a list), every thread of the run, warm-ups included, is profiled, each
    by a profile of its own added to the list (cProfile profiles one thread)."""
    from calls_server.app import create_app
    from calls_server.cli import GC_THRESHOLDS
    from calls_server.settings import Settings
    from calls_server.storage import EmbeddedStore

    source, key, ids = data_directory(data_root, calls)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="request-path-") as temp:
        directory = Path(temp) / "data"
        shutil.copytree(source, directory)
        if profiles is not None:  # the main thread's first, enabled when timing starts
            profiles.append(cProfile.Profile(time.thread_time))
            threading.setprofile(functools.partial(_profile_thread, profiles))
        store = EmbeddedStore(directory)
        headers = [
            (b"x-api-key", key["BENCH_KEY"].encode()),
            (b"x-api-secret", key["BENCH_SECRET"].encode()),
            (b"content-type", b"application/json"),
        ]
        try:
            app = create_app(Settings(data_dir=directory), store)
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)

            async def main() -> None:
                client = InProcess(app)
                await client.start()
                try:
                    for case in cases:
                        make = requests_of(case, ids)
                        number = max(10, int(NUMBERS[case] * scale))
                        for n in range(number // 10):  # warm-up
                            await one(client, make(n), headers)
                        if profiles:  # from here on: the other threads' warm-up left out
                            for profile in profiles[1:]:
                                profile.clear()
                            profiles[0].enable()
                        cpu, wall = time.process_time_ns(), time.perf_counter_ns()
                        for n in range(number):
                            await one(client, make(n), headers)
                        cpu, wall = time.process_time_ns() - cpu, time.perf_counter_ns() - wall
                        if profiles:
                            profiles[0].disable()
                        results[case] = {
                            "cpu_us": cpu / number / 1e3,
                            "wall_us": wall / number / 1e3,
                        }
                finally:
                    await client.stop()

            uvloop.run(main())
        finally:
            store.close()
            if profiles is not None:
                threading.setprofile(None)
    return results


def _profile_thread(profiles: list[cProfile.Profile], *_: Any) -> None:
    """Profile the thread this first runs in, from now on (`threading.setprofile`)."""
    sys.setprofile(None)
    profile = cProfile.Profile(time.thread_time)
    profiles.append(profile)
    profile.enable()


async def one(client: InProcess, request: tuple[str, str, bytes], headers: Any) -> None:
    method, path, body = request
    status, answer = await client.request(method, path, headers, body)
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {answer[:300]!r}")


# -- commands ----------------------------------------------------------------------------


def cmd_measure(args: argparse.Namespace) -> None:
    """Print each case's CPU and wall time per request, as one JSON line."""
    import calls_server

    results = run_cases(args.cases.split(","), args.calls, args.data_root, args.scale, None)
    print(json.dumps({"tree": str(Path(calls_server.__file__).parents[1]), **results}))


def cmd_ab(args: argparse.Namespace) -> None:
    """Interleaved `measure` runs of this tree and of `--base`; medians, ranges, ratios."""
    data_directory(args.data_root, args.calls)  # made before the first timed run
    trees = {"base": Path(args.base).resolve(), "new": BENCH.parent}
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
    for n in range(args.rounds):
        for name in ("base", "new") if n % 2 == 0 else ("new", "base"):
            env = {**os.environ, "PYTHONPATH": str(trees[name])}
            command = [sys.executable, str(BENCH / "request_path.py"), "measure",
                       "--cases", args.cases, "--calls", str(args.calls),
                       "--data-root", str(args.data_root), "--scale", str(args.scale)]  # fmt: skip
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.splitlines()[-1])
            assert Path(result["tree"]) == trees[name], (result["tree"], trees[name])
            runs[name].append(result)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.rounds} interleaved runs per tree, {args.calls:,} calls; load average {load}")
    print("case: CPU us per request, median (min to max), base -> new (new / base)")
    for case in args.cases.split(","):
        medians = {}
        shown = []
        for name in ("base", "new"):
            cpu = [run[case]["cpu_us"] for run in runs[name]]
            medians[name] = statistics.median(cpu)
            shown.append(f"{medians[name]:.0f} ({min(cpu):.0f} to {max(cpu):.0f})")
        print(f"  {case}: {shown[0]} -> {shown[1]} ({medians['new'] / medians['base']:.2f})")


# Waiting, not working: a thread's wait for a lock (the journal's fsync, a worker's next
# job), the event loop's for its sockets, the disk's. Left out of the layers.
WAITS = (
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'poll' of 'select.epoll' objects>",
    "<built-in method posix.fsync>",
    "<built-in method posix.fdatasync>",
    "<built-in method time.sleep>",
)


def cmd_wrk_ab(args: argparse.Namespace) -> None:
    """Interleaved served runs of this tree and of `--base` under wrk: req/s, CPU/request."""
    from run import LOAD_CORE, WRK_SCRIPTS, cpu_seconds, start, stop

    source, key, ids = data_directory(args.data_root, args.calls)
    trees = {"base": Path(args.base).resolve(), "new": BENCH.parent}
    paths = {"create": "/api/calls/create", "get": "/", "update": "/", "list": "/api/calls"}
    found: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="request-path-wrk-") as temp:
        (Path(temp) / "ids.txt").write_text("\n".join(ids) + "\n")
        env = {"BENCH_IDS": str(Path(temp) / "ids.txt"), **key}
        for n in range(args.rounds):
            for name in ("base", "new") if n % 2 == 0 else ("new", "base"):
                for case in args.cases.split(","):
                    data = Path(temp) / "data"
                    shutil.rmtree(data, ignore_errors=True)
                    shutil.copytree(source, data)
                    command = [sys.executable, "-m", "calls_server.cli", "--data-dir",
                               str(data), "serve", "--port", str(args.port),
                               "--log-level", "warning"]  # fmt: skip
                    server, _ = start(command, args.port, Path(temp) / "server.log",
                                      env={"PYTHONPATH": str(trees[name])})  # fmt: skip
                    try:
                        url = f"http://127.0.0.1:{args.port}{paths[case]}"
                        script = str(WRK_SCRIPTS / f"{case}.lua")
                        wrk = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c32", "-s", script]
                        subprocess.run([*wrk, "-d1s", url], env={**os.environ, **env},
                                       capture_output=True, check=True)  # fmt: skip
                        cpu = cpu_seconds([server.pid])
                        out = subprocess.run([*wrk, f"-d{args.duration}s", url],
                                             env={**os.environ, **env}, capture_output=True,
                                             text=True, check=True).stdout  # fmt: skip
                        cpu = cpu_seconds([server.pid]) - cpu
                    finally:
                        stop(server)
                    done = next(line for line in out.splitlines() if "requests in" in line)
                    requests = int(done.split()[0])
                    found[(name, case)].append((requests / args.duration, cpu / requests * 1e6))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.rounds} interleaved served runs per tree, {args.calls:,} calls, "
          f"{args.duration} s each; load average {load}")  # fmt: skip
    print("case: req/s and server CPU us per request, medians (min to max), base -> new")
    for case in args.cases.split(","):
        shown = []
        for name in ("base", "new"):
            rates = [rate for rate, _ in found[(name, case)]]
            cpus = [cpu for _, cpu in found[(name, case)]]
            shown.append(
                f"{statistics.median(rates):,.0f} req/s ({min(rates):,.0f} to {max(rates):,.0f}),"
                f" {statistics.median(cpus):.0f} us ({min(cpus):.0f} to {max(cpus):.0f})"
            )
        print(f"  {case}: {shown[0]} -> {shown[1]}")


def by_layer(stats: pstats.Stats) -> dict[str, float]:
    """Seconds of own time by layer. A function of no layer (a C function such as orjson's,
    the standard library's `copy`) counts in the layers of its callers, in proportion to
    the time spent in it from each (through callers of no layer too, up to one that has
    one). Waits, and the event loop's own run (uvloop's C code, its waits for sockets
    included), are left out."""
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    memo: dict[Any, dict[str, float]] = {}

    def shares(function: Any, visiting: frozenset[Any]) -> dict[str, float]:
        if function in memo:
            return memo[function]
        path, _, name = function
        layer = layer_of(path, name)
        callers = entries[function][4] if function in entries else {}
        found: defaultdict[str, float] = defaultdict(float)
        if layer is not None:
            found[layer] = 1.0
        else:
            weights = {c: v[3] for c, v in callers.items() if c not in visiting and c in entries}
            total = sum(weights.values())
            for caller, weight in weights.items():
                if total:
                    for kind, part in shares(caller, visiting | {function}).items():
                        found[kind] += part * weight / total
            if not found:
                found["other"] = 1.0
        if not visiting:  # memoized only when computed without a cycle cut short
            memo[function] = dict(found)
        return dict(found)

    seconds: defaultdict[str, float] = defaultdict(float)
    for function, (_, _, own, _, _) in entries.items():
        path, _, name = function
        if name in WAITS or path.endswith("asyncio/runners.py"):
            continue
        for layer, part in shares(function, frozenset()).items():
            seconds[layer] += own * part
    return seconds


def cmd_layers(args: argparse.Namespace) -> None:
    """cProfile of one case: own time by layer, and the functions with the most."""
    profiles: list[cProfile.Profile] = []
    results = run_cases([args.case], args.calls, args.data_root, args.scale, profiles)
    number = max(10, int(NUMBERS[args.case] * args.scale))
    stats = pstats.Stats(*profiles)
    seconds = by_layer(stats)
    whole = sum(seconds.values())
    cpu = results[args.case]["cpu_us"]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.case}, {args.calls:,} calls, {number:,} requests under cProfile, every "
          f"thread ({cpu:.0f} us of CPU each, profiled); load average {load}")  # fmt: skip
    for layer, spent in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {spent / whole:6.1%}  {layer}  ({spent / number * 1e6:.1f} us profiled)")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("measure", "ab", "layers", "wrk-ab"):
        command = commands.add_parser(name)
        command.add_argument("--calls", type=int, default=1000)
        command.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()))
        command.add_argument("--scale", type=float, default=1.0, help="times NUMBERS requests")
        if name == "layers":
            command.add_argument("--case", default="get", choices=sorted(NUMBERS))
            command.add_argument("--top", type=int, default=25)
        else:
            command.add_argument("--cases", default="get,create,update,list")
        if name in ("ab", "wrk-ab"):
            command.add_argument("--base", required=True, help="the other tree's root")
            command.add_argument("--rounds", type=int, default=5)
        if name == "wrk-ab":
            command.add_argument("--duration", type=int, default=5, help="seconds measured")
            command.add_argument("--port", type=int, default=18393)
    args = parser.parse_args()
    commands_run = {
        "measure": cmd_measure,
        "ab": cmd_ab,
        "layers": cmd_layers,
        "wrk-ab": cmd_wrk_ab,
    }
    commands_run[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
