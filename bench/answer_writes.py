"""One write or two for an answer's head and body: CPU per request/answer round trip.

    .venv/bin/python bench/answer_writes.py

uvicorn writes an answer's head and its body separately, and uvloop sends each write at
once (a system call and a TCP segment each); calls_server/http_protocol.py's
`CoalescedWrites` writes them together. Here a uvloop server answers each request of one
client in this process with a head (74 bytes) and a 1,500-byte body, written twice or once,
`--number` round trips per run, `--runs` runs of each interleaved; printed: the median CPU
time per round trip (server and client together) of each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import cast

import uvloop

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1500\r\n\r\n"
BODY = b"x" * 1500


class Answering(asyncio.Protocol):
    """Answers every request at once, in one write or two."""

    def __init__(self, writes: int) -> None:
        self.writes = writes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        if self.writes == 2:
            self.transport.write(HEAD)
            self.transport.write(BODY)
        else:
            self.transport.write(HEAD + BODY)


async def round_trips(writes: int, number: int) -> float:
    """CPU microseconds per round trip, answers written in `writes` writes."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Answering(writes), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.process_time()
    for _ in range(number):
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await reader.readexactly(len(HEAD) + len(BODY))
    spent = time.process_time() - began
    writer.close()
    server.close()
    return spent / number * 1e6


async def main(runs: int, number: int) -> None:
    found: dict[int, list[float]] = {2: [], 1: []}
    for _ in range(runs):
        for writes in found:
            found[writes].append(await round_trips(writes, number))
    for writes, times in found.items():
        print(
            f"{writes} write(s) per answer: {statistics.median(times):.1f} us of CPU per round "
            f"trip ({min(times):.1f} to {max(times):.1f}, {runs} runs of {number:,})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    uvloop.run(main(args.runs, args.number))
    sys.exit(0)
