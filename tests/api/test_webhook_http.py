"""The deliverer's own HTTP/1.1 client (services/webhooks.py): what it makes of answers, its
kept-alive connections, TLS with the URL's host name, and what a failed exchange records."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from calls_server.domain import calls, webhooks
from calls_server.domain.webhooks import RetryPolicy
from calls_server.integrations.egress import EgressPolicy
from calls_server.integrations.webhook_client import MAX_BODY, ProtocolError, parse_response
from calls_server.services.webhooks import WebhookDeliverer
from tests.conftest import wait_for

LOOPBACK = EgressPolicy(
    allow_http=True, allowed_networks=EgressPolicy.parse_networks("127.0.0.0/8, ::1/128")
)
QUICK = RetryPolicy(first_delay=30, max_delay=60)  # a failed attempt is not retried here

# -- reading answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "keep"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, True),
        (b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n", 202, True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 200, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", 200, True),
        # A body up to the close: the status is known, the connection not reused.
        (b"HTTP/1.1 500 Oops\r\n\r\nsome", 500, False),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            201,
            True,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n3;x=y\r\nabc\r\n0\r\n\r\n",
            200,
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n", 200, True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n...", 200, False),
        (f"HTTP/1.1 413 Big\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode(), 413, False),
    ],
)
def test_an_answer_is_read_to_its_end_or_known_not_to_be_reused(data, status, keep):
    assert parse_response(data) == (status, keep, len(data))
    if keep:  # a request answered ahead would follow it: where this one ends is known
        assert parse_response(data + b"HTTP/1.1 200") == (status, keep, len(data))


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Len",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    ],
)
def test_an_incomplete_answer_waits_for_more(data):
    assert parse_response(data) is None


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokay\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20_000,
    ],
)
def test_what_is_not_an_http_answer_is_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        parse_response(data)


# -- against endpoints --------------------------------------------------------------------------


class Endpoint:
    """A TCP server on loopback: each connection is served by `serve(connection, server)` on
    a thread of its own; it keeps what it was sent (`requests`: head, body) and how many
    connections were made."""

    def __init__(
        self, serve: Callable[[socket.socket, Endpoint], None], tls: ssl.SSLContext | None = None
    ) -> None:
        self.serve = serve
        self.tls = tls
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            if self.tls is not None:
                connection = self.tls.wrap_socket(connection, server_side=True)
            self.serve(connection, self)
        except (OSError, ssl.SSLError):
            pass
        finally:
            connection.close()

    def read_request(self, connection: socket.socket) -> bool:
        """Read one request into `requests`; False at the connection's end."""
        data = b""
        while b"\r\n\r\n" not in data:
            more = connection.recv(65536)
            if not more:
                return False
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += connection.recv(65536)
        self.requests.append((head, body))
        return True

    def close(self) -> None:
        self.listener.close()


def answering(*answers: bytes) -> Callable[[socket.socket, Endpoint], None]:
    """Serves each request of a connection with the next of `answers` (the last repeated),
    keeping the connection open."""

    def serve(connection: socket.socket, endpoint: Endpoint) -> None:
        n = 0
        while endpoint.read_request(connection):
            connection.sendall(answers[min(n, len(answers) - 1)])
            n += 1

    return serve


@pytest.fixture
def endpoints() -> Iterator[list[Endpoint]]:
    made: list[Endpoint] = []
    yield made
    for endpoint in made:
        endpoint.close()


def deliver_to(store, tenant, url: str, calls_made: int = 1, **options) -> list[dict]:
    """Deliver the events of `calls_made` new calls to a webhook at `url`; the events after
    their first attempt."""
    hook = webhooks.new_webhook(
        tenant.organization_id,
        {"name": "hook", "url": url, "is_active": True, "status_events": True},
        now=1,
    )
    store.add_webhook(hook)
    deliverer = WebhookDeliverer(store, LOOPBACK, QUICK, **options)
    deliverer.start()
    try:
        for n in range(calls_made):
            store.add_call(
                calls.new_call(
                    organization_id=tenant.organization_id,
                    agent_id="a",
                    now=n,
                    call_type="web_call",
                )
            )

        def attempted() -> list[dict]:
            found, _ = store.list_webhook_events(tenant.organization_id, hook["id"])
            return found if all(event["attempts"] for event in found) else []

        wait_for(lambda: len(attempted()) == calls_made)
        return attempted()
    finally:
        deliverer.stop()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_deliveries_to_an_endpoint_share_one_kept_alive_connection(store, tenant, endpoints):
    endpoint = Endpoint(answering(OK))
    endpoints.append(endpoint)

    events = deliver_to(
        store, tenant, f"http://127.0.0.1:{endpoint.port}/hooks?a=1", calls_made=5, per_endpoint=1
    )

    assert [event["status"] for event in events] == ["delivered"] * 5
    assert endpoint.connections == 1
    head, body = endpoint.requests[0]
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hooks?a=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{endpoint.port}".encode() in lines
    assert b"Content-Type: application/json" in lines
    assert json.loads(body)["event"] == "call_registered"


def test_chunked_and_informational_answers_keep_the_connection(store, tenant, endpoints):
    chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\n"
    chunked += b"Transfer-Encoding: chunked\r\n\r\n4\r\nsure\r\n0\r\n\r\n"
    endpoint = Endpoint(answering(chunked))
    endpoints.append(endpoint)

    events = deliver_to(store, tenant, f"http://127.0.0.1:{endpoint.port}/", 3, per_endpoint=1)

    assert [event["attempts"][0]["status_code"] for event in events] == [202] * 3
    assert endpoint.connections == 1


def test_an_answer_that_closes_its_connection_is_followed_by_a_new_one(store, tenant, endpoints):
    endpoint = Endpoint(answering(b"HTTP/1.0 200 OK\r\n\r\nbody until the close"))
    endpoints.append(endpoint)

    def serve_once(connection: socket.socket, endpoint: Endpoint) -> None:
        if endpoint.read_request(connection):
            connection.sendall(b"HTTP/1.0 200 OK\r\n\r\nbody until the close")

    endpoint.serve = serve_once
    events = deliver_to(store, tenant, f"http://127.0.0.1:{endpoint.port}/", 3, per_endpoint=1)

    assert [event["status"] for event in events] == ["delivered"] * 3
    assert endpoint.connections == 3


def test_an_endpoint_that_closes_without_answering_fails_the_attempt(store, tenant, endpoints):
    def hang_up(connection: socket.socket, endpoint: Endpoint) -> None:
        endpoint.read_request(connection)

    endpoint = Endpoint(hang_up)
    endpoints.append(endpoint)

    (event,) = deliver_to(store, tenant, f"http://127.0.0.1:{endpoint.port}/")

    (attempt,) = event["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"] == (
        "ConnectionError: the endpoint closed the connection without answering"
    )
    assert event["status"] == "pending"  # retried later


def test_an_answer_slower_than_the_timeout_fails_the_attempt(store, tenant, endpoints):
    def drip(connection: socket.socket, endpoint: Endpoint) -> None:
        endpoint.read_request(connection)
        for byte in OK:  # a byte at a time: no read waits the timeout, the whole takes longer
            connection.sendall(bytes([byte]))
            threading.Event().wait(0.02)

    endpoint = Endpoint(drip)
    endpoints.append(endpoint)

    (event,) = deliver_to(store, tenant, f"http://127.0.0.1:{endpoint.port}/", timeout=0.3)

    assert event["attempts"][0]["error"] == "no answer within 0.3 s"


def test_a_refused_connection_fails_the_attempt(store, tenant):
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()

    (event,) = deliver_to(store, tenant, f"http://127.0.0.1:{port}/")

    assert event["attempts"][0]["error"].startswith("ConnectionRefusedError")


# -- TLS ------------------------------------------------------------------------------------------


def certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `name` (its own CA) and its key, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def tls_endpoint(cert_file: Path, key_file: Path, names: list[str | None]) -> Endpoint:
    """An endpoint over TLS, noting the server name each client presented (SNI)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,return-value]
    return Endpoint(answering(OK), tls=context)


@pytest.fixture
def localhost_port() -> int:
    """A port free on 127.0.0.1 (where `localhost` goes first, if it resolves there)."""
    if LOOPBACK.target("http://localhost/").url != "http://127.0.0.1/":
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    return 0


def test_a_delivery_over_tls_presents_the_urls_host_and_checks_its_certificate(
    store, tenant, tmp_path, endpoints, monkeypatch, localhost_port
):
    cert_file, key_file = certificate(tmp_path, "localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # trusted as httpx trusts
    names: list[str | None] = []
    endpoint = tls_endpoint(cert_file, key_file, names)
    endpoints.append(endpoint)

    events = deliver_to(store, tenant, f"https://localhost:{endpoint.port}/tls", 2, per_endpoint=1)

    assert [event["status"] for event in events] == ["delivered"] * 2
    assert names == ["localhost"]  # one handshake, the connection kept
    head, _ = endpoint.requests[0]
    assert f"Host: localhost:{endpoint.port}".encode() in head.split(b"\r\n")


def test_a_certificate_for_another_name_fails_the_attempt(
    store, tenant, tmp_path, endpoints, monkeypatch, localhost_port
):
    cert_file, key_file = certificate(tmp_path, "elsewhere.example")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    endpoint = tls_endpoint(cert_file, key_file, [])
    endpoints.append(endpoint)

    (event,) = deliver_to(store, tenant, f"https://localhost:{endpoint.port}/tls")

    assert "CERTIFICATE_VERIFY_FAILED" in event["attempts"][0]["error"]
    assert endpoint.requests == []
