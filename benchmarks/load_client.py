"""The load generator of serve_load.py: closed-loop clients on a minimal keep-alive HTTP/1.1 client, and stats.

The load generator shares the machine's cores with the server, so its cost per request decides how much load
it can offer; see ``RawConnection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summarise(lat: list[float], statuses: list[int], seconds: float) -> dict[str, Any]:
    ok = [x for x, s in zip(lat, statuses, strict=True) if s == 200]
    arr = np.asarray(ok) * 1000 if ok else np.asarray([np.nan])
    codes: dict[str, int] = {}
    for s in statuses:
        codes[str(s)] = codes.get(str(s), 0) + 1
    return {"requests": len(statuses), "ok": len(ok), "failed": len(statuses) - len(ok), "status_counts": codes,
            "seconds": round(seconds, 2), "throughput_rps": round(len(ok) / seconds, 1),
            "p50_ms": round(float(np.percentile(arr, 50)), 1), "p99_ms": round(float(np.percentile(arr, 99)), 1),
            "mean_ms": round(float(arr.mean()), 1)}


def raw_request(body: bytes, port: int) -> bytes:
    return (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one request at a time, Content-Length bodies.

    The load generator shares the 2 cores with the server, so its cost per request decides how much load it
    can offer: httpx's AsyncClient spends several times more CPU per request, and at 64-128 clients it, not
    the server, was the bottleneck (the server's event loop sat idle in epoll 89% of the time).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        # Requests sent a second time because a reused keep-alive connection failed before their answer: the
        # server may have closed it idle, or dropped the request itself; the stats report them, never hide them.
        self.resent = 0

    async def connect(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, request: bytes) -> int:
        for attempt in (0, 1):  # a reused keep-alive connection the server closed: reconnect and send once more
            reused = self.writer is not None
            await self.connect()
            assert self.reader is not None
            try:
                self.writer.write(request)
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt or not reused:  # a new connection that fails is a failed request, not a stale one
                    raise
                self.resent += 1
                continue
            status = int(head[9:12])
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            await self.reader.readexactly(length)
            if close:
                await self.close()
            return status
        raise ConnectionError("unreachable")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def closed_loop(url: str, inputs: dict[str, list[Any]], clients: int, seconds: float, warmup: float,
                      seed: int = 0, rss_pid: int | None = None, rss_every: float = 5.0,
                      client: str = "raw") -> dict[str, Any]:
    """``clients`` clients, each sending its next request when the last is answered; stats after warmup.

    ``client``: raw (a minimal keep-alive HTTP client, the default) or httpx. ``client_cpu`` in the result is
    the load generator's CPU seconds per measured second: near 1.0 it, not the server, limits throughput.
    """
    rng = random.Random(seed)
    tasks = sorted(inputs)
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    # Every request body prepared once: the clients' work per request is a write and a read.
    bodies = {t: [raw_request(json.dumps({"task": t, "inputs": [x]}).encode(), int(port)) for x in inputs[t]]
              for t in tasks}
    lat: list[float] = []
    statuses: list[int] = []
    errors: list[str] = []
    resent: list[int] = []
    rss: list[tuple[float, float]] = []
    cpu: dict[str, float] = {}
    t_start = time.perf_counter()
    measure_from, end = t_start + warmup, t_start + warmup + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as hx:

        async def one_client() -> None:
            conn = RawConnection(host, int(port))
            try:
                while (now := time.perf_counter()) < end:
                    task = rng.choice(tasks)
                    t0 = time.perf_counter()
                    try:
                        if client == "raw":
                            status = await asyncio.wait_for(conn.post(rng.choice(bodies[task])), 60)
                        else:
                            body = {"task": task, "inputs": [rng.choice(inputs[task])]}
                            status = (await hx.post("/v1/classify", json=body)).status_code
                    except (httpx.HTTPError, OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                        status = -1
                        errors.append(type(e).__name__)
                        await conn.close()
                    if now >= measure_from:
                        lat.append(time.perf_counter() - t0)
                        statuses.append(status)
                        resent.append(conn.resent)
                    conn.resent = 0
            finally:
                await conn.close()

        async def sample_rss() -> None:
            while time.perf_counter() < end:
                rss.append((round(time.perf_counter() - t_start, 1), round(rss_mb(rss_pid), 1)))
                await asyncio.sleep(rss_every)

        async def client_cpu() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            c0, w0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            cpu["client_cpu"] = round((time.process_time() - c0) / max(time.perf_counter() - w0, 1e-9), 2)

        jobs = [one_client() for _ in range(clients)] + [client_cpu()] + ([sample_rss()] if rss_pid else [])
        await asyncio.gather(*jobs)
    out = summarise(lat, statuses, seconds)
    out["resent"] = sum(resent)  # measured requests answered only after being sent again on a new connection
    out.update(cpu)
    out["_raw"] = (lat, statuses)
    if errors:
        out["client_errors"] = sorted(set(errors))
    if rss:
        out["rss_mb"] = rss
    return out


def public(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if not k.startswith("_")}


# -- faults ---------------------------------------------------------------------------------------------------
