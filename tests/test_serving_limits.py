"""`transferlm serve` limits and faults on tiny random models: 404/422 naming the field, a bounded queue (429),
timeouts (504), client disconnects and a graceful drain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from serving_helpers import classify, count_rows, gate, make_app, save_serving_tasks, serving, until
from transferlm.serving.app import validation_message

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def saved(tiny_bert: Path, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return save_serving_tasks(tiny_bert, tiny_llama, tmp_path_factory.mktemp("serving"))


# -- errors and limits -----------------------------------------------------------------------------------


def test_unknown_task_is_404_and_malformed_bodies_are_422_naming_the_field(tiny_bert: Path, saved: dict) -> None:
    app = make_app(tiny_bert, saved, max_inputs=3, max_chars=20, max_body_bytes=600)

    async def go():
        async with serving(app) as c:
            post = c.post
            out = {
                "unknown": await post("/v1/classify", json=classify("nope", "x")),
                "no_task": await post("/v1/classify", json={"inputs": ["x"]}),
                "bad_item": await post("/v1/classify", json=classify("sst", "ok", 3)),
                "half_pair": await post("/v1/classify", json=classify("sst", {"sentence1": "a"})),
                "extra": await post("/v1/classify", json={"task": "sst", "inputs": ["a"], "top_k": 2}),
                "empty": await post("/v1/classify", json=classify("sst")),
                "not_json": await post("/v1/classify", content=b'{"task": "sst", "inputs": [',
                                       headers={"content-type": "application/json"}),
                "pair_for_single": await post("/v1/classify", json=classify("sst", {"sentence1": "a",
                                                                                     "sentence2": "b"})),
                "too_many": await post("/v1/classify", json=classify("sst", "a", "b", "c", "d")),
                "too_long": await post("/v1/classify", json=classify("sst", "a" * 21)),
                "too_big": await post("/v1/classify", json=classify("sst", *(["a" * 20] * 40))),
                "ok": await post("/v1/classify", json=classify("sst", "a" * 20)),
            }
            return {k: (r.status_code, r.json()) for k, r in out.items()}

    r = asyncio.run(go())
    assert r["unknown"] == (404, {"error": "unknown task 'nope'; loaded tasks: sst, trec"})
    expected = {"no_task": "task: Field required", "bad_item": "inputs[1]: should be a text or an object",
                "half_pair": "inputs[0].sentence2: Field required", "extra": "top_k: Extra inputs are not permitted",
                "empty": "inputs: List should have at least 1 item", "not_json": "body: not valid JSON",
                "pair_for_single": "inputs[0]: task sst takes one text per input"}
    for key, message in expected.items():
        assert r[key][0] == 422, (key, r[key])
        assert r[key][1]["error"].startswith(message), (key, r[key][1]["error"])
    assert r["half_pair"][1]["error"] == "inputs[0].sentence2: Field required"  # the string alternative is not noise
    assert r["too_many"] == (413, {"error": "inputs: 4 items, at most 3 per request"})
    assert r["too_long"] == (413, {"error": "inputs[0]: 21 characters, at most 20"})
    assert r["too_big"][0] == 413 and "max_body_bytes" in r["too_big"][1]["error"]
    assert r["ok"][0] == 200
    assert validation_message([{"type": "missing", "loc": ("body", "inputs", 2, "PairInput", "sentence1"),
                                "msg": "Field required", "input": {}}]) == "inputs[2].sentence1: Field required"


def test_bounded_queue_answers_429_and_never_grows(tiny_bert: Path, saved: dict) -> None:
    app = make_app(tiny_bert, saved, max_queue=2, max_wait_ms=0)
    opened = gate(app)
    batcher = app.state.batcher

    async def go():
        async with serving(app) as c:
            first = asyncio.create_task(c.post("/v1/classify", json=classify("sst", "a")))
            await until(lambda: batcher.running)  # in the forward pass, held
            queued = [asyncio.create_task(c.post("/v1/classify", json=classify("trec", x))) for x in ("b", "c")]
            await until(lambda: batcher.queued == 2)
            burst = await asyncio.gather(*(c.post("/v1/classify", json=classify("sst", "d")) for _ in range(20)))
            depth = batcher.queued
            opened.set()
            done = await asyncio.gather(first, *queued)
            metrics = (await c.get("/metrics")).text
            return burst, depth, done, metrics

    burst, depth, done, metrics = asyncio.run(go())
    assert {r.status_code for r in burst} == {429} and depth == 2
    assert burst[0].headers["retry-after"] == "1" and "max_queue 2" in burst[0].json()["error"]
    assert [r.status_code for r in done] == [200, 200, 200]  # admitted work is never lost
    assert 'transferlm_rejected_total{reason="queue_full"} 20.0' in metrics
    assert "transferlm_queue_depth_max 2.0" in metrics and app.state.batcher.max_queued == 2


def test_timeout_is_504_and_an_abandoned_request_is_not_computed(tiny_bert: Path, saved: dict) -> None:
    app = make_app(tiny_bert, saved, request_timeout_s=0.3, max_wait_ms=0)
    opened = gate(app)
    batcher, rows_seen = app.state.batcher, count_rows(app)

    async def go():
        async with serving(app) as c:
            slow = asyncio.create_task(c.post("/v1/classify", json=classify("sst", "a")))
            await until(lambda: batcher.running)
            waiting = await c.post("/v1/classify", json=classify("trec", "b", "c"))  # times out in the queue
            queued_after = batcher.queued
            opened.set()
            return await slow, waiting, queued_after

    slow, waiting, queued_after = asyncio.run(go())
    assert slow.status_code == 504  # held past its deadline while running
    assert waiting.status_code == 504 and "request_timeout_s" in waiting.json()["error"]
    assert queued_after == 0 and rows_seen == [1]  # the queued request was dropped, never computed


def test_client_disconnect_drops_the_queued_request(tiny_bert: Path, saved: dict) -> None:
    app = make_app(tiny_bert, saved, max_wait_ms=0)
    opened = gate(app)
    batcher = app.state.batcher

    async def go():
        async with serving(app) as c:
            first = asyncio.create_task(c.post("/v1/classify", json=classify("sst", "a")))
            await until(lambda: batcher.running)
            gone, sent = asyncio.Event(), []
            body = json.dumps(classify("trec", "b")).encode()
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive():
                if messages:
                    return messages.pop()
                await gone.wait()
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/v1/classify", "raw_path": b"/v1/classify", "query_string": b"",
                     "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
                     "client": ("127.0.0.1", 1), "server": ("test", 80), "root_path": ""}
            raw = asyncio.create_task(app(scope, receive, send))
            await until(lambda: batcher.queued == 1)
            gone.set()  # the client hangs up while its request waits
            await raw
            queued = batcher.queued
            opened.set()
            return await first, sent, queued, (await c.get("/metrics")).text

    first, sent, queued, metrics = asyncio.run(go())
    assert first.status_code == 200 and queued == 0
    assert sent[0]["status"] == 499
    assert 'transferlm_rejected_total{reason="disconnected"} 1.0' in metrics
    assert app.state.batcher.batches == 1  # only the first request's forward pass ran


def test_graceful_drain_finishes_in_flight_requests_and_refuses_new_ones(tiny_bert: Path, saved: dict) -> None:
    app = make_app(tiny_bert, saved, max_wait_ms=0, max_batch_size=1)
    opened = gate(app)
    batcher = app.state.batcher

    async def go():
        async with serving(app) as c:
            inflight = [asyncio.create_task(c.post("/v1/classify", json=classify(t, "x"))) for t in ("sst", "trec")]
            await until(lambda: batcher.running and batcher.queued == 1)
            closing = asyncio.create_task(batcher.close(timeout=20))  # what the app's shutdown does
            await until(lambda: batcher.closing)
            refused = await c.post("/v1/classify", json=classify("sst", "y"))
            health = await c.get("/health")
            opened.set()
            finished = await asyncio.gather(*inflight)
            await closing
            return refused, health, finished

    refused, health, finished = asyncio.run(go())
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert [r.status_code for r in finished] == [200, 200]  # both the running and the queued one
    assert batcher.batches == 2


def test_header_and_body_timeouts_close_stalled_connections_and_spare_real_requests() -> None:
    """Slowloris: half-sent headers get 408 and a closed socket, and so does a body still trickling in at the
    request timeout; a complete request, or a body slower than the header timeout but within the request's, does not."""
    import socket
    import threading
    import time

    import uvicorn

    from transferlm.serving.app import BodyLimit
    from transferlm.serving.metrics import Metrics
    from transferlm.serving.protocol import protocol_with_header_timeout

    async def echo(scope, receive, send):  # echoes the body's length after reading all of it
        if scope["type"] != "http":
            return
        n, more = 0, True
        while more:
            msg = await receive()
            n, more = n + len(msg.get("body", b"")), msg.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(str(n)))]})
        await send({"type": "http.response.body", "body": str(n).encode()})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = BodyLimit(echo, max_bytes=1000, timeout_s=2.5, metrics=Metrics())  # what create_app wraps around routes
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="error",
                                           http=protocol_with_header_timeout(0.5)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)

    def read_all(sock: socket.socket) -> bytes:
        out = b""
        while chunk := sock.recv(4096):
            out += chunk
        return out

    try:
        # 1. half a header, then silence: 408, then EOF, within the timeout plus slack.
        stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
        stalled.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\n")
        t0 = time.monotonic()
        reply = read_all(stalled)
        assert reply.startswith(b"HTTP/1.1 408") and 0.4 < time.monotonic() - t0 < 3
        # 2. a connection that never sends a byte is closed too (no answer is owed).
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert read_all(idle).startswith(b"HTTP/1.1 408")
        # 3. complete headers, then a body trickled over 1.2 s (> the header timeout, < the request's): answered;
        #    then the same kept-alive connection stalls in its next request's headers: 408.
        ok = socket.create_connection(("127.0.0.1", port), timeout=5)
        ok.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n")
        for byte in b"abcd":
            time.sleep(0.3)
            ok.sendall(bytes([byte]))
        first = b""
        while not first.endswith(b"\r\n\r\n4"):  # head and body may come in separate packets
            chunk = ok.recv(4096)
            assert chunk, f"closed before the answer: {first!r}"
            first += chunk
        assert first.startswith(b"HTTP/1.1 200")
        ok.sendall(b"GET /y HTTP/1.1\r\n")
        assert read_all(ok).startswith(b"HTTP/1.1 408")
        # 4. a body trickled for 1.8 s, then stalled: a JSON 408 and EOF when the request timeout (2.5 s) is up,
        #    counted from the headers, not from the last byte.
        slow = socket.create_connection(("127.0.0.1", port), timeout=8)
        slow.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\n")
        t0 = time.monotonic()
        for byte in b"abcdef":
            time.sleep(0.3)
            slow.sendall(bytes([byte]))
        reply = read_all(slow)
        assert reply.startswith(b"HTTP/1.1 408") and 2.3 < time.monotonic() - t0 < 4.0, reply
        assert reply.endswith(b'{"error":"request body not received within request_timeout_s (2.5 s)"}')
    finally:
        server.should_exit = True
        thread.join(10)
