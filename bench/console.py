"""How fast the calls console answers a person on a large store: from pressing "Sign in" to
the first page of calls on screen, and from opening a call to its page on screen, with a
million calls stored, in headless Chromium on loopback.

    .venv/bin/python bench/console.py [--calls 1000000] [--data-dir DIR] [--runs 7]

The store is made once in `--data-dir` (kept: a later run with the same directory skips
making it): one organization, 20 agents, and `--calls` ended or failed calls spread over
30 days, each with a short transcript, loaded through the embedded store's bulk path
(`load_organization`, what `calls-server sandbox load` uses: one journal record per 50,000
calls, indexed as single adds index them). Then a server is started on it and the console
is timed, each run in a fresh browser context (nothing cached), as the median and maximum
of `--runs`:

- sign-in: the click on "Sign in" to 20 rows of calls drawn (the key checked, the list
  asked for and rendered), unfiltered and filtered by agent and status;
- next page: the click on "Next page" to the next 20 rows (a cursor page);
- call page: opening a call's address to its header and transcript drawn.

It also prints the API's own times for the same requests (httpx, median of `--runs`), the
same reads polled unchanged (If-None-Match naming the current ETag, answered 304 without a
body, as the console polls) and the size of the console's files.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from calls_server.console import ASSETS
from calls_server.domain import calls, iso8601, keys
from calls_server.integrations.clock import wall_clock
from calls_server.storage import EmbeddedStore

ORGANIZATION = "acme"
AGENTS = [f"agent_bench{n:02d}" for n in range(20)]
CHUNK = 50_000
DAY_MS = 86_400_000
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LINES = [
    ("assistant", "Hello, this is your assistant calling. How can I help you today?"),
    ("user", "Hi, I would like to check on my order please."),
    ("assistant", "Of course. I can see it shipped this morning and arrives tomorrow."),
]


def a_call(n: int, now: int, rng: random.Random) -> dict[str, Any]:
    """The n-th call of the store: ended (mostly) or failed, of one of the agents."""
    created = now - rng.randrange(30 * DAY_MS)
    call = calls.new_call(
        organization_id=ORGANIZATION,
        agent_id=AGENTS[n % len(AGENTS)],
        now=created,
        call_type="phone_call" if n % 5 else "web_call",
        direction="outbound" if n % 3 else "inbound",
        from_number="+14157774444",
        to_number=f"+1213{n % 10_000_000:07d}",
        metadata={"n": n},
    )
    failed = rng.random() < 0.1
    started = created + 2_000
    length = rng.randrange(5_000, 300_000)
    call.update(
        call_status="error" if failed else "ended",
        start_timestamp=None if failed else started,
        end_timestamp=None if failed else started + length,
        call_duration=None if failed else length,
        disconnection_reason="dial_failed" if failed else "user_hangup",
        transcript=None if failed else "\n".join(f"{role}: {text}" for role, text in LINES),
        transcript_object=[]
        if failed
        else [
            {"role": role, "content": text, "timestamp": started + 3_000 * i}
            for i, (role, text) in enumerate(LINES)
        ],
        updated_at=created + 2_000 + length,
    )
    return call


def make_store(data_dir: Path, count: int) -> dict[str, str]:
    """A data directory holding `count` calls; the key pair that reads them."""
    store = EmbeddedStore(data_dir)
    try:
        now = wall_clock()
        store.add_organization(keys.new_organization(now, ORGANIZATION))
        record, secret = keys.new_api_key(ORGANIZATION, now, "bench")
        store.add_api_key(record)
        when = iso8601.utc(now)
        agents = [
            {"agent_id": agent, "agent_name": f"Agent {agent[-2:]}", "created_at": when}
            | {"updated_at": when}
            for agent in AGENTS
        ]
        store.load_organization(ORGANIZATION, {"version": 1, "agents": agents})
        rng = random.Random(0)
        started = time.perf_counter()
        for first in range(0, count, CHUNK):
            chunk = [a_call(n, now, rng) for n in range(first, min(first + CHUNK, count))]
            store.load_organization(ORGANIZATION, {"version": 1, "calls": chunk})
            done = first + len(chunk)
            print(f"  {done:,} calls stored ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        store.close()
    return {"X-API-KEY": record["api_key"], "X-API-SECRET": secret}


@contextmanager
def serving(data_dir: Path, port: int) -> Iterator[str]:
    """A `calls-server serve` process on the data directory, until the block ends."""
    environment = {**os.environ, "CALLS_LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "calls_server.cli", "--data-dir", str(data_dir)]
    process = subprocess.Popen(
        [*command, "serve", "--port", str(port)], env=environment, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            if process.poll() is not None:
                raise RuntimeError("the server stopped")
        print(f"server answering after {time.perf_counter() - started:.1f} s")
        yield base
    finally:
        process.terminate()
        process.wait()


def timed(runs: int, once: Callable[[], float]) -> str:
    """`once` (which answers seconds) `runs` times: median and maximum in ms."""
    times = [once() * 1000 for _ in range(runs)]
    return f"median {statistics.median(times):6.0f} ms  max {max(times):6.0f} ms  ({runs} runs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--port", type=int, default=8095)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="console-bench-"))
    key_file = data_dir.parent / f"{data_dir.name}.key"
    if key_file.exists():
        api_key, secret = key_file.read_text().split()
        key = {"X-API-KEY": api_key, "X-API-SECRET": secret}
    else:
        print(f"making a store of {args.calls:,} calls in {data_dir}")
        started = time.perf_counter()
        key = make_store(data_dir, args.calls)
        key_file.write_text(f"{key['X-API-KEY']} {key['X-API-SECRET']}\n")
        print(f"made in {time.perf_counter() - started:.0f} s")

    from playwright.sync_api import sync_playwright  # the test extra's

    with serving(data_dir, args.port) as base, sync_playwright() as p:
        api = httpx.Client(base_url=f"{base}/api", headers=key, timeout=30)
        total = api.get("/calls", params={"limit": 1}).json()["data"]["pagination"]["total_count"]
        some_call = api.get("/calls", params={"limit": 1}).json()["data"]["calls"][0]["call_id"]
        filtered = {"agent_id": AGENTS[3], "call_status": "error"}
        print(f"{total:,} calls stored\n")
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )

        def new_tab() -> Any:
            tab = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
            tab.goto(f"{base}/console/")
            tab.get_by_label("API key", exact=True).fill(key["X-API-KEY"])
            tab.get_by_label("API secret", exact=True).fill(key["X-API-SECRET"])
            return tab

        def sign_in(query: str = "") -> float:
            tab = new_tab()
            if query:  # the filtered view was asked for before signing in
                tab.evaluate(f"location.hash = '#/calls?{query}'")
            started = time.perf_counter()
            tab.get_by_role("button", name="Sign in").click()
            tab.locator("table.calls tbody tr").nth(19 if not query else 0).wait_for()
            seconds = time.perf_counter() - started
            tab.context.close()
            return seconds

        def next_page() -> float:
            tab = new_tab()
            tab.get_by_role("button", name="Sign in").click()
            first = tab.locator("table.calls tbody tr a").first.inner_text()
            started = time.perf_counter()
            tab.get_by_role("button", name="Next page").click()
            tab.locator("table.calls tbody tr a").first.filter(has_not_text=first).wait_for()
            seconds = time.perf_counter() - started
            tab.context.close()
            return seconds

        def call_page() -> float:
            tab = new_tab()
            tab.get_by_role("button", name="Sign in").click()
            tab.locator("table.calls tbody tr").first.wait_for()
            started = time.perf_counter()
            tab.evaluate(f"location.hash = '#/calls/{some_call}'")
            tab.locator("ol.transcript li").first.wait_for()
            seconds = time.perf_counter() - started
            tab.context.close()
            return seconds

        def api_time(path: str, conditional: bool = False, **params: Any) -> Callable[[], float]:
            """One read of `path`; `conditional`: with If-None-Match naming its current
            ETag, as the console's polls send it (answered 304, no body)."""
            headers = {}
            if conditional:
                headers["If-None-Match"] = api.get(path, params=params).headers["ETag"]

            def once() -> float:
                started = time.perf_counter()
                answer = api.get(path, params=params, headers=headers)
                assert answer.status_code == (304 if conditional else 200), answer.status_code
                return time.perf_counter() - started

            return once

        query = "&".join(f"{name}={value}" for name, value in filtered.items())
        rows = [
            ("in the browser (click to drawn):", None),
            ("sign-in to the first page of calls", sign_in),
            ("sign-in to a filtered first page", lambda: sign_in(query)),
            ("next page (cursor)", next_page),
            ("a call's page", call_page),
            ("the API alone (httpx):", None),
            ("GET /calls?limit=20", api_time("/calls", limit=20)),
            ("GET /calls?limit=20 (agent, status)", api_time("/calls", limit=20, **filtered)),
            ("GET /calls/{id}", api_time(f"/calls/{some_call}")),
            ("the same, polled unchanged (304):", None),
            ("GET /calls?limit=20", api_time("/calls", True, limit=20)),
            ("GET /calls/{id}", api_time(f"/calls/{some_call}", True)),
        ]
        for name, once in rows:
            print(name if once is None else f"  {name:<40} {timed(args.runs, once)}", flush=True)
        page = api.get("/calls", params={"limit": 20})
        again = api.get(
            "/calls", params={"limit": 20}, headers={"If-None-Match": page.headers["ETag"]}
        )
        print(
            f"  a page of 20 calls: {len(page.content):,} B answered 200, "
            f"{len(again.content)} B answered {again.status_code}"
        )
        browser.close()

    print("\nthe console's files:")
    for path in sorted(ASSETS.iterdir()):
        body = path.read_bytes()
        print(f"  {path.name:<28} {len(body):>7,} B  gzip {len(gzip.compress(body, 9)):>7,} B")


if __name__ == "__main__":
    main()
