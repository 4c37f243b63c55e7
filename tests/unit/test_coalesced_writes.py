"""An answer's head leaves with its body (calls_server/http_protocol.py's `CoalescedWrites`,
held from the head's send until the next send ends): one write, in order, never lost."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from calls_server.http_protocol import CoalescedWrites, holding_head

Check = Callable[[CoalescedWrites, socket.socket], Awaitable[None]]


def over_a_socket(check: Check) -> None:
    """Run `check` with a real transport's writes coalesced, and the socket at its other end."""

    async def main() -> None:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        try:
            await check(CoalescedWrites(transport), theirs)
        finally:
            transport.abort()
            theirs.close()

    asyncio.run(main())


def received(peer: socket.socket) -> bytes:
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


def test_held_writes_wait_for_the_flush_then_leave_in_one_write_in_order():
    async def check(writes: CoalescedWrites, peer: socket.socket) -> None:
        writes.hold()
        writes.write(b"HTTP/1.1 200 OK\r\n\r\n")
        writes.write(b"{}")
        assert received(peer) == b""

        writes.flush()

        await asyncio.sleep(0.01)
        assert received(peer) == b"HTTP/1.1 200 OK\r\n\r\n{}"

    over_a_socket(check)


def test_writes_outside_a_hold_leave_at_once():
    async def check(writes: CoalescedWrites, peer: socket.socket) -> None:
        writes.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        await asyncio.sleep(0.01)

        assert received(peer) == b"HTTP/1.1 100 Continue\r\n\r\n"

    over_a_socket(check)


def test_closing_writes_what_is_held_first():
    async def check(writes: CoalescedWrites, peer: socket.socket) -> None:
        writes.hold()
        writes.write(b"last words")

        writes.close()

        await asyncio.sleep(0.01)
        assert received(peer) == b"last words"
        assert writes.is_closing()

    over_a_socket(check)


def test_aborting_drops_what_is_held():
    async def check(writes: CoalescedWrites, peer: socket.socket) -> None:
        writes.hold()
        writes.write(b"never sent")

        writes.abort()

        await asyncio.sleep(0.01)
        assert received(peer) == b""

    over_a_socket(check)


def test_a_head_is_held_until_the_send_after_it_ends_and_then_written_with_its_body():
    async def check(writes: CoalescedWrites, peer: socket.socket) -> None:
        async def uvicorns_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                writes.write(b"HTTP/1.1 200 OK\r\n\r\n")
            else:
                writes.write(message["body"])

        send = holding_head(uvicorns_send, writes)

        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.01)
        assert received(peer) == b""
        await send({"type": "http.response.body", "body": b"{}"})
        await asyncio.sleep(0.01)
        assert received(peer) == b"HTTP/1.1 200 OK\r\n\r\n{}"

        await send({"type": "http.response.body", "body": b"more"})  # nothing held now
        await asyncio.sleep(0.01)
        assert received(peer) == b"more"

    over_a_socket(check)
