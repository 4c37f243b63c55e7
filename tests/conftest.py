"""Shared fixtures: a fresh store and app per test, organizations with keys, helpers."""

from __future__ import annotations

import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from calls_server.app import CallsApp, create_app
from calls_server.domain import keys
from calls_server.integrations.clock import Clock, wall_clock
from calls_server.settings import Settings
from calls_server.storage import EmbeddedStore, Store
from calls_server.storage.postgres import PostgresStore
from tests.postgres_server import TestDatabases

ADMIN_TOKEN = "admin-token-for-tests-0123456789"

SEED_REQUEST = {
    "agent_id": "agent-123",
    "call_type": "PHONE_CALL",
    "direction": "OUTBOUND",
    "metadata": {"customer_id": "cust-001", "priority": "high", "campaign": "summer-2024"},
}


@dataclass(frozen=True)
class Tenant:
    """An organization and the headers of one of its active keys."""

    organization_id: str
    api_key_id: str
    headers: dict[str, str]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# The backends the `store` fixture (and so every in-process app) runs on: both, unless
# CALLS_TEST_BACKENDS names fewer (e.g. `embedded` for a quick local run).
BACKENDS = os.environ.get("CALLS_TEST_BACKENDS", "embedded,postgres").split(",")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "embedded_only: a behaviour of the embedded store alone (its files)"
    )


TIERS = ("unit", "store", "api", "system", "ecosystem")
SLOW_TIERS = ("system", "ecosystem")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its tier, the folder it sits in (`-m api`), and the system
    and ecosystem tiers `slow` too (`-m "not slow"` is the quick run)."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)
            if tier in SLOW_TIERS:
                item.add_marker("slow")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test of the store or the app runs on each backend, but those that take the
    data directory or are marked `embedded_only` (they test the embedded store's files)."""
    if "backend" not in metafunc.fixturenames:
        return
    embedded_only = "data_dir" in inspect.signature(metafunc.function).parameters or (
        metafunc.definition.get_closest_marker("embedded_only") is not None
    )
    backends = [b for b in BACKENDS if b == "embedded" or not embedded_only]
    metafunc.parametrize("backend", backends or ["embedded"])


@pytest.fixture
def backend() -> str:
    return "embedded"


@pytest.fixture(scope="session")
def databases() -> Iterator[TestDatabases]:
    """One PostgreSQL server for the session (started at first use)."""
    started = TestDatabases()
    started.start()
    yield started
    started.stop()


@pytest.fixture
def database_url(databases: TestDatabases) -> Iterator[str]:
    """A fresh, empty database."""
    url = databases.fresh_url()
    yield url
    databases.drop(url)


@pytest.fixture
def migrated_database_url(databases: TestDatabases) -> str:
    """A database with the store's schema and nothing in it (emptied for each test)."""
    return databases.migrated_url()


@pytest.fixture
def store(backend: str, data_dir: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """An empty store of the backend under test."""
    opened: Store
    if backend == "postgres":
        opened = PostgresStore(request.getfixturevalue("migrated_database_url"))
    else:
        opened = EmbeddedStore(data_dir)
    yield opened
    opened.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test (root only), for full-disk tests."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a disk-full test needs root to mount a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# In-process tests compare responses with the stored calls, which are in lower case: their
# apps answer in lower case throughout. Upstream's casing, the default, has its own tests
# (test_casing.py), as do the real server processes, which run on the defaults.
STORED_CASE = "lower"


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        validate_responses=True,
        enum_case=STORED_CASE,
    )


# Apps built in this process, by their settings (the data directory aside: an app does not
# read it). Building one costs hundreds of milliseconds, starting a built one on a fresh
# store a few: each test starts a cached app on its own store and clock, so tests stay as
# isolated as with an app each. The least recently used are dropped past a few dozen
# (tests whose settings name a receiver's port build their own).
_APPS: OrderedDict[Settings, CallsApp] = OrderedDict()
_APPS_KEPT = 32
_RUNNING: set[int] = set()


@contextmanager
def started_app(
    settings: Settings, store: Store, clock: Clock = wall_clock
) -> Iterator[TestClient]:
    """A client of the app of `settings`, started on `store` and `clock`, stopped after."""
    key = replace(settings, data_dir=Path("calls-data"))
    app = _APPS.pop(key, None)
    if app is None or id(app) in _RUNNING:  # an app runs on one store at a time
        app = create_app(key, store, clock)
    _APPS[key] = app
    while len(_APPS) > _APPS_KEPT:
        _APPS.popitem(last=False)
    app.serve_from(store, clock)
    _RUNNING.add(id(app))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        _RUNNING.discard(id(app))


@pytest.fixture
def client(settings: Settings, store: Store) -> Iterator[TestClient]:
    with started_app(settings, store) as c:
        yield c


@contextmanager
def app_client(store: Store, clock: Any = None, **settings: Any) -> Iterator[TestClient]:
    """A client of the app over `store` with the given settings (response validation on)."""
    configured = Settings(**{"validate_responses": True, "enum_case": STORED_CASE, **settings})
    with started_app(configured, store, clock or wall_clock) as client:
        yield client


def add_tenant(store: EmbeddedStore, organization_id: str) -> Tenant:
    """Create an organization with one key, straight in the store."""
    store.add_organization(keys.new_organization(1, organization_id))
    record, secret = keys.new_api_key(organization_id, 1)
    store.add_api_key(record)
    headers = {"X-API-KEY": record["api_key"], "X-API-SECRET": secret}
    return Tenant(organization_id, record["api_key_id"], headers)


@pytest.fixture
def tenant(store: EmbeddedStore) -> Tenant:
    return add_tenant(store, "test-org-123")


@pytest.fixture
def other_tenant(store: EmbeddedStore) -> Tenant:
    return add_tenant(store, "other-org")


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def create_call(client: TestClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    """POST /api/calls/create (the seed's body unless given) and return the call."""
    response = client.post("/api/calls/create", json=body or SEED_REQUEST, headers=tenant.headers)
    assert response.status_code == 200, response.text
    call: dict[str, Any] = response.json()["data"]["call"]
    return call


def assert_error(response: Any, status: int, error_contains: str = "") -> dict[str, Any]:
    """The response is an error envelope with `status` whose `error` mentions the text."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"message", "status", "error", "data", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["status"] == "error"
    assert body["data"] is None
    assert body["message"]
    assert error_contains in body["error"], body["error"]
    return body


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- a real server process on loopback ------------------------------------------------------


@dataclass
class RunningServer:
    """A `calls-server serve` process on 127.0.0.1."""

    process: subprocess.Popen[str]
    base_url: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def new_key_headers(self, organization_id: str | None = None) -> dict[str, str]:
        """Create an organization (with `organization_id`, or a generated one) and a key
        pair over the admin API; the two headers that authenticate with it."""
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        body = {"organization_id": organization_id} if organization_id else {}
        created = httpx.post(f"{self.base_url}/api/organizations", json=body, headers=admin)
        org = created.json()["data"]["organization_id"]
        key = httpx.post(f"{self.base_url}/api/organizations/{org}/api-keys", headers=admin)
        data = key.json()["data"]
        return {"X-API-KEY": data["api_key"], "X-API-SECRET": data["api_secret"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `calls-server` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "calls_server.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


SERVER_COMMAND = (sys.executable, "-m", "calls_server.cli")


@contextmanager
def running_server(
    data_dir: Path,
    command: tuple[str, ...] = SERVER_COMMAND,
    serve_args: tuple[str, ...] = (),
    **env: str,
) -> Iterator[RunningServer]:
    """Start the server (`command`, default this interpreter's) on a free port, wait until it
    answers, stop it with SIGTERM."""
    port = free_port()
    log_path = data_dir.parent / f"server-{port}.log"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    environ = {
        **os.environ,
        "CALLS_ADMIN_TOKEN": ADMIN_TOKEN,
        "CALLS_LOG_LEVEL": "warning",
        **env,
    }
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                *command,
                "--data-dir",
                str(data_dir),
                "serve",
                *serve_args,
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=environ,
        )
    server = RunningServer(process, f"http://127.0.0.1:{port}", data_dir, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.log()}")
            try:
                if httpx.get(f"{server.base_url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[Any]) -> None:
    """Stop a server process as its operator would (SIGTERM), killing it after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real server shared by the tests of one module (each takes its own key pair)."""
    with running_server(tmp_path_factory.mktemp("server") / "data") as running:
        yield running


# -- a real HTTP receiver on loopback (stands in for the dialer) ----------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers from a script.

    `reply_to`, if set, answers each request: (status, seconds to wait before answering).
    Otherwise `replies` is consumed one per request:
    when it runs out, requests get 202 at once.
    """

    def __init__(self, port: int = 0) -> None:
        self.received: list[Received] = []
        self.replies: list[tuple[int, float]] = []
        self.reply_to: Callable[[Received], tuple[int, float]] | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(Received(self.path, dict(self.headers), body))
                if receiver.reply_to is not None:
                    status, delay = receiver.reply_to(receiver.received[-1])
                else:
                    status, delay = receiver.replies.pop(0) if receiver.replies else (202, 0.0)
                time.sleep(delay)
                payload = b'{"ok": true}' if status < 400 else b"no such number"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval: shutdown() waits for one, in every test's teardown.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


class FakeClock:
    """A clock that stands still until a test moves it (Unix milliseconds)."""

    def __init__(self, now: int | None = None) -> None:
        self.now = now if now is not None else time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
