"""The FastAPI app: classify, tasks (list, load), health, metrics; errors as one-line JSON.

Status codes: 404 unknown task, 408 a body not in within the request timeout, 413 too many inputs / too
long a text / too big a body, 422 malformed body (the message names the field, or the missing
``Content-Type: application/json``), 429 queue full, 503 draining, 504 past the request timeout, 401/403
admin calls without the token, 400 a task folder that cannot be loaded, 409 a task name already taken or a
task trained on another base model, 500 anything unexpected (one JSON line, the log has the traceback).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..data.example import Example
from ..errors import TransferLMError
from .batcher import Batcher, DrainingError, Job, QueueFullError
from .config import ServeConfig
from .hosts import Prediction
from .metrics import CLASSIFY_PATH, UNKNOWN_TASK, Metrics
from .registry import BaseMismatchError, Registry, TaskEntry, TaskExistsError, UnknownTaskError
from .schemas import (
    UNION_TAGS,
    ClassifyRequest,
    ClassifyResponse,
    ErrorBody,
    LoadTaskRequest,
    TaskInfo,
    TaskList,
)

log = logging.getLogger("transferlm.serving")
SCOPE_KEY = "transferlm"  # per-request facts the access log reads back (task, inputs)
DEADLINE_KEY = "transferlm.deadline"  # loop time by which the whole request must be answered


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, reason: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers


class BodyRejected(StarletteHTTPException):
    """A body refused while it streams in (413, 408), raised from ``receive``: FastAPI re-raises it as it is."""

    def __init__(self, status: int, message: str) -> None:
        # The rest of the body is not read: the connection cannot carry another request.
        super().__init__(status, message, headers={"connection": "close"})


class AccessLog:
    """Pure ASGI middleware: a request id header, one JSON log line per HTTP request, and a one-line JSON 500
    (with the request id) for anything the app did not handle, instead of Starlette's text/plain page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        info: dict[str, Any] = {"request_id": rid}
        scope[SCOPE_KEY] = info
        status, started = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as e:
            if started:  # too late for an error body: the server closes the connection
                raise
            log.error("unhandled error", exc_info=e, extra={"event": "error", "path": scope["path"], **info})
            message = f"internal server error ({type(e).__name__}); see the server log for request id {rid}"
            await JSONResponse({"error": message}, status_code=500)(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            log.info("request", extra={"event": "request", "method": scope["method"], "path": scope["path"],
                                       "status": status, "ms": round(1000 * (time.perf_counter() - t0), 2),
                                       "client": f"{client[0]}:{client[1]}" if client else None, **info})


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over ``max_bytes`` (by Content-Length or while it streams in), and
    408 for a body not all in by the request's deadline, ``timeout_s`` after its headers arrived.

    The header timeout (protocol.py) ends with the headers, so without this a client trickling its body held a
    connection forever. The deadline is stored in the scope: the same ``request_timeout_s`` bounds the whole
    request, body, queue and forward pass together.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, metrics: Metrics) -> None:
        self.app, self.max_bytes, self.timeout_s, self.metrics = app, max_bytes, timeout_s, metrics

    def message(self) -> str:
        return f"request body larger than max_body_bytes ({self.max_bytes} bytes)"

    def reject(self, scope: Scope, status: int, message: str, reason: str) -> BodyRejected:
        """The error to answer with, counted here: once per request, whoever turns it into the response."""
        self.metrics.refused_early(scope["path"], status, reason)
        return BodyRejected(status, message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = scope[DEADLINE_KEY] = asyncio.get_running_loop().time() + self.timeout_s
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self.answer(self.reject(scope, 413, self.message(), "too_large"), scope, receive, send)
            return
        received, complete, started = 0, False, False

        async def guarded() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: what follows (the disconnect) is the app's to wait for
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise self.reject(scope, 408, f"request body not received within request_timeout_s "
                                              f"({self.timeout_s:g} s)", "body_timeout") from None
            if message["type"] != "http.request":
                complete = True
                return message
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # chunked, or a lying Content-Length
                raise self.reject(scope, 413, self.message(), "too_large")
            complete = not message.get("more_body", False)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded, tracked)
        except BodyRejected as e:  # the app let it through (FastAPI's handler answers it before it gets here)
            if started:
                raise
            await self.answer(e, scope, receive, send)

    @staticmethod
    async def answer(e: BodyRejected, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"error": e.detail}, status_code=e.status_code, headers=e.headers)(scope, receive, send)


def _where(loc: Sequence[Any]) -> str:
    """('body', 'inputs', 0, 'PairInput', 'sentence2') -> 'inputs[0].sentence2'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in UNION_TAGS:
            out += f".{part}" if out else str(part)
    return out or "body"


def content_type_hint(content_type: str, errors: Sequence[dict[str, Any]]) -> str | None:
    """The 422 message for a body that was not parsed as JSON because of its Content-Type; None otherwise."""
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return None
    if not any(tuple(e.get("loc", ())) == ("body",) for e in errors):
        return None
    got = f"got '{content_type}'" if content_type else "no Content-Type header was sent"
    return f"body: send it as JSON with the header 'Content-Type: application/json' ({got})"


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    parts: list[str] = []
    for e in errors:
        if e.get("type") == "json_invalid":
            pos = e["loc"][1] if len(e.get("loc", ())) > 1 else "?"
            parts.append(f"body: not valid JSON ({(e.get('ctx') or {}).get('error', 'decode error')} at "
                         f"character {pos})")
            continue
        loc = tuple(e.get("loc", ()))
        if "str" in loc or (loc and loc[-1] == "PairInput"):
            if isinstance(e.get("input"), dict) and "str" in loc:
                continue  # an object was sent: the PairInput errors say what is wrong with it
            parts.append(f"{_where(loc)}: should be a text or an object {{\"sentence1\", \"sentence2\"}}")
            continue
        parts.append(f"{_where(loc)}: {e.get('msg')}")
    unique = list(dict.fromkeys(parts))
    return "; ".join(unique[:4]) + (f" (+{len(unique) - 4} more)" if len(unique) > 4 else "")


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body is already read: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(cfg: ServeConfig, registry: Registry) -> FastAPI:
    """The app serving ``registry``'s tasks; the batcher starts and drains with the app's lifespan."""
    metrics = Metrics()
    batcher = Batcher(registry.predict, mode=cfg.batching, max_batch_size=cfg.max_batch_size,
                      max_wait_ms=cfg.max_wait_ms, max_queue=cfg.max_queue, metrics=metrics, retirer=registry)
    metrics.adapters_retiring.set_function(lambda: len(registry.retiring))
    # Admin loads read their files here, not on the inference thread, so classify traffic goes on meanwhile.
    # Two threads: one slow folder does not hold up the next load, and memory for loads in flight stays bounded.
    loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="transferlm-load")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        metrics.tasks_loaded.set(len(registry))
        log.info("serving", extra={"event": "start", "tasks": [e.name for e in registry.entries()],
                                   "base_copies": registry.hosts, "device": str(registry.device),
                                   "config": cfg.public_dict()})
        yield
        # uvicorn has already waited for open requests; this finishes anything still queued.
        await batcher.close(cfg.drain_timeout_s)
        loader.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="transferlm serve", version=__version__, lifespan=lifespan,
                  description="One base model, many task adapters, mixed-task dynamic batching.")
    app.state.registry, app.state.batcher, app.state.metrics, app.state.config = registry, batcher, metrics, cfg
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes, timeout_s=cfg.request_timeout_s, metrics=metrics)
    app.add_middleware(AccessLog)  # outermost: logs the 408s and 413s too, and turns a crash into JSON

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.reason:
            metrics.rejected.labels(exc.reason).inc()
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.refused_early(request.url.path, 422)
        errors = jsonable_encoder(exc.errors())
        message = content_type_hint(request.headers.get("content-type", ""), errors) or validation_message(errors)
        return JSONResponse({"error": message, "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    def examples_of(req: ClassifyRequest, entry: TaskEntry) -> list[Example]:
        if len(req.inputs) > cfg.max_inputs:
            raise ApiError(413, f"inputs: {len(req.inputs)} items, at most {cfg.max_inputs} per request",
                           reason="too_large")
        out = []
        for i, x in enumerate(req.inputs):
            if isinstance(x, str):
                if entry.pair:
                    raise ApiError(422, f"inputs[{i}]: task {entry.name} takes sentence pairs "
                                        '{"sentence1": ..., "sentence2": ...}, got a string')
                ex = Example(x)
            else:
                if not entry.pair:
                    raise ApiError(422, f"inputs[{i}]: task {entry.name} takes one text per input, got a pair")
                ex = Example(x.sentence1, x.sentence2)
            n = len(ex.text_a) + len(ex.text_b or "")
            if n > cfg.max_chars:
                raise ApiError(413, f"inputs[{i}]: {n} characters, at most {cfg.max_chars}", reason="too_large")
            out.append(ex)
        return out

    async def wait_for(job: Job, request: Request) -> list[Prediction]:
        watcher = asyncio.ensure_future(_disconnected(request))
        loop = asyncio.get_running_loop()
        deadline = request.scope.get(DEADLINE_KEY, loop.time() + cfg.request_timeout_s)  # set by BodyLimit
        try:
            done, _ = await asyncio.wait({job.future, watcher}, timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server cancelled this request (shutdown past its deadline)
            batcher.abandon(job)
            raise
        finally:
            watcher.cancel()
        if job.future.done() and not job.future.cancelled():
            try:
                return job.future.result()
            except DrainingError as e:
                raise ApiError(503, str(e), reason="draining") from None
        batcher.abandon(job)  # nobody is waiting any more: a queued job is dropped, not computed
        if watcher in done:
            # 499 (nginx's "client closed request"): nobody reads it, but the log and metrics say what happened.
            raise ApiError(499, "client disconnected before the answer", reason="disconnected")
        raise ApiError(504, f"no answer within request_timeout_s ({cfg.request_timeout_s:g} s)", reason="timeout")

    @app.post(CLASSIFY_PATH, response_model=ClassifyResponse, response_model_exclude_none=True,
              responses={404: {"model": ErrorBody}, 408: {"model": ErrorBody}, 413: {"model": ErrorBody},
                         422: {"model": ErrorBody}, 429: {"model": ErrorBody}, 500: {"model": ErrorBody},
                         503: {"model": ErrorBody}, 504: {"model": ErrorBody}})
    async def classify(req: ClassifyRequest, request: Request) -> dict[str, Any]:
        """Labels and per-label probabilities for each input, from the task's adapter."""
        t0 = time.perf_counter()
        task = UNKNOWN_TASK
        status = 200
        try:
            try:
                entry = registry.get(req.task)
            except UnknownTaskError as e:
                raise ApiError(404, str(e)) from None
            task = entry.name
            request.scope.get(SCOPE_KEY, {}).update(task=task, inputs=len(req.inputs))
            examples = examples_of(req, entry)
            try:
                job = batcher.submit(entry.name, entry.rows(examples), entry.host)
            except QueueFullError as e:
                raise ApiError(429, f"server busy: {e}; retry later", reason="queue_full",
                               headers={"Retry-After": "1"}) from None
            except DrainingError as e:
                raise ApiError(503, str(e), reason="draining") from None
            preds = await wait_for(job, request)
        except ApiError as e:
            status = e.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            metrics.requests.labels(task, str(status)).inc()
            if status == 200:
                metrics.latency.labels(task).observe(time.perf_counter() - t0)
                metrics.inputs.labels(task).inc(len(req.inputs))
            else:
                metrics.rejection_latency.observe(time.perf_counter() - t0)
        return {"task": entry.name, "adapter_version": entry.version,
                "results": [{"label": p.label, "probabilities": p.probabilities, "score": p.score} for p in preds]}

    @app.get("/v1/tasks", response_model=TaskList)
    async def list_tasks() -> dict[str, Any]:
        """The tasks being served, with their adapter versions and labels."""
        return {"model": registry.model, "batching": cfg.batching, "tasks": [e.describe() for e in registry.entries()]}

    def check_admin(authorization: str | None) -> None:
        if cfg.admin_token:
            expected = f"Bearer {cfg.admin_token}".encode()
            if not authorization or not hmac.compare_digest(authorization.encode(), expected):
                raise ApiError(401, "admin call: send the admin token as 'Authorization: Bearer <token>'",
                               headers={"WWW-Authenticate": "Bearer"})
        elif not cfg.loopback:
            raise ApiError(403, "admin calls are off: the server listens beyond loopback without --admin-token")

    @app.post("/v1/tasks", response_model=TaskInfo, status_code=201,
              responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 409: {"model": ErrorBody}})
    async def load_task(body: LoadTaskRequest, authorization: str | None = Header(None)) -> dict[str, Any]:
        """Admin: load a saved task adapter (a run's model folder) without a restart.

        The folder is read, checked and tokenised on a loader thread while batches keep running; only putting
        the task on its model runs on the inference thread, between forward passes.
        """
        check_admin(authorization)
        if batcher.closing:
            raise ApiError(503, "the server is shutting down")
        try:
            prepared = await asyncio.get_running_loop().run_in_executor(
                loader, functools.partial(registry.prepare, body.name, body.path, replace=body.replace,
                                          allow_base_mismatch=body.allow_base_mismatch))
            if batcher.closing:  # it began draining while the files were read
                raise ApiError(503, "the server is shutting down")
            entry = await batcher.run_exclusive(registry.commit, prepared)
        except (TaskExistsError, BaseMismatchError) as e:
            raise ApiError(409, str(e)) from None
        except TransferLMError as e:
            raise ApiError(400, str(e)) from None
        metrics.tasks_loaded.set(len(registry))
        await batcher.sweep()  # a replaced version no request uses goes now
        return entry.describe()

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while serving; 503 ``draining`` once the batcher is closing.

        Not a pre-stop signal: on SIGTERM uvicorn closes the listener and waits for open requests before the
        app's shutdown closes the batcher, so a stopping server refuses connections rather than answer 503.
        Take a server out of a load balancer's pool before stopping it.
        """
        body = {"status": "draining" if batcher.closing else "ok", "tasks": len(registry),
                "queued": batcher.queued, "running": len(batcher.running), "batching": cfg.batching,
                "precision": registry.precision,
                "retiring": len(registry.retiring)}
        return JSONResponse(body, status_code=503 if batcher.closing else 200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text format: requests, latency and batch-size histograms, queue depth, rejections."""
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
