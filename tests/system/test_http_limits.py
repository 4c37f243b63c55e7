"""The HTTP layer under abuse, against a real server process (calls_server/http_protocol.py).

Abusive clients are raw sockets. Memory is read from /proc/<pid>/status: VmHWM, the
process's peak resident set, so a buffer that was allocated and freed again between two
looks still counts. Measured on the development machine (2 cores): a 64 MB header raises
the peak by under 1 MiB (bound here: 16 MiB, a quarter of what buffering it would take);
3,000 slow clients at a cap of 500 connections by about 3 MiB (bound: 50 MiB).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import resource
import selectors
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from calls_server.metrics import EXPORTER_IDLE_TIMEOUT, EXPORTER_MAX_CONNECTIONS
from tests.api.test_metrics import ADMIN, value
from tests.conftest import (
    ADMIN_TOKEN,
    SERVER_COMMAND,
    RunningServer,
    free_port,
    running_server,
    stop,
    wait_for,
)

MIB = 1 << 20
# What one read of the event loop takes at most (libuv's and asyncio's 256 KiB buffers).
READ_CHUNK = 256 * 1024


# -- helpers ---------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _peak_rss(server: RunningServer) -> int:
    """The server's peak resident set so far, in bytes."""
    return _status_kib(server.process.pid, "VmHWM") * 1024


def _bytes_read(server: RunningServer) -> int:
    """Bytes the server process has read with read() so far (sockets included)."""
    for line in Path(f"/proc/{server.process.pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def _connect(server: RunningServer, timeout: float = 10.0) -> socket.socket:
    port = int(server.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after a response still
    leaves the response readable: it was received first)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _assert_refusal(raw: bytes, status: int, error_contains: str) -> dict[str, Any]:
    """`raw` is one response: `status`, the error envelope, the connection closed."""
    assert raw, "the server closed the connection without an answer"
    code, headers, body = _parse(raw)
    assert code == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert "server" not in headers
    assert "date" in headers
    assert int(headers["content-length"]) == len(body)
    envelope: dict[str, Any] = json.loads(body)
    assert set(envelope) == {"message", "status", "error", "data"}
    assert envelope["status"] == "error"
    assert envelope["data"] is None
    assert envelope["message"]
    assert error_contains in envelope["error"], envelope["error"]
    return envelope


def _assert_healthy(server: RunningServer) -> None:
    response = httpx.get(f"{server.base_url}/api/health", timeout=5)
    assert response.status_code == 200
    assert response.json()["status"] == "success"


def _send_slowly(sock: socket.socket, data: bytes, interval: float, limit: float) -> None:
    """Send `data` a byte every `interval` seconds, for at most `limit` seconds, stopping
    as soon as the server answers or closes."""
    started = time.monotonic()
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        for byte in data:
            if time.monotonic() - started > limit or selector.select(interval):
                return
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return


# -- header size and count -------------------------------------------------------------------


def test_a_64_mb_header_is_refused_431_after_reading_about_the_limit(server):
    _assert_healthy(server)
    peak_before = _peak_rss(server)
    read_before = _bytes_read(server)
    megabyte = b"a" * MIB
    sent = 0
    with _connect(server) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ")
        try:
            for _ in range(64):
                sock.sendall(megabyte)
                sent += MIB
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading and closed: expected
        raw = _read_until_closed(sock)
    read = _bytes_read(server) - read_before
    growth = _peak_rss(server) - peak_before

    _assert_refusal(raw, 431, "exceed the limit of 16384 bytes")
    assert sent < 64 * MIB, "the server read the whole 64 MB header"
    # The head limit, plus at most one read past it (and a health check's worth).
    assert read <= 16_384 + READ_CHUNK + 64 * 1024, read
    assert growth <= 16 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"
    _assert_healthy(server)


def test_more_headers_than_the_limit_are_refused_431(server):
    fields = b"".join(b"X-Field-%d: v\r\n" % i for i in range(100))  # with Host: 101
    with _connect(server) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + fields + b"\r\n")
        raw = _read_until_closed(sock)

    _assert_refusal(raw, 431, "more than the limit of 100 header fields")
    _assert_healthy(server)


def test_a_request_at_the_header_limits_is_served(server):
    # 100 header fields (Host, Connection, 97 more and X-Pad), 16,384 bytes to the end of
    # the blank line.
    head = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += b"".join(b"X-Field-%d: v\r\n" % i for i in range(97))
    head += b"X-Pad: " + b"p" * (16_384 - len(head) - len(b"X-Pad: \r\n\r\n")) + b"\r\n\r\n"
    assert len(head) == 16_384
    with _connect(server) as sock:
        sock.sendall(head)
        raw = _read_until_closed(sock)

    status, _, body = _parse(raw)
    assert status == 200, raw[:300]
    assert json.loads(body)["status"] == "success"


def test_responses_carry_a_date_but_no_server_header(server):
    response = httpx.get(f"{server.base_url}/api/health")

    assert response.status_code == 200
    assert "server" not in response.headers
    assert "date" in response.headers


# -- timeouts --------------------------------------------------------------------------------


def test_a_client_trickling_its_headers_is_cut_off_408_after_the_header_timeout(data_dir):
    with running_server(data_dir, CALLS_HEADER_TIMEOUT="1") as server:
        with _connect(server) as sock:
            started = time.monotonic()
            head = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 100
            _send_slowly(sock, head, interval=0.1, limit=5)
            raw = _read_until_closed(sock)
            elapsed = time.monotonic() - started

        _assert_refusal(raw, 408, "did not arrive within 1 s")
        assert 0.9 <= elapsed <= 3, elapsed
        _assert_healthy(server)


def test_an_idle_connection_is_closed_without_an_answer_after_the_header_timeout(data_dir):
    with running_server(data_dir, CALLS_HEADER_TIMEOUT="1") as server:
        with _connect(server) as sock:
            started = time.monotonic()
            raw = _read_until_closed(sock)
            elapsed = time.monotonic() - started

        assert raw == b""
        assert 0.9 <= elapsed <= 3, elapsed
        _assert_healthy(server)


def _body_request(headers: dict[str, str], length: int) -> bytes:
    lines = [
        "POST /api/calls/create HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_stalled_body_is_cut_off_408_after_the_body_timeout(data_dir):
    with running_server(data_dir, CALLS_BODY_TIMEOUT="1") as server:
        key = server.new_key_headers()
        with _connect(server) as sock:
            started = time.monotonic()
            sock.sendall(_body_request(key, 200) + b'{"agent_id": "agent-1", ')
            raw = _read_until_closed(sock)
            elapsed = time.monotonic() - started

        _assert_refusal(raw, 408, "body did not arrive within 1 s")
        assert 0.9 <= elapsed <= 3, elapsed
        _assert_healthy(server)


def test_a_trickled_body_is_cut_off_408_after_the_body_timeout(data_dir):
    with running_server(data_dir, CALLS_BODY_TIMEOUT="1") as server:
        key = server.new_key_headers()
        with _connect(server) as sock:
            started = time.monotonic()
            sock.sendall(_body_request(key, 200))
            _send_slowly(sock, b" " * 200, interval=0.1, limit=5)
            raw = _read_until_closed(sock)
            elapsed = time.monotonic() - started

        _assert_refusal(raw, 408, "body did not arrive within 1 s")
        assert 0.9 <= elapsed <= 3, elapsed
        _assert_healthy(server)


# -- the connection cap ----------------------------------------------------------------------

SLOW_CLIENTS = 3000
CAP = 500
FLOOD_HEADER_TIMEOUT = 2.0


@contextmanager
def _descriptors(needed: int) -> Iterator[None]:
    """Raise this process's soft limit on open files to `needed`, for the duration."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _poll_health(server: RunningServer, stop: threading.Event, answered: list[float]) -> None:
    """Ask for /api/health every 0.2 s until `stop`; note when it was answered."""
    while not stop.wait(0.2):
        try:
            if httpx.get(f"{server.base_url}/api/health", timeout=2).status_code == 200:
                answered.append(time.monotonic())
        except httpx.TransportError:
            pass  # turned away at the cap


def test_3000_slow_clients_are_turned_away_at_the_cap_and_cut_off_without_memory_growth(
    data_dir,
):
    env = {
        "CALLS_MAX_CONNECTIONS": str(CAP),
        # All from 127.0.0.1: the cap per address is not what is tested here.
        "CALLS_MAX_CONNECTIONS_PER_ADDRESS": str(SLOW_CLIENTS),
        "CALLS_HEADER_TIMEOUT": f"{FLOOD_HEADER_TIMEOUT:g}",
    }
    with _descriptors(SLOW_CLIENTS + 1024), running_server(data_dir, **env) as server:
        _assert_healthy(server)
        peak_before = _peak_rss(server)
        port = int(server.base_url.rsplit(":", 1)[1])
        sockets: list[socket.socket] = []
        closed_at: dict[socket.socket, float] = {}
        answered_408 = 0
        health: list[float] = []
        stop = threading.Event()
        poller = threading.Thread(target=_poll_health, args=(server, stop, health))
        selector = selectors.DefaultSelector()
        try:
            started = time.monotonic()
            for _ in range(SLOW_CLIENTS):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                sockets.append(sock)
                selector.register(sock, selectors.EVENT_WRITE)
            poller.start()
            # Each slow client sends the start of a request line, then nothing; the
            # server must close every one of them.
            unsent = set(sockets)
            deadline = started + FLOOD_HEADER_TIMEOUT + 10
            while len(closed_at) < SLOW_CLIENTS and time.monotonic() < deadline:
                for key, _ in selector.select(0.2):
                    sock = key.fileobj  # type: ignore[assignment]
                    if sock in unsent:
                        unsent.discard(sock)
                        try:
                            sock.send(b"GET /api/hea")
                            selector.modify(sock, selectors.EVENT_READ)
                            continue
                        except OSError:  # turned away before the send
                            answer = b""
                    else:
                        try:
                            answer = sock.recv(4096)
                        except OSError:
                            answer = b""
                    answered_408 += answer.startswith(b"HTTP/1.1 408 ")
                    closed_at[sock] = time.monotonic() - started
                    selector.unregister(sock)
            # Health while the slow clients' sockets are all still open on this side.
            wait_for(lambda: bool(health), timeout=FLOOD_HEADER_TIMEOUT + 5)
            peak_growth = _peak_rss(server) - peak_before
        finally:
            stop.set()
            if poller.is_alive():
                poller.join()
            selector.close()
            for sock in sockets:
                sock.close()
        elapsed = time.monotonic() - started

        assert len(closed_at) == SLOW_CLIENTS, "some slow clients were never cut off"
        turned_away = sum(at < FLOOD_HEADER_TIMEOUT * 0.75 for at in closed_at.values())
        # All but the (at most) CAP accepted ones are closed at once, unanswered...
        assert turned_away >= SLOW_CLIENTS - CAP, turned_away
        # ...and the accepted ones are answered 408 when their header timeout runs out.
        assert 0 < answered_408 <= CAP, answered_408
        assert max(closed_at.values()) <= FLOOD_HEADER_TIMEOUT + 5
        assert peak_growth <= 50 * MIB, f"peak RSS grew by {peak_growth / MIB:.1f} MiB"
        assert "Connection limit of 500 reached" in server.log()
        assert elapsed < 30
        _assert_healthy(server)


# -- TLS ---------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is here")
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec"),
                *("-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"),
                *("-keyout", str(keyfile), "-out", str(certfile), "-subj", "/CN=127.0.0.1"),
                *("-addext", "subjectAltName=IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
        )
        return certfile, keyfile
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


@contextmanager
def _tls_server(data_dir: Path, certfile: Path, keyfile: Path) -> Iterator[str]:
    """A server with TLS on; its https base URL. (conftest's `running_server` waits for
    it over plain http, which a TLS port never answers.)"""
    port = free_port()
    log_path = data_dir.parent / f"server-{port}.log"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "CALLS_ADMIN_TOKEN": ADMIN_TOKEN,
        "CALLS_LOG_LEVEL": "warning",
        "CALLS_TLS_CERTFILE": str(certfile),
        "CALLS_TLS_KEYFILE": str(keyfile),
    }
    command = [*SERVER_COMMAND, "--data-dir", str(data_dir), "serve", "--port", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base_url = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(certfile))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base_url}/api/health", verify=trust, timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield base_url
    finally:
        stop(process)


def test_the_server_answers_https_on_loopback_with_tls_settings(data_dir, tmp_path):
    certfile, keyfile = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(certfile))

    with _tls_server(data_dir, certfile, keyfile) as base_url:
        response = httpx.get(f"{base_url}/api/health", verify=trust)
        with pytest.raises(httpx.TransportError):
            httpx.get(base_url.replace("https:", "http:") + "/api/health", timeout=2)

    assert response.status_code == 200
    assert response.json()["status"] == "success"
    assert response.url.scheme == "https"
    assert "server" not in response.headers


# -- proxies ---------------------------------------------------------------------------------


def _logged_client(server: RunningServer, forwarded_for: str) -> str:
    """Send a request with X-Forwarded-For; the client address the access log names."""
    request_id = f"xff-{time.monotonic_ns()}"
    headers = {"X-Forwarded-For": forwarded_for, "X-Request-ID": request_id}
    assert httpx.get(f"{server.base_url}/api/health", headers=headers).status_code == 200
    marker = f"[{request_id}] "
    wait_for(lambda: marker in server.log(), timeout=5)
    line = next(line for line in server.log().splitlines() if marker in line)
    return line.split(" client=", 1)[1].split()[0]


def test_x_forwarded_for_is_ignored_when_no_proxy_is_trusted(data_dir):
    with running_server(data_dir, CALLS_LOG_LEVEL="info") as server:
        client = _logged_client(server, "203.0.113.7")

    assert client.startswith("127.0.0.1:"), client


def test_x_forwarded_for_is_ignored_from_a_peer_not_among_the_trusted_proxies(data_dir):
    env = {"CALLS_LOG_LEVEL": "info", "CALLS_FORWARDED_ALLOW_IPS": "10.9.8.7"}
    with running_server(data_dir, **env) as server:
        client = _logged_client(server, "203.0.113.7")

    assert client.startswith("127.0.0.1:"), client


def test_x_forwarded_for_is_believed_from_a_trusted_proxy(data_dir):
    env = {"CALLS_LOG_LEVEL": "info", "CALLS_FORWARDED_ALLOW_IPS": "127.0.0.1"}
    with running_server(data_dir, **env) as server:
        client = _logged_client(server, "203.0.113.7")

    assert client.startswith("203.0.113.7"), client


# -- clients that do not read their answers --------------------------------------------------

BIG_CALLS = 20
PAD = 1_000_000  # bytes of metadata per call: a page of all of them is about 20 MB
NON_READERS = 6
SEND_TIMEOUT = 3.0
BUFFER_BUDGET = 48 * MIB


def _scrape(server: RunningServer) -> str:
    response = httpx.get(f"{server.base_url}/metrics", headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def _create_big_calls(server: RunningServer) -> dict[str, str]:
    """BIG_CALLS calls of about PAD bytes each; the key headers that list them."""
    key = server.new_key_headers()
    with httpx.Client(base_url=server.base_url, headers=key, timeout=30) as http:
        for i in range(BIG_CALLS):
            # Four strings: one may be 256 KiB at most.
            pads = {f"pad{j}": f"{i:04d}" + "x" * (PAD // 4) for j in range(4)}
            body = {"agent_id": "agent-big", "metadata": pads}
            created = http.post("/api/calls/create", json=body)
            assert created.status_code == 200, created.text[:300]
    return key


def _page_request(key: dict[str, str]) -> bytes:
    head = [
        "GET /api/calls?limit=100 HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{name}: {value}" for name, value in key.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def _non_reader(server: RunningServer) -> socket.socket:
    """A connection whose client takes next to nothing: a small receive buffer, never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])))
    return sock


def _cut_for_not_reading(text: str) -> float:
    return sum(
        value(text, "calls_http_connections_cut_total", reason=reason) or 0
        for reason in ("send_timeout", "max_buffered_bytes")
    )


def test_clients_not_reading_big_pages_hold_bounded_memory_and_are_cut_after_the_send_timeout(
    data_dir,
):
    env = {
        "CALLS_SEND_TIMEOUT": f"{SEND_TIMEOUT:g}",
        "CALLS_MAX_BUFFERED_BYTES": str(BUFFER_BUDGET),
    }
    with running_server(data_dir, **env) as server:
        key = _create_big_calls(server)
        page = httpx.get(f"{server.base_url}/api/calls?limit=100", headers=key, timeout=30)
        assert page.status_code == 200
        page_bytes = len(page.content)
        assert page_bytes > BIG_CALLS * PAD
        peak_before = _peak_rss(server)
        sockets = []
        try:
            started = time.monotonic()
            for _ in range(NON_READERS):
                sock = _non_reader(server)
                sockets.append(sock)
                # Ten pages asked for, none read: sequential requests and pipelined ones.
                for _ in range(10):
                    sock.sendall(_page_request(key))
                time.sleep(0.3)  # each one's answer is built and stalled before the next
            # Other clients are served meanwhile.
            _assert_healthy(server)
            other = httpx.get(f"{server.base_url}/api/calls?limit=1", headers=key, timeout=10)
            assert other.status_code == 200
            assert len(other.json()["data"]["calls"]) == 1
            wait_for(lambda: _cut_for_not_reading(_scrape(server)) >= NON_READERS, timeout=20)
            elapsed = time.monotonic() - started
            peak_growth = _peak_rss(server) - peak_before
            received = []
            for sock in sockets:
                received.append(len(_read_until_closed(sock)))
        finally:
            for sock in sockets:
                sock.close()
        text = _scrape(server)
        _assert_healthy(server)

    # Without limits each connection held two answers (one unsent, one built and waiting)
    # for as long as it stayed open: twelve of them, 1.4 GB.
    assert peak_growth <= BUFFER_BUDGET + 3 * page_bytes, f"{peak_growth / MIB:.0f} MiB"
    assert elapsed >= SEND_TIMEOUT
    # Cut before they got even two of their ten pages.
    assert all(size < 2 * page_bytes for size in received), received
    assert value(text, "calls_http_connections_cut_total", reason="send_timeout")
    assert value(text, "calls_http_response_bytes_buffered") == 0


# -- connections per address -----------------------------------------------------------------

PER_ADDRESS = 5


def _connect_from(server: RunningServer, address: str) -> socket.socket:
    """A connection from `address` (any of 127.0.0.0/8 is this host's loopback on Linux)."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])))
    return sock


def _health_over(sock: socket.socket) -> int:
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    return _parse(_read_until_closed(sock))[0]


def test_an_address_over_its_connection_cap_is_refused_while_another_address_connects(data_dir):
    env = {"CALLS_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS)}
    with running_server(data_dir, **env) as server:
        held = [_connect_from(server, "127.0.0.2") for _ in range(PER_ADDRESS)]
        try:
            # The server has taken the held connections in once it has answered after them.
            _assert_healthy(server)
            with _connect_from(server, "127.0.0.2") as over:
                started = time.monotonic()
                refused = _read_until_closed(over)
                refused_after = time.monotonic() - started
            with _connect_from(server, "127.0.0.3") as other:
                other_status = _health_over(other)
            text = _scrape(server)
        finally:
            for sock in held:
                sock.close()
        # Places are given back when connections close.
        wait_for(lambda: _scrape(server).count("calls_http_connections_open 1.0") == 1)
        with _connect_from(server, "127.0.0.2") as again:
            again_status = _health_over(again)

    # Closed at once, unread (not by the 10 s header timeout).
    assert refused == b"", "a connection over the cap was read and answered"
    assert refused_after < 2, refused_after
    assert other_status == 200
    assert (
        value(text, "calls_http_connections_refused_total", reason="max_connections_per_address")
        == 1
    )
    assert value(text, "calls_http_connections_refused_total", reason="max_connections") == 0
    assert again_status == 200


def test_a_trusted_proxy_is_not_capped_per_address(data_dir):
    env = {
        "CALLS_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
        "CALLS_FORWARDED_ALLOW_IPS": "127.0.0.4",
    }
    with running_server(data_dir, **env) as server:
        held = [_connect_from(server, "127.0.0.4") for _ in range(PER_ADDRESS)]
        try:
            with _connect_from(server, "127.0.0.4") as beyond:
                status = _health_over(beyond)
        finally:
            for sock in held:
                sock.close()

    assert status == 200


# -- the Host header ---------------------------------------------------------------------------


def test_an_http_1_1_request_without_host_is_refused_400(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\n\r\n")
        raw = _read_until_closed(sock)

    _assert_refusal(raw, 400, "must have exactly one Host header")


def test_a_request_with_two_host_headers_is_refused_400(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
        raw = _read_until_closed(sock)

    _assert_refusal(raw, 400, "more than one Host header")


def test_an_http_1_0_request_without_host_is_served(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /api/health HTTP/1.0\r\n\r\n")
        raw = _read_until_closed(sock)

    assert _parse(raw)[0] == 200, raw[:300]


# -- the metrics listener -----------------------------------------------------------------------


def _threads(server: RunningServer) -> int:
    return _status_kib(server.process.pid, "Threads")


def test_idle_connections_to_the_metrics_port_are_closed_and_hold_a_bounded_number_of_threads(
    data_dir,
):
    port = free_port()
    with running_server(data_dir, CALLS_METRICS_PORT=str(port)) as server:
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
        threads_before = _threads(server)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(50)]
        try:
            time.sleep(0.5)
            threads_held = _threads(server)
            started = time.monotonic()
            answers = [_read_until_closed(sock) for sock in idle]
            closed_after = time.monotonic() - started
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: _threads(server) <= threads_before)
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics")

    assert threads_held - threads_before <= EXPORTER_MAX_CONNECTIONS
    assert answers == [b""] * len(idle)
    assert closed_after <= EXPORTER_IDLE_TIMEOUT + 3
    assert scrape.status_code == 200


def test_a_client_not_reading_its_last_answer_is_cut_after_the_send_timeout(data_dir):
    # Connection: close: the server closes once the answer is taken, which a client that
    # never reads never lets happen.
    with running_server(data_dir, CALLS_SEND_TIMEOUT=f"{SEND_TIMEOUT:g}") as server:
        key = _create_big_calls(server)
        with _non_reader(server) as sock:
            started = time.monotonic()
            sock.sendall(_page_request(key).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            wait_for(lambda: _cut_for_not_reading(_scrape(server)) == 1, timeout=SEND_TIMEOUT + 5)
            elapsed = time.monotonic() - started
            text = _scrape(server)

    assert elapsed >= SEND_TIMEOUT
    assert value(text, "calls_http_connections_cut_total", reason="send_timeout") == 1
    assert value(text, "calls_http_response_bytes_buffered") == 0
