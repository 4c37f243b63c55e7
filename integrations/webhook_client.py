"""The HTTP/1.1 client webhook deliveries are sent with (services/webhooks.py): one POST
of bytes made already, to the address the egress policy checked, over connections kept
alive per webhook, on the caller's event loop.

httpx cost some 0.4 ms of CPU per request (its request and response models, its connection
pool's bookkeeping, h11's validation), most of what a delivery cost. A delivery needs far
less: the status code of the answer. TLS uses httpx's own trust settings, and the URL's
host name for SNI and the certificate check.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import quote, urlsplit

import httpx

from calls_server.integrations.egress import Target

# The request heads (and, for the deliverer, checked targets) kept at most; all forgotten
# past it.
MAX_TARGETS_KEPT = 4096

_DEFAULT_PORTS = {"https": 443, "http": 80}
KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
MAX_HEAD = 64 * 1024  # bytes of a response's status line and headers read at most
MAX_BODY = 1024 * 1024  # bytes of a response's body read (and dropped) to reuse its connection
# Characters left as they are in the request target (RFC 3986's reserved and unreserved, and
# "%" of what is encoded already); any other (a space, a control character, non-ASCII) is
# percent-encoded, so nothing of the URL can break the request line.
_TARGET_SAFE = "/?#[]@!$&'()*+,;=-._~:%"

Key = tuple[str, str, int, str]  # (scheme, address, port, host name presented)


class ProtocolError(Exception):
    """The endpoint answered something that is not an HTTP/1.x response."""


def parse_response(data: bytes | bytearray) -> tuple[int, bool, int] | None:
    """The response at the start of `data` (informational ones skipped): its status code,
    whether its connection may carry another request, and how many bytes it took; None
    while it is incomplete. A body is only counted, never kept, and one that is long or
    whose end is the connection's close is not waited for (the connection is not reused).
    Raises ProtocolError."""
    start = 0
    while True:
        end = data.find(b"\r\n\r\n", start)
        if end < 0:
            if len(data) - start > MAX_HEAD:
                raise ProtocolError(f"no end of the response's head within {MAX_HEAD} bytes")
            return None
        lines = bytes(data[start:end]).split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if (
            len(parts) < 2
            or not parts[0].startswith(b"HTTP/1.")
            or not (len(parts[1]) == 3 and parts[1].isdigit())
        ):
            raise ProtocolError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        status = int(parts[1])
        start = end + 4
        if not (100 <= status < 200) or status == 101:
            break  # a final response (101: one that leaves HTTP, not followed)
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        fields[name] = fields[name] + b"," + value.strip() if name in fields else value.strip()
    tokens = {token.strip().lower() for token in fields.get(b"connection", b"").split(b",")}
    keep = b"close" not in tokens if parts[0] == b"HTTP/1.1" else b"keep-alive" in tokens
    coding = fields.get(b"transfer-encoding", b"").lower()
    length = fields.get(b"content-length", b"")
    if status == 101:
        return status, False, len(data)
    if status in (204, 304):
        return status, keep, start  # no body
    if coding:
        if coding.rsplit(b",", 1)[-1].strip() != b"chunked":
            return status, False, len(data)  # a body up to the close
        at = start
        while True:  # chunks: a hexadecimal size line, the data and its CRLF; 0 ends them
            line_end = data.find(b"\r\n", at)
            if line_end < 0:
                return None
            try:
                size = int(bytes(data[at:line_end]).split(b";", 1)[0], 16)
            except ValueError:
                raise ProtocolError("a chunk's size is not a hexadecimal number") from None
            if at + size - start > MAX_BODY:
                return status, False, len(data)  # not worth reading to reuse the connection
            if size == 0:  # the last chunk: trailer fields, if any, up to an empty line
                trailer_end = data.find(b"\r\n\r\n", line_end)
                return None if trailer_end < 0 else (status, keep, trailer_end + 4)
            at = line_end + 2 + size + 2
            if at > len(data):
                return None
            if data[at - 2 : at] != b"\r\n":
                raise ProtocolError("a chunk does not end where its size says")
    if not length.isdigit():
        return status, False, len(data)  # a body up to the close (or lengths that differ)
    if int(length) > MAX_BODY:
        return status, False, len(data)
    if len(data) < start + int(length):
        return None
    return status, keep, start + int(length)


class _Connection(asyncio.Protocol):
    """One connection to a checked address (`key`), carrying one request at a time."""

    def __init__(self, key: Key) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bool]] | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None or answer.done():
            self.close()  # bytes nobody asked for: the connection is not used again
            return
        self.buffer += data
        try:
            parsed = parse_response(self.buffer)
        except ProtocolError as e:
            answer.set_exception(e)
            return
        if parsed is not None:
            status, keep, used = parsed
            answer.set_result((status, keep and used == len(self.buffer)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(
                ConnectionError(
                    "the endpoint closed the connection "
                    + ("before the response ended" if self.buffer else "without answering")
                )
            )

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bool]]:
        """Send `request`; its answer's status code, and whether the connection may carry
        another request."""
        assert self.transport is not None
        self.buffer.clear()
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.answer

    def close(self) -> None:
        # Nothing is left to write by then (answered, or failed): no TLS close_notify
        # exchange to wait for, the socket goes at the loop's next turn.
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class WebhookClient:
    """POSTs to webhooks' endpoints over kept-alive connections, on the event loop: at most
    `per_endpoint` idle ones per webhook (as many as it may have attempts under way)."""

    def __init__(self, per_endpoint: int) -> None:
        self.per_endpoint = per_endpoint
        self._idle: dict[str, list[_Connection]] = {}  # webhook id -> idle ones, oldest first
        self._heads: dict[Target, tuple[Key, bytes]] = {}  # see `_head`
        self._tls: ssl.SSLContext | None = None

    async def post(
        self, webhook_id: str, target: Target, body: bytes, headers: str, deadline: float
    ) -> int:
        """POST `body` with `headers` (lines, each with its CRLF) to `target` and read the
        answer, all by `deadline` (time.monotonic()); its status code. Raises TimeoutError,
        OSError (refused, reset, TLS), ProtocolError."""
        key, head = self._head(target)
        request = b"".join((head, f"Content-Length: {len(body)}\r\n{headers}\r\n".encode(), body))
        connection = self._take(webhook_id, key) or await self._open(key, deadline)
        loop = asyncio.get_running_loop()
        answer = connection.send(request)
        # The loop's clock is time.monotonic(): the deadline as it is.
        timer = loop.call_at(deadline, _expire, answer)
        try:
            status, reusable = await answer
        except BaseException:
            connection.close()
            raise
        finally:
            timer.cancel()
        if reusable and not connection.closed:
            self._give_back(webhook_id, connection)
        else:
            connection.close()
        return status

    def _head(self, target: Target) -> tuple[Key, bytes]:
        """Where to connect for `target`, and the start of a request to it (kept: the same
        for every request to it)."""
        found = self._heads.get(target)
        if found is None:
            parts = urlsplit(target.url)
            scheme, address = parts.scheme, parts.hostname or ""
            key = (scheme, address, parts.port or _DEFAULT_PORTS[scheme], target.host)
            path = quote(parts.path or "/", safe=_TARGET_SAFE)
            query = "?" + quote(parts.query, safe=_TARGET_SAFE) if parts.query else ""
            head = (
                f"POST {path}{query} HTTP/1.1\r\nHost: {_ascii(target.authority)}\r\n"
                "User-Agent: calls-server\r\nAccept: */*\r\n"
            ).encode()
            if len(self._heads) >= MAX_TARGETS_KEPT:
                self._heads.clear()
            found = self._heads[target] = (key, head)
        return found

    def forget(self, webhook_id: str) -> None:
        """Close the idle connections to the webhook's endpoint (it was deleted)."""
        for connection in self._idle.pop(webhook_id, []):
            connection.close()

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

    def _take(self, webhook_id: str, key: Key) -> _Connection | None:
        """The newest idle connection to the same address (and name) that is still open;
        those idle too long are closed on the way."""
        idle = self._idle.get(webhook_id)
        if not idle:
            return None
        now = time.monotonic()
        while idle and now - idle[0].idle_since > KEEPALIVE_EXPIRY:
            idle.pop(0).close()
        for at in range(len(idle) - 1, -1, -1):
            if idle[at].key == key and not idle[at].closed:
                return idle.pop(at)
        return None

    def _give_back(self, webhook_id: str, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        connection.answer = None
        idle = self._idle.setdefault(webhook_id, [])
        idle.append(connection)
        if len(idle) > self.per_endpoint:
            idle.pop(0).close()

    async def _open(self, key: Key, deadline: float) -> _Connection:
        scheme, address, port, host = key
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no time left to connect")
        tls = self._context() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        connecting = loop.create_connection(
            lambda: _Connection(key),
            address,
            port,
            ssl=tls,
            server_hostname=host if tls else None,
            ssl_handshake_timeout=left if tls else None,
        )
        _, connection = await asyncio.wait_for(connecting, left)
        return connection

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            # httpx's: the same trusted certificates (certifi's, or SSL_CERT_FILE or
            # SSL_CERT_DIR) and checks as deliveries had when httpx sent them.
            context = httpx.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            self._tls = context
        return self._tls


def _expire(answer: asyncio.Future[tuple[int, bool]]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError("no answer by the deadline"))


def _ascii(authority: str) -> str:
    """The Host header of `authority`: an internationalized name in its ASCII form (IPv6
    addresses, in brackets, are ASCII already)."""
    if authority.isascii():
        return authority
    host, colon, port = authority.partition(":")
    return host.encode("idna").decode() + colon + port
