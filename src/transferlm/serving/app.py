"""The FastAPI app: classify, tasks (list, load), health, metrics; errors as one-line JSON.

Status codes: 404 unknown task, 413 too many inputs / too long a text / too big a body, 422 malformed
body (the message names the field), 429 queue full, 503 draining, 504 past the request timeout, 401/403
admin calls without the token, 409 a task name already taken.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
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
from .metrics import UNKNOWN_TASK, Metrics
from .registry import Registry, TaskEntry, TaskExistsError, UnknownTaskError
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


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, reason: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers


class AccessLog:
    """Pure ASGI middleware: a request id header and one JSON log line per HTTP request."""

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
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            log.info("request", extra={"event": "request", "method": scope["method"], "path": scope["path"],
                                       "status": status, "ms": round(1000 * (time.perf_counter() - t0), 2),
                                       "client": f"{client[0]}:{client[1]}" if client else None, **info})


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over ``max_bytes``, by Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    def message(self) -> str:
        return f"request body larger than max_body_bytes ({self.max_bytes} bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            self.metrics.rejected.labels("too_large").inc()
            await JSONResponse({"error": self.message()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # chunked, or a lying Content-Length
                    raise StarletteHTTPException(413, self.message())
            return message

        await self.app(scope, counted, send)


def _where(loc: Sequence[Any]) -> str:
    """('body', 'inputs', 0, 'PairInput', 'sentence2') -> 'inputs[0].sentence2'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in UNION_TAGS:
            out += f".{part}" if out else str(part)
    return out or "body"


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

    app = FastAPI(title="transferlm serve", version=__version__, lifespan=lifespan,
                  description="One base model, many task adapters, mixed-task dynamic batching.")
    app.state.registry, app.state.batcher, app.state.metrics, app.state.config = registry, batcher, metrics, cfg
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes, metrics=metrics)
    app.add_middleware(AccessLog)  # outermost: logs the 413s too

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.reason:
            metrics.rejected.labels(exc.reason).inc()
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path == "/v1/classify":
            metrics.requests.labels(UNKNOWN_TASK, "422").inc()
        errors = jsonable_encoder(exc.errors())
        return JSONResponse({"error": validation_message(errors), "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:
            metrics.rejected.labels("too_large").inc()
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
        try:
            done, _ = await asyncio.wait({job.future, watcher}, timeout=cfg.request_timeout_s,
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

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
              responses={404: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody},
                         429: {"model": ErrorBody}, 503: {"model": ErrorBody}, 504: {"model": ErrorBody}})
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
        """Admin: load a saved task adapter (a run's model folder) without a restart."""
        check_admin(authorization)
        if batcher.closing:
            raise ApiError(503, "the server is shutting down")
        try:
            entry = await batcher.run_exclusive(functools.partial(registry.load, body.name, body.path,
                                                                  replace=body.replace))
        except TaskExistsError as e:
            raise ApiError(409, str(e)) from None
        except TransferLMError as e:
            raise ApiError(400, str(e)) from None
        metrics.tasks_loaded.set(len(registry))
        await batcher.sweep()  # a replaced version no request uses goes now
        return entry.describe()

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while serving, 503 while draining (so a load balancer stops sending work)."""
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
