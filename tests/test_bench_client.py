"""The serving load generator's raw HTTP/1.1 client (benchmarks/load_client.py): status and Content-Length
bodies over keep-alive, and a reconnect after the server closes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from load_client import RawConnection, raw_request  # noqa: E402


def test_raw_client_keeps_alive_reads_bodies_and_reconnects_after_close() -> None:
    seen: list[bytes] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0]
                         .split(b":")[1])
            body = await reader.readexactly(length)
            seen.append(body)
            n = len(seen)
            status, extra = (200, b"") if n != 2 else (429, b"Connection: close\r\n")  # the 2nd closes
            reply = b'{"n": %d, "pad": "%s"}' % (n, b"x" * 5000)  # bigger than one read
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n" % (status, len(reply), extra) + reply)
            await writer.drain()
            if extra:
                break
        writer.close()

    async def go() -> list[int]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = RawConnection("127.0.0.1", port)
        statuses = [await conn.post(raw_request(b'{"i": %d}' % i, port)) for i in range(4)]
        await conn.close()
        server.close()
        await server.wait_closed()
        return statuses

    assert asyncio.run(go()) == [200, 429, 200, 200]
    assert seen == [b'{"i": %d}' % i for i in range(4)]  # every body arrived whole, in order
    assert connections == 2  # one keep-alive connection, a second after the server's Connection: close
