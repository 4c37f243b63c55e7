"""Start-up times of the `calls-server` command, as a user meets them.

    .venv/bin/python bench/startup.py [--runs 7] [--calls 1000] [--command .venv/bin/calls-server]

- `serve`: from starting the process to the first answer of `GET /api/health`, on an
  embedded store holding `--calls` calls (made once, in a temporary directory);
- `--help`: the whole process.

Prints the minimum, median and maximum of each over `--runs` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from calls_server.domain import calls, keys
from calls_server.storage import EmbeddedStore


def fill(data_dir: Path, count: int) -> None:
    """A data directory with one organization and `count` calls."""
    store = EmbeddedStore(data_dir)
    try:
        store.add_organization(keys.new_organization(1, "acme"))
        for n in range(count):
            store.add_call(
                calls.new_call(
                    organization_id="acme",
                    agent_id="agent",
                    now=1_700_000_000_000 + n,
                    call_type="phone_call",
                )
            )
    finally:
        store.close()


def first_answer(command: str, data_dir: Path, port: int) -> float:
    """Seconds from starting `serve` to its first answer."""
    environment = {**os.environ, "CALLS_LOG_LEVEL": "warning"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [command, "--data-dir", str(data_dir), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                time.sleep(0.005)
            if process.poll() is not None or time.perf_counter() - started > 30:
                raise RuntimeError("the server did not start")
    finally:
        process.terminate()
        process.wait()


def whole(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def report(name: str, seconds: list[float]) -> None:
    print(
        f"{name:<40} min {min(seconds):.3f} s  median {statistics.median(seconds):.3f} s"
        f"  max {max(seconds):.3f} s  ({len(seconds)} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=1000)
    default = Path(sys.executable).with_name("calls-server")
    parser.add_argument("--command", default=str(default))
    parser.add_argument("--port", type=int, default=8719)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory) / "data"
        fill(data_dir, args.calls)
        first_answer(args.command, data_dir, args.port)  # warm the file cache
        report(
            f"serve, first answer ({args.calls:,} calls)",
            [first_answer(args.command, data_dir, args.port) for _ in range(args.runs)],
        )
    report("--help", [whole([args.command, "--help"]) for _ in range(args.runs)])


if __name__ == "__main__":
    main()
