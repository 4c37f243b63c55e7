"""Where a real server's time goes under wrk: py-spy samples of `calls-server serve`.

    .venv/bin/python bench/profile_server.py --py-spy /path/to/py-spy   # GET, 1,000 calls
    .venv/bin/python bench/profile_server.py --case create --duration 20

py-spy is not a dependency of the project: install it where you like (for example
`pip install --target /tmp/pyspy py-spy`, then `--py-spy /tmp/pyspy/bin/py-spy`); it needs
permission to ptrace the server (root, or CAP_SYS_PTRACE).

The server is the one bench/run.py measures: a data directory of `--calls` of its calls,
`calls-server serve` pinned to core 0, wrk (`-t1 -c32`, bench/wrk/<case>.lua) pinned to
core 1. After a 2 s warm-up py-spy records the server for `--duration` seconds at 100
samples a second, while wrk keeps the load on: only the thread holding the GIL, each
sample (`--gil`; without it, py-spy counts threads waiting on a condition as busy, which
gave a third of the samples of a GET to idle threads). Printed: the share of the samples
of each layer (the layer of the innermost frame that has one, as bench/request_path.py's
LAYERS define them: a C function's time goes to the layer that called it; "event loop"
is uvloop's own C work), then for each part of the work (PARTS: a function, by the end of
its file's path) the share of the samples whose stack holds it (inclusive), then the
functions of the project and of uvicorn with the largest shares. Shares of samples, not
times: read them as where the server's CPU goes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from request_path import layer_of  # noqa: E402
from run import (  # noqa: E402
    LOAD_CORE,
    PATHS,
    WRK_SCRIPTS,
    make_dataset,
    start,
    stop,
    write_data_directory,
)

# (label, the end of the function's file path, the function's name or Class.name)
PARTS = [
    ("the app, from uvicorn's call of it", "uvicorn/protocols/http/httptools_impl.py", "run_asgi"),
    (
        "  uvicorn's send (the response to the socket)",
        "protocols/http/httptools_impl.py",
        "RequestResponseCycle.send",
    ),
    (
        "  the app's ASGI layers and the compiled request path",
        "starlette/middleware/errors.py",
        "ServerErrorMiddleware.__call__",
    ),
    ("  the compiled operation", "calls_server/request_path/api.py", "CompiledOperation.__call__"),
    ("    the security function", "calls_server/handlers/security.py", "check_api_key_pair"),
    ("      the auth-failure bucket's address check", "domain/rate_limits.py", "check_address"),
    ("    the handler's get_call", "calls_server/handlers/calls.py", "get_call"),
    ("    the handler's create_call", "calls_server/handlers/calls.py", "create_call"),
    ("    the hop to a worker thread (anyio)", "anyio/to_thread.py", "run_sync"),
    ("    writing the response", "calls_server/request_path/api.py", "_respond"),
    ("the HTTP protocol reading requests (httptools)", ".py", "data_received"),
    ("worker threads (anyio's)", "anyio/_backends/_asyncio.py", "WorkerThread.run"),
]


def frames(stack: str) -> set[tuple[str, str]]:
    """The (file, function) pairs of one collapsed stack of py-spy's raw format."""
    found = set()
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        found.add((where.rsplit(":", 1)[0], name.strip()))
    return found


def shares(raw: str) -> tuple[int, Counter[tuple[str, str]], Counter[str]]:
    """The number of samples; per (file, function) how many samples hold it; per layer
    how many samples it holds (the layer of the innermost frame that has one)."""
    total, holding, layers = 0, Counter[tuple[str, str]](), Counter[str]()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        for frame in frames(stack):
            holding[frame] += n
        layers[innermost_layer(stack)] += n
    return total, holding, layers


def innermost_layer(stack: str) -> str:
    """The layer of a collapsed stack's innermost frame that has one."""
    for frame in reversed(stack.split(";")):
        name, _, where = frame.partition(" (")
        layer = layer_of(where.rsplit(":", 1)[0], name.strip().rsplit(".", 1)[-1])
        if layer is not None:
            return layer
    return "event loop"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="get", choices=["get", "create", "update", "list"])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=15, help="seconds recorded")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="calls-profile-"))
    records, env, ids = make_dataset(args.calls)
    (work / "ids.txt").write_text("\n".join(ids) + "\n")
    env["BENCH_IDS"] = str(work / "ids.txt")
    data = work / "data"
    data.mkdir()
    write_data_directory(data, records)
    del records
    command = [sys.executable, "-m", "calls_server.cli", "--data-dir", str(data), "serve",
               "--port", str(args.port), "--log-level", "warning"]  # fmt: skip
    server, _ = start(command, args.port, work / "server.log")
    load = subprocess.Popen(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c32", f"-d{args.duration + 4}s",
         "-s", str(WRK_SCRIPTS / f"{args.case}.lua"),
         f"http://127.0.0.1:{args.port}{PATHS[args.case]}"],
        env={**os.environ, **env}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        subprocess.run(["sleep", "2"], check=True)
        raw = work / "profile.txt"
        subprocess.run(
            [args.py_spy, "record", "--pid", str(server.pid), "--duration", str(args.duration),
             "--rate", "100", "--gil", "--format", "raw", "--output", str(raw)],
            check=True, capture_output=True,
        )  # fmt: skip
        out, _ = load.communicate()
    finally:
        if load.poll() is None:
            load.kill()
        stop(server)
    total, holding, layers = shares(raw.read_text())
    rate = next((line for line in out.splitlines() if "Requests/sec" in line), "").strip()
    print(f"{args.case}, {args.calls:,} calls stored; wrk: {rate}; {total:,} samples (GIL held)")
    print("by layer (the innermost frame's):")
    for layer, n in layers.most_common():
        print(f"  {n / total:6.1%}  {layer}")
    print("by part (inclusive):")
    for label, path, name in PARTS:
        count = sum(
            n
            for (f, fn), n in holding.items()
            if f.endswith(path) and (fn == name or fn.endswith(f".{name}"))
        )
        if count:
            print(f"  {count / total:6.1%}  {label}")
    print("functions of the project and uvicorn holding the most samples:")
    ours = [(frame, n) for frame, n in holding.items() if "calls_server" in frame[0]]
    ours += [(frame, n) for frame, n in holding.items() if "uvicorn" in frame[0]]
    for (path, name), n in sorted(ours, key=lambda item: -item[1])[: args.top]:
        print(f"  {n / total:6.1%}  {name} ({Path(path).parent.name}/{Path(path).name})")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; work dir {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
