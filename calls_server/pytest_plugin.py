"""A pytest plugin that hands your tests a running sandbox of this server
(`pip install calls-server[pytest]`; pytest loads it by itself).

- `calls_sandbox`: a sandbox server started once per session (`calls-server serve` with
  CALLS_SANDBOX on a free port of 127.0.0.1, a temporary data directory, an organization
  and a key pair of its own), reset before each test: its records, fault rules and clock.
  It gives the base URL and credentials, a client, and the sandbox's controls: `freeze`,
  `advance` and `resume` its clock, order a `fault`, `reset`, `export` and `load` its state.
- `calls_receiver`: an HTTP server on 127.0.0.1 that records what it is sent (point a
  webhook at its `url`) and answers 200.
- `calls_sandbox_environment`: the variables the server starts with (override the fixture
  to add your own, for example `CALLS_SANDBOX_SEED`).

Nothing here is loaded until a test asks for one of the fixtures.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

# How long the server has to answer its first request.
START_TIMEOUT = 60.0


class SandboxError(Exception):
    """The sandbox answered a control request with an error (its envelope is `body`)."""

    def __init__(self, status_code: int, body: Any) -> None:
        super().__init__(f"{status_code}: {body}")
        self.status_code, self.body = status_code, body


@dataclass
class CallsSandbox:
    """A running sandbox server and the organization a test works in."""

    base_url: str  # ends with /api: the API's operations are relative to it
    organization_id: str
    api_key: str
    api_secret: str
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """The organization's credentials, as headers."""
        return {"X-API-KEY": self.api_key, "X-API-SECRET": self.api_secret}

    def client(self, **options: Any) -> httpx.Client:
        """An HTTP client of the API (paths relative to `base_url`), signed in."""
        return httpx.Client(base_url=self.base_url, headers=self.headers, **options)

    # -- the clock -------------------------------------------------------------------------
    def now_ms(self) -> int:
        """The organization's time (Unix ms)."""
        return int(_record(self._call("GET", "/sandbox/clock"))["now_ms"])

    def freeze(self, at: str | None = None) -> dict[str, Any]:
        """Freeze the organization's clock (at an ISO 8601 time, default now)."""
        return _record(
            self._call("POST", "/sandbox/clock/freeze", {} if at is None else {"frozen_at": at})
        )

    def advance(self, seconds: float | None = None, to: str | None = None) -> dict[str, Any]:
        """Move the frozen clock forward, running what falls due on the way."""
        body = {"seconds": seconds} if to is None else {"to": to}
        return _record(self._call("POST", "/sandbox/clock/advance", body))

    def resume(self) -> dict[str, Any]:
        """Put the organization back on the real time."""
        return _record(self._call("POST", "/sandbox/clock/resume"))

    # -- faults and state ------------------------------------------------------------------
    def fault(self, **rule: Any) -> dict[str, Any]:
        """Order a fault (createSandboxFault's fields); the rule as answered."""
        return _record(self._call("POST", "/sandbox/faults", rule))

    def faults(self) -> list[dict[str, Any]]:
        """The organization's fault rules, with how often each fired."""
        return [_record(rule) for rule in self._call("GET", "/sandbox/faults")]

    def reset(self) -> dict[str, Any]:
        """Empty the organization: its records, fault rules and test clock."""
        return _record(self._call("POST", "/sandbox/reset"))

    def export(self) -> dict[str, Any]:
        """The organization's records, as a fixture `load` takes."""
        return _record(self._call("GET", "/sandbox/state"))

    def load(self, fixture: dict[str, Any] | str | Path) -> dict[str, Any]:
        """Load a fixture (a dict, or the path of a JSON file) into the organization."""
        if not isinstance(fixture, dict):
            fixture = json.loads(Path(fixture).read_text(encoding="utf-8"))
        return _record(self._call("POST", "/sandbox/state", fixture))

    def log(self) -> str:
        """What the server wrote to its log so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(
            method, self.base_url + path, json=body, headers=self.headers, timeout=300
        )
        if response.status_code >= 400:
            raise SandboxError(response.status_code, response.json())
        return response.json()["data"]


@dataclass
class Delivery:
    """One request `calls_receiver` was sent."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class CallsReceiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers 200."""

    def __init__(self) -> None:
        self.received: list[Delivery] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(Delivery(self.path, dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def events(self) -> list[Any]:
        """The bodies received, parsed (webhook events: `{event, event_id, call, ...}`)."""
        return [delivery.json() for delivery in self.received]

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate(events)` holds (for deliveries on the real time)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"not received within {timeout} s: {self.events}")
            time.sleep(0.02)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="session")
def calls_sandbox_environment() -> dict[str, str]:
    """The variables the sandbox server starts with, besides its port and data directory:
    the sandbox on, and webhooks allowed to loopback receivers."""
    return {
        "CALLS_SANDBOX": "true",
        "CALLS_WEBHOOK_ALLOW_HTTP": "true",
        "CALLS_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        "CALLS_LOG_LEVEL": "warning",
    }


@pytest.fixture(scope="session")
def calls_sandbox_server(calls_sandbox_environment: dict[str, str]) -> Iterator[CallsSandbox]:
    """The session's sandbox server (not reset between tests: use `calls_sandbox`)."""
    with (
        tempfile.TemporaryDirectory(prefix="calls-sandbox-") as directory,
        _started(Path(directory), calls_sandbox_environment) as sandbox,
    ):
        yield sandbox


@pytest.fixture
def calls_sandbox(calls_sandbox_server: CallsSandbox) -> CallsSandbox:
    """The session's sandbox server, its organization reset for this test."""
    calls_sandbox_server.reset()
    return calls_sandbox_server


@pytest.fixture
def calls_receiver() -> Iterator[CallsReceiver]:
    """An HTTP receiver on 127.0.0.1 for this test (a webhook's `url`)."""
    receiver = CallsReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _started(directory: Path, environment: dict[str, str]) -> Iterator[CallsSandbox]:
    """A sandbox server on a free port with its data in `directory`, an organization and
    a key pair made through its admin API; stopped (SIGTERM) after."""
    port, admin_token = _free_port(), secrets.token_urlsafe(24)
    log_path = directory / "server.log"
    command = [sys.executable, "-m", "calls_server.cli", "--data-dir", str(directory / "data")]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **environment, "CALLS_ADMIN_TOKEN": admin_token},
        )
    base_url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_until_ready(process, base_url, log_path)
        admin = {"Authorization": f"Bearer {admin_token}"}
        organization = httpx.post(
            f"{base_url}/organizations", json={"name": "pytest"}, headers=admin
        ).json()["data"]
        key = httpx.post(
            f"{base_url}/organizations/{organization['organization_id']}/api-keys", headers=admin
        ).json()["data"]
        yield CallsSandbox(
            base_url,
            organization["organization_id"],
            key["api_key"],
            key["api_secret"],
            process,
            log_path,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_ready(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the sandbox server exited:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sandbox server did not start:\n{log_path.read_text()}")
        time.sleep(0.1)


def _record(data: Any) -> dict[str, Any]:
    """An answer's `data` that is one record."""
    assert isinstance(data, dict), data
    return data
