"""uvicorn's httptools HTTP/1.1 protocol, with limits that hold against abusive clients.

`calls-server serve` hands uvicorn `LimitedHttpToolsProtocol.with_limits(HttpLimits.from_settings(
settings))` as its `http=` class: uvicorn builds one instance per connection with its own
arguments only, so the limits travel as a class attribute of a subclass made for them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import httptools
from starlette.types import Message, Send
from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from calls_server.domain.envelope import failure
from calls_server.settings import Settings

# The deadlines a connection can be under (one at a time).
_NONE, _HEAD, _BODY, _SEND = 0, 1, 2, 3
# A timer may fire this much before its time (the loop's clock has millisecond steps).
TIMER_SLACK = 0.005
# Seconds between two warnings that connections are being turned away at the cap.
TURNED_AWAY_WARNING_EVERY = 10.0
# Where in each request's scope this protocol leaves a function that drops the connection
# without an answer (the sandbox's `drop` faults, calls_server/sandbox_hooks.py).
DROP_CONNECTION = "calls.drop_connection"


@dataclass(frozen=True)
class HttpLimits:
    """The limits of the HTTP layer (defaults: those of `Settings`)."""

    max_header_bytes: int = 16_384
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 2048
    max_connections_per_address: int = 256
    send_timeout: float = 60.0
    max_buffered_bytes: int = 256 * 1024 * 1024
    # The peers whose connections are not capped per address (CALLS_FORWARDED_ALLOW_IPS):
    # behind a proxy, every client's connections come from the proxy's address.
    trusted_proxies: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        """The limits `settings` set."""
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_connections=settings.max_connections,
            max_connections_per_address=settings.max_connections_per_address,
            send_timeout=settings.send_timeout,
            max_buffered_bytes=settings.max_buffered_bytes,
            trusted_proxies=settings.forwarded_allow_ips,
        )


# Why connections were refused at once, or cut: the label values of the metrics.
REFUSED_REASONS = ("max_connections", "max_connections_per_address")
CUT_REASONS = ("header_timeout", "body_timeout", "send_timeout", "max_buffered_bytes")


@dataclass
class HttpStats:
    """What the HTTP layer of this process counts, for /metrics. Changed on the event loop
    only; read from the scrape's thread (each read is of a whole int, or of a copy)."""

    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSED_REASONS, 0))
    cut: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CUT_REASONS, 0))
    # The open connections (those refused at once are never in it).
    open: set[LimitedHttpToolsProtocol] = field(default_factory=set)

    def buffered_bytes(self) -> int:
        """Bytes of answers written but not yet taken by the clients' sockets, now."""
        total = 0
        for protocol in list(self.open):
            transport = protocol.transport
            if transport is not None and not transport.is_closing():
                total += transport.get_write_buffer_size()
        return total


STATS = HttpStats()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""


class _HeldFlowControl(FlowControl):
    """uvicorn's flow control, but reading also stays paused while the client has not
    taken what was written to it (the transport's buffer is above its high-water mark).

    uvicorn pauses reading for a pipelined request or a request body it holds, and
    resumes when it is ready for more; it pauses the application's `send` while the buffer
    is high, but reads (and so answers) the next request as soon as one answer is written.
    Here reading resumes only when both allow it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self._held_by_uvicorn = False

    def pause_reading(self) -> None:
        self._held_by_uvicorn = True
        self._apply()

    def resume_reading(self) -> None:
        self._held_by_uvicorn = False
        self._apply()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._apply()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._apply()

    def _apply(self) -> None:
        paused = self._held_by_uvicorn or self.write_paused
        if paused == self.read_paused or self._transport.is_closing():
            return
        self.read_paused = paused
        if paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()


class CoalescedWrites:
    """A connection's transport that writes an answer's head together with its body.

    uvicorn writes the head when the app sends `http.response.start` and the body when it
    sends `http.response.body`, and uvloop sends each write at once: two system calls
    (and two TCP segments) for every answer, where one does. Between `hold` and `flush`
    (the cycle's send of the head, and its next send: `holding_head`) writes are held and
    leave together, in order; closing writes what is held first. Everything else is the
    transport's own."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.held: list[bytes] | None = None  # a list while holding

    def hold(self) -> None:
        """Hold the writes from now until `flush`."""
        if self.held is None:
            self.held = []

    def write(self, data: bytes) -> None:
        """Write `data`, or hold it."""
        if self.held is None:
            self.transport.write(data)
        else:
            self.held.append(data)

    def flush(self) -> None:
        """Write what is held, in one write, and stop holding."""
        held, self.held = self.held, None
        if held and not self.transport.is_closing():
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def is_closing(self) -> bool:
        """Whether the transport is closing (asked on every request: not via __getattr__)."""
        return self.transport.is_closing()

    def close(self) -> None:
        """Write what is held, then close (as a transport's `close` sends what it buffers)."""
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        """Drop what is held and what the transport buffers, and close at once."""
        self.held = None
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def holding_head(send: Send, writes: CoalescedWrites) -> Send:
    """uvicorn's `send` of one request, writing the answer's head with what follows it (the
    body, or its first part): held from the head's send until the end of the next send."""

    async def send_coalesced(message: Message) -> None:
        if message["type"] == "http.response.start":
            writes.hold()
            await send(message)
            return
        try:
            await send(message)
        finally:
            writes.flush()

    return send_coalesced


def address_key(host: str) -> str:
    """The key a peer's connections are counted under: its address, an IPv6 one's /64
    (one IPv6 client commonly has a whole /64), an IPv4-mapped one's IPv4 address."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on what one client can hold or make it hold.

    httptools (llhttp) parses as fast as anything in Python, but neither it nor uvicorn
    bounds a request's head or how long a client may take to send it. So:

    - Header size (`max_header_bytes`, the request line and headers together): llhttp has
      no limit, and httptools and uvicorn gather a header value, or the URL, in Python
      bytes as long as it keeps coming: one client could make the server hold a 64 MB
      header, several of them exhaust its memory. Bytes of a head are counted before they
      reach the parser, and the parser is fed only what fits: past the limit the client is
      answered 431 and the connection closed without reading further. What is read past
      the limit is at most one read of the event loop (256 KiB), and is never parsed.
    - Header count (`max_headers`): each header costs a Python tuple, a callback and work
      in every middleware that walks `scope["headers"]`; thousands of tiny ones fit within
      the byte limit. Past the limit: 431 and close.
    - Header timeout (`header_timeout`, from the connection, or from the end of the
      previous response): a slowloris client trickles a head one byte at a time to hold a
      connection (and a place under `max_connections`) forever, which uvicorn's keep-alive
      timeout does not stop, since it is cancelled by the first byte. When it runs out the
      client is answered 408 (if a request had begun and no response is under way) and
      the connection closed; an idle connection is just closed, as keep-alive would.
    - Body timeout (`body_timeout`, from the end of the head to the end of the body): the
      same attack on the body holds a connection and an application task waiting in
      `receive()`. When it runs out: 408 if the application has not begun its response,
      otherwise just closing; the application sees the client disconnect.
    - Connection cap (`max_connections` open at once): each open connection holds a file
      descriptor, a transport, a parser and its buffers, and the process's descriptors
      are limited. Past the cap a new connection is closed at once, before anything is
      read from it (a warning is logged at most every 10 s), so a flood of connections
      costs next to nothing and cannot take the descriptors the listener needs.
    - Connections per address (`max_connections_per_address`, an IPv6 peer's /64 as one):
      without it one client holding slow connections takes every place under the cap.
      Past it a new connection from that address is closed at once, unread, like one past
      the cap. Trusted proxies (`trusted_proxies`) are not capped: every client behind
      them shares their address.
    - Unsent answers: an answer is written to the transport whole, and a client that does
      not read leaves it there. uvicorn waits for such a client only before the next write,
      so it goes on reading requests and building answers. Here, while the transport's
      buffer is above its high-water mark, nothing more is read from the connection and no
      pipelined request is started: a connection holds at most one unsent answer.
    - Send timeout (`send_timeout`, from the buffer rising above its high-water mark until
      it falls below its low one): a client that does not take its answer is cut (the
      buffer dropped), so it cannot hold that answer's memory for long.
    - Buffered bytes (`max_buffered_bytes`, the stalled connections' unsent answers
      together): when a connection stalls with the total above it, the connections stalled
      longest (the slowest readers) are cut until it is back under; the one that just
      stalled is kept, so an answer larger than the budget is still sent to a reader.

    Refusals are the API's error envelope, with `Connection: close`; HTTP/1.1 requests
    without a Host header, and requests with several, are refused 400 (RFC 9112, 3.2).
    What is refused or cut is counted in `STATS` (for /metrics). Make the class for a set
    of limits with `with_limits`; the class itself has the defaults.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()
    trusted_proxies: ClassVar[_TrustedHosts] = _TrustedHosts("")
    # Connections turned away at the cap since the last warning, and when that was.
    _turned_away: ClassVar[int] = 0
    _last_turned_away_warning: ClassVar[float] = float("-inf")
    # Open connections per address key (shared by the subclasses: mutated, never rebound).
    _by_address: ClassVar[dict[str, int]] = {}
    # The connections whose buffer is above its high-water mark, the longest stalled first.
    _stalled: ClassVar[dict[LimitedHttpToolsProtocol, None]] = {}

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
        """A subclass of this protocol that enforces `limits` (for uvicorn's `http=`)."""
        attributes = {
            "limits": limits,
            "trusted_proxies": _TrustedHosts(limits.trusted_proxies),
            "__doc__": cls.__doc__,
        }
        made = type(cls.__name__, (cls,), attributes)
        return cast(type[LimitedHttpToolsProtocol], made)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        # Closed at connection_made because a cap was reached: nothing else to undo.
        self._refused_at_cap = False
        self._address_key: str | None = None  # counted under it in _by_address
        # A completed response whose aftermath (reading on, the next pipelined request)
        # waits for the client to take what was written.
        self._completion_deferred = False
        # Waiting for (the rest of) a request's head: from connection or the end of the
        # previous request's body, to the end of this one's headers.
        self._awaiting_head = True
        self._head_started = False  # a byte of the awaited request has been parsed
        self._head_bytes = 0
        self._head_count = 0
        self._refusal: tuple[int, str, str] | None = None  # why parsing was stopped
        self._in_body = False
        # The deadline running (_HEAD, _BODY or _NONE) and when it is due. One timer per
        # connection, re-armed lazily: a deadline that moves later (each keep-alive
        # request) costs no new timer; the timer, when early, re-arms for what is left.
        self._deadline_kind = _NONE
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0

    # -- the connection ---------------------------------------------------------------------

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        if len(self.connections) >= self.limits.max_connections:
            self._refuse_connection(transport, "max_connections")
            self._warn_turned_away()
            return
        key = self._capped_address(transport)
        if key is not None:
            count = self._by_address.get(key, 0)
            if count >= self.limits.max_connections_per_address:
                self._refuse_connection(transport, "max_connections_per_address")
                self._warn_turned_away(key)
                return
            self._by_address[key] = count + 1
            self._address_key = key
        super().connection_made(transport)
        self.flow = _HeldFlowControl(transport)
        # Every write of the connection through it: an answer leaves in one write.
        self.transport = cast(asyncio.Transport, CoalescedWrites(transport))
        STATS.open.add(self)
        self._start_deadline(_HEAD, self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._refused_at_cap:
            return
        STATS.open.discard(self)
        self._stalled.pop(self, None)
        key = self._address_key
        if key is not None:
            self._address_key = None
            left = self._by_address[key] - 1
            if left:
                self._by_address[key] = left
            else:
                del self._by_address[key]
        super().connection_lost(exc)

    def _refuse_connection(self, transport: asyncio.Transport, reason: str) -> None:
        self._refused_at_cap = True
        self.transport = transport
        transport.close()
        STATS.refused[reason] += 1

    def _capped_address(self, transport: asyncio.Transport) -> str | None:
        """The key the peer's connections are counted under, or None when they are not
        (a trusted proxy, or a peer without an IP address)."""
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
            return None
        if peer[0] in self.trusted_proxies:
            return None
        return address_key(peer[0])

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            if self._awaiting_head and len(data) > self._max_header_bytes - self._head_bytes:
                rest = self._feed_head_allowance(data)
                if rest is None:
                    return
                data = rest
            elif self._awaiting_head:
                self._head_bytes += len(data)
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._refusal is None:
                raise
            self._refuse_head(*self._refusal)
            return
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_body and self._deadline_kind != _BODY and not self.transport.is_closing():
            self._start_deadline(_BODY, self.limits.body_timeout)

    def _feed_head_allowance(self, data: bytes) -> bytes | None:
        """Feed the parser what fits of a head; the rest of `data` (body or the next
        request) if the head ended within it, or None once the head was refused 431."""
        room = self._max_header_bytes - self._head_bytes
        self._head_bytes += room
        if room > 0:
            self.parser.feed_data(data[:room])
        if self._awaiting_head:
            self._refuse_head(
                431,
                "Request header fields too large",
                f"The request line and headers exceed the limit of {self._max_header_bytes} bytes",
            )
            return None
        return data[room:]

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_started = True
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self._max_headers:
            self._refusal = (
                431,
                "Request header fields too large",
                f"The request has more than the limit of {self._max_headers} header fields",
            )
            raise _Refused
        # As uvicorn's, inlined: this runs for every header of every request.
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        hosts = sum(name == b"host" for name, _ in self.headers)
        if hosts > 1 or (hosts == 0 and self.parser.get_http_version() == "1.1"):
            self._refusal = (
                400,
                "Bad request",
                "An HTTP/1.1 request must have exactly one Host header"
                if hosts == 0
                else "A request must not have more than one Host header",
            )
            raise _Refused
        self._awaiting_head = False
        self._in_body = True
        self._end_deadline()
        self.scope[DROP_CONNECTION] = self._drop  # type: ignore[literal-required]
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:  # its task has not started yet
            writes = cast(CoalescedWrites, self.transport)
            sent = holding_head(cast(Send, cycle.send), writes)
            cycle.send = sent  # type: ignore[method-assign,assignment]

    def on_message_complete(self) -> None:
        self._in_body = False
        self._awaiting_head = True
        self._head_started = False
        self._head_bytes = 0
        self._head_count = 0
        self._end_deadline()
        super().on_message_complete()
        # The application answered before the body ended: the next head is due from now.
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.transport.is_closing():
            self._start_deadline(_HEAD, self.limits.header_timeout)

    def on_response_complete(self) -> None:
        # The answer written now (CoalescedWrites): whether the client takes it is known.
        cast(CoalescedWrites, self.transport).flush()
        if self.flow.write_paused and not self.transport.is_closing():
            # The client has not taken this answer yet: the next request waits for it
            # (resume_writing), so that the connection holds one unsent answer at most.
            self._completion_deferred = True
            return
        super().on_response_complete()
        # Unless a pipelined request is under way now, or the body is still coming, the
        # next head is due from here.
        if self._awaiting_head and self.cycle.response_complete and not self.transport.is_closing():
            self._start_deadline(_HEAD, self.limits.header_timeout)

    # -- the client taking its answers ------------------------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer rose above its high-water mark: stop reading, start the
        send timeout, and keep the stalled connections' unsent bytes within the budget."""
        super().pause_writing()
        self._start_deadline(_SEND, self.limits.send_timeout)
        self._stalled[self] = None
        self._keep_within_budget()

    def resume_writing(self) -> None:
        """The client took what was buffered (down to the low-water mark): go on."""
        self._stalled.pop(self, None)
        super().resume_writing()
        self._deadline_kind = _NONE
        if self.transport.is_closing():
            return
        if self._completion_deferred:
            self._completion_deferred = False
            self.on_response_complete()
        elif self._in_body:
            self._start_deadline(_BODY, self.limits.body_timeout)
        elif self._awaiting_head and (self.cycle is None or self.cycle.response_complete):
            self._start_deadline(_HEAD, self.limits.header_timeout)

    def _keep_within_budget(self) -> None:
        """Cut the connections stalled longest while the stalled ones' unsent bytes are
        above `max_buffered_bytes`; never this one, which has just stalled."""
        budget = self.limits.max_buffered_bytes
        sizes = {p: p.transport.get_write_buffer_size() for p in self._stalled}
        total = sum(sizes.values())
        for protocol, size in sizes.items():
            if total <= budget:
                return
            if protocol is not self:
                protocol._cut("max_buffered_bytes")
                total -= size

    def _drop(self) -> None:
        """Drop the connection without an answer, as a network failure would (nothing more
        is written to it: uvicorn's answer for an app that sent none included)."""
        self.transport.abort()
        if self.cycle is not None:
            self.cycle.disconnected = True

    def _cut(self, reason: str) -> None:
        """Drop the connection and what is buffered for it at once (`close` would wait for
        the client to take it)."""
        self.logger.info("Client not taking its answer (%s): connection cut", reason)
        STATS.cut[reason] += 1
        self._stop_timer()
        self._stalled.pop(self, None)
        self.transport.abort()

    # -- limits -----------------------------------------------------------------------------

    def _start_deadline(self, kind: int, seconds: float) -> None:
        if self._deadline_kind == _SEND and kind != _SEND:
            return  # the send timeout runs until the client takes its answer
        deadline = self.loop.time() + seconds
        self._deadline_kind = kind
        self._deadline = deadline
        timer = self._timer
        if timer is None or self._timer_due > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_due = deadline

    def _end_deadline(self) -> None:
        """End the header or body deadline; the send timeout runs until resume_writing."""
        if self._deadline_kind != _SEND:
            self._deadline_kind = _NONE

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._deadline_kind
        # A closing transport still holds what its client has not taken: the send timeout
        # runs on until it is cut.
        if kind == _NONE or (kind != _SEND and self.transport.is_closing()):
            return
        if self.loop.time() < self._deadline - TIMER_SLACK:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            self._timer_due = self._deadline
        elif kind == _HEAD:
            self._head_timed_out()
        elif kind == _BODY:
            self._body_timed_out()
        else:
            self._cut("send_timeout")

    def _stop_timer(self) -> None:
        self._deadline_kind = _NONE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        if not self._head_started and not self._head_bytes:
            self._close(None, "", "")  # idle: nothing of a request to answer
            return
        seconds = f"{self.limits.header_timeout:g}"
        self.logger.info("Request head not received within %s s: closing", seconds)
        STATS.cut["header_timeout"] += 1
        self._refuse_head(
            408,
            "Request timeout",
            f"The request line and headers did not arrive within {seconds} s",
        )

    def _body_timed_out(self) -> None:
        seconds = f"{self.limits.body_timeout:g}"
        self.logger.info("Request body not received within %s s: closing", seconds)
        STATS.cut["body_timeout"] += 1
        cycle = self.cycle
        answer = cycle is not None and not cycle.response_started
        self._close(
            408 if answer else None,
            "Request timeout",
            f"The request body did not arrive within {seconds} s",
        )

    def _refuse_head(self, status: int, message: str, error: str) -> None:
        """Answer a request whose head is refused, unless a response to an earlier
        (pipelined) request is under way: then the connection is just closed."""
        if status == 431:
            self.logger.warning("%s: %s", message, error)
        idle = self.cycle is None or self.cycle.response_complete
        self._close(status if idle else None, message, error)

    def _close(self, status: int | None, message: str, error: str) -> None:
        """Stop reading, answer `status` with the error envelope (if given), and close."""
        self._stop_timer()
        self._awaiting_head = self._in_body = False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application's task sees a disconnected client: its receive() returns
            # http.disconnect and what it sends is dropped.
            cycle.disconnected = True
            cycle.keep_alive = False
            cycle.message_event.set()
        if status is not None:
            body = json.dumps(failure(message, error)).encode()
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
        self.transport.close()

    def _warn_turned_away(self, address: str | None = None) -> None:
        cls = type(self)
        cls._turned_away += 1
        now = self.loop.time()
        if now - cls._last_turned_away_warning >= TURNED_AWAY_WARNING_EVERY:
            if address is None:
                limit = f"Connection limit of {self.limits.max_connections} reached"
            else:
                cap = self.limits.max_connections_per_address
                limit = f"Connection limit of {cap} per address reached by {address}"
            self.logger.warning(
                "%s: new connections are closed unread (%d since the last such warning)",
                limit,
                cls._turned_away,
            )
            cls._turned_away = 0
            cls._last_turned_away_warning = now
