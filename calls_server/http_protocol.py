"""uvicorn's httptools HTTP/1.1 protocol, with limits that hold against abusive clients.

`calls-server serve` hands uvicorn `LimitedHttpToolsProtocol.with_limits(HttpLimits.from_settings(
settings))` as its `http=` class: uvicorn builds one instance per connection with its own
arguments only, so the limits travel as a class attribute of a subclass made for them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from calls_server.domain.envelope import failure
from calls_server.settings import Settings

# The deadlines a connection can be under (one at a time).
_NONE, _HEAD, _BODY = 0, 1, 2
# A timer may fire this much before its time (the loop's clock has millisecond steps).
TIMER_SLACK = 0.005
# Seconds between two warnings that connections are being turned away at the cap.
TURNED_AWAY_WARNING_EVERY = 10.0


@dataclass(frozen=True)
class HttpLimits:
    """The limits of the HTTP layer (defaults: those of `Settings`)."""

    max_header_bytes: int = 16_384
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 2048

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_connections=settings.max_connections,
        )


class _TooManyHeaders(Exception):
    """Raised from the parser's header callback to stop parsing the request at once."""


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

    Refusals are the API's error envelope, with `Connection: close`. Make the class for
    a set of limits with `with_limits`; the class itself has the defaults.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()
    # Connections turned away at the cap since the last warning, and when that was.
    _turned_away: ClassVar[int] = 0
    _last_turned_away_warning: ClassVar[float] = float("-inf")

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
        """A subclass of this protocol that enforces `limits` (for uvicorn's `http=`)."""
        made = type(cls.__name__, (cls,), {"limits": limits, "__doc__": cls.__doc__})
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
        # Closed at connection_made because the cap was reached: nothing else to undo.
        self._refused_at_cap = False
        # Waiting for (the rest of) a request's head: from connection or the end of the
        # previous request's body, to the end of this one's headers.
        self._awaiting_head = True
        self._head_started = False  # a byte of the awaited request has been parsed
        self._head_bytes = 0
        self._head_count = 0
        self._too_many_headers = False
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
            self._refused_at_cap = True
            self.transport = transport
            transport.close()
            self._warn_turned_away()
            return
        super().connection_made(transport)
        self._start_deadline(_HEAD, self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._refused_at_cap:
            return
        super().connection_lost(exc)

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
            if not self._too_many_headers:
                raise
            self._refuse_head(
                431,
                "Request header fields too large",
                f"The request has more than the limit of {self._max_headers} header fields",
            )
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
            self._too_many_headers = True
            raise _TooManyHeaders
        # As uvicorn's, inlined: this runs for every header of every request.
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._in_body = True
        self._deadline_kind = _NONE
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._awaiting_head = True
        self._head_started = False
        self._head_bytes = 0
        self._head_count = 0
        self._deadline_kind = _NONE
        super().on_message_complete()
        # The application answered before the body ended: the next head is due from now.
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.transport.is_closing():
            self._start_deadline(_HEAD, self.limits.header_timeout)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Unless a pipelined request is under way now, or the body is still coming, the
        # next head is due from here.
        if self._awaiting_head and self.cycle.response_complete and not self.transport.is_closing():
            self._start_deadline(_HEAD, self.limits.header_timeout)

    # -- limits -----------------------------------------------------------------------------

    def _start_deadline(self, kind: int, seconds: float) -> None:
        deadline = self.loop.time() + seconds
        self._deadline_kind = kind
        self._deadline = deadline
        timer = self._timer
        if timer is None or self._timer_due > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_due = deadline

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._deadline_kind
        if kind == _NONE or self.transport.is_closing():
            return
        if self.loop.time() < self._deadline - TIMER_SLACK:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            self._timer_due = self._deadline
        elif kind == _HEAD:
            self._head_timed_out()
        else:
            self._body_timed_out()

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
        self._refuse_head(
            408,
            "Request timeout",
            f"The request line and headers did not arrive within {seconds} s",
        )

    def _body_timed_out(self) -> None:
        seconds = f"{self.limits.body_timeout:g}"
        self.logger.info("Request body not received within %s s: closing", seconds)
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

    def _warn_turned_away(self) -> None:
        cls = type(self)
        cls._turned_away += 1
        now = self.loop.time()
        if now - cls._last_turned_away_warning >= TURNED_AWAY_WARNING_EVERY:
            self.logger.warning(
                "Connection limit of %d reached: new connections are closed unread "
                "(%d since the last such warning)",
                self.limits.max_connections,
                cls._turned_away,
            )
            cls._turned_away = 0
            cls._last_turned_away_warning = now
