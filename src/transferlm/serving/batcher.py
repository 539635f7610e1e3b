"""The dynamic batcher: gathers waiting requests into forward passes on ONE inference thread.

Requests wait in a bounded queue (full: :class:`QueueFullError`, the app answers 429). The worker
takes the oldest request and waits at most ``max_wait_ms`` after its arrival for company, until the
batch holds ``max_batch_size`` rows; under load the wait is already over and batches form at once. A
request with more rows than ``max_batch_size`` runs alone, split into passes of at most that many rows.
If a batch of several requests fails, each runs again alone, so only a request whose own rows fail gets
the error.
Modes: ``mixed`` takes requests of any task (one forward, each row with its own adapter);
``per-task`` takes only requests for the oldest request's task; ``none`` takes one request at a time.
The forward pass runs in a single worker thread so the event loop keeps answering; the same thread
puts loaded adapters on the model (``run_exclusive``), so a load never races a forward; reading a load's
files happens before, elsewhere (the app's loader thread). After each batch (and after a load:
``sweep``) it frees replaced adapter versions that no queued or running request uses any more.
``close()`` stops admission and finishes everything already admitted (graceful drain).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .config import BATCHING_MODES
from .hosts import Prediction, Row
from .metrics import Metrics

log = logging.getLogger("transferlm.serving")
T = TypeVar("T")
Predict = Callable[[Sequence[Row], Sequence[Any]], list[Prediction]]


class Retirer(Protocol):
    """What holds replaced adapter versions until no request uses them (the registry)."""

    @property
    def retiring(self) -> list[str]: ...

    def free(self, adapters: Sequence[str]) -> int: ...


class QueueFullError(Exception):
    """The queue holds ``max_queue`` requests: come back later (429)."""


class DrainingError(Exception):
    """The server is shutting down and admits no new work (503)."""


@dataclass(eq=False)
class Job:
    """One request: its rows, the host that serves them, and the future its handler awaits."""

    task: str
    rows: list[Row]
    host: Any
    future: asyncio.Future[list[Prediction]]
    enqueued: float = field(default_factory=time.monotonic)
    started: bool = False

    @property
    def key(self) -> str:
        return self.rows[0].adapter  # per-task batching groups by loaded version

    @property
    def abandoned(self) -> bool:
        return self.future.cancelled()


class Batcher:
    def __init__(self, predict: Predict, *, mode: str = "mixed", max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256, metrics: Metrics | None = None,
                 retirer: Retirer | None = None) -> None:
        if mode not in BATCHING_MODES:
            raise ValueError(f"batching mode must be one of {BATCHING_MODES}, got {mode!r}")
        self.predict, self.mode = predict, mode
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000.0, max_queue
        self.metrics, self.retirer = metrics, retirer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferlm-inference")
        self._pending: deque[Job] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False
        self.running: list[Job] = []  # the batch in the forward pass now
        self._sweeps: set[asyncio.Task[int]] = set()
        self._stopped = False  # the executor is shut down
        self.batches = 0
        self.max_queued = 0  # high-water mark of the queue (never above max_queue)

    # -- life cycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="transferlm-batcher")

    async def close(self, timeout: float = 30.0) -> None:
        """Admit nothing new; finish queued and running requests (up to ``timeout`` s), then stop."""
        self.closing = True
        if self._worker is None:
            return
        assert self._wake is not None
        self._wake.set()
        pending = len(self._pending) + len(self.running)
        log.info("draining", extra={"event": "drain_start", "pending": pending})
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout)
        except TimeoutError:
            left = list(self._pending)
            self._pending.clear()
            for job in left:
                if not job.future.done():
                    job.future.set_exception(DrainingError("the server shut down before this request ran"))
            self._worker.cancel()
            log.error("drain timed out", extra={"event": "drain_timeout", "dropped": len(left)})
        self._stopped = True
        self._executor.shutdown(wait=False)
        log.info("drained", extra={"event": "drain_done", "batches": self.batches})

    # -- admission (event loop) ---------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, task: str, rows: list[Row], host: Any) -> Job:
        if self.closing or self._loop is None:
            raise DrainingError("the server is shutting down")
        if len(self._pending) >= self.max_queue:
            raise QueueFullError(f"{len(self._pending)} requests are waiting (max_queue {self.max_queue})")
        job = Job(task, rows, host, self._loop.create_future())
        self._pending.append(job)
        if len(self._pending) > self.max_queued:
            self.max_queued = len(self._pending)
            if self.metrics is not None:
                self.metrics.queue_depth_max.set(self.max_queued)
        self._gauge()
        assert self._wake is not None
        self._wake.set()
        return job

    def abandon(self, job: Job) -> None:
        """The caller stopped waiting (timeout, disconnect): drop the job unless it is already running."""
        if not job.future.done():
            job.future.cancel()
        if not job.started:
            try:
                self._pending.remove(job)
            except ValueError:
                pass
            self._gauge()
            if self.retirer is not None and self.retirer.retiring and self._loop is not None:
                task = self._loop.create_task(self.sweep())  # it may have held the last use of a retired version
                self._sweeps.add(task)
                task.add_done_callback(self._sweeps.discard)

    async def run_exclusive(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the inference thread, between forward passes (attaching a loaded adapter).

        Keep ``fn`` short: every batch waits behind it. File reading belongs before it, on another thread.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def sweep(self) -> int:
        """Free the retired adapters that no queued or running request references (on the inference thread).

        Runs on the event loop, so the snapshot of retired names and of admitted rows is consistent: a request
        admitted after a swap gets the new version, so nothing can start using a retired adapter later.
        """
        if self.retirer is None or self._stopped:
            return 0
        retiring = self.retirer.retiring
        if not retiring:
            return 0
        busy = {r.adapter for j in (*self._pending, *self.running) for r in j.rows}
        idle = [a for a in retiring if a not in busy]
        if not idle:
            return 0
        loop = asyncio.get_running_loop()
        try:
            freed = await loop.run_in_executor(self._executor, self.retirer.free, idle)
        except Exception:  # a bug: keep serving; the adapters stay retired and are tried again
            log.exception("freeing retired adapters failed", extra={"event": "free_error", "adapters": idle})
            return 0
        if self.metrics is not None:
            self.metrics.adapters_freed.inc(freed)
        return freed

    # -- the worker -----------------------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if not self._pending:
                if self.closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            await self._execute(self._take())  # the batch is released on return
            await self.sweep()

    def _rows_waiting(self, key: str | None) -> int:
        return sum(len(j.rows) for j in self._pending if key is None or j.key == key)

    async def _gather(self) -> None:
        """Wait for company for the oldest request: until a full batch or its max_wait is over."""
        assert self._wake is not None and self._loop is not None
        if self.mode == "none":
            return
        while self._pending and not self.closing:
            first = self._pending[0]
            if self._rows_waiting(first.key if self.mode == "per-task" else None) >= self.max_batch_size:
                return
            remaining = first.enqueued + self.max_wait - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[Job]:
        if not self._pending:
            return []
        if self.mode == "none":
            batch = [self._pending.popleft()]
        else:
            key = self._pending[0].key if self.mode == "per-task" else None
            batch, rows = [], 0
            for job in self._pending:
                if key is not None and job.key != key:
                    continue
                if batch and rows + len(job.rows) > self.max_batch_size:
                    break  # first come, first served: no overtaking by smaller requests
                batch.append(job)
                rows += len(job.rows)
            taken = set(map(id, batch))
            self._pending = deque(j for j in self._pending if id(j) not in taken)
        self._gauge()
        return batch

    async def _execute(self, batch: list[Job]) -> None:
        if not batch:
            return
        now = time.monotonic()
        for job in batch:
            job.started = True
        if self.metrics is not None:
            m = self.metrics
            m.batch_requests.observe(len(batch))
            m.batch_tasks.observe(len({j.key for j in batch}))
            for j in batch:
                m.queue_wait.observe(now - j.enqueued)
        self.running = batch
        try:
            if len(batch) == 1:
                await self._answer(batch[0])
                return
            try:
                preds = await self._forward(batch)
            except Exception:  # a bug or a bad input the checks missed: find whose rows fail, keep serving
                log.warning("forward pass failed: its requests run again one at a time",
                            extra={"event": "forward_retry", "requests": len(batch),
                                   "rows": sum(len(j.rows) for j in batch)})
                for j in batch:
                    await self._answer(j)
                return
        finally:
            self.running = []
            self.batches += 1
        i = 0
        for j in batch:
            n = len(j.rows)
            if not j.future.done():  # an abandoned job's result is dropped
                j.future.set_result(preds[i:i + n])
            i += n

    async def _answer(self, job: Job) -> None:
        """One job's rows on their own: its result, or the error its own rows raise."""
        if job.future.done():
            return
        try:
            preds = await self._forward([job])
        except Exception as e:
            log.exception("forward pass failed", extra={"event": "forward_error", "task": job.task,
                                                        "rows": len(job.rows)})
            if not job.future.done():
                job.future.set_exception(e)
            return
        if not job.future.done():
            job.future.set_result(preds)

    async def _forward(self, jobs: Sequence[Job]) -> list[Prediction]:
        """The jobs' rows in order, in passes of at most ``max_batch_size`` rows (one big request is split)."""
        rows = [r for j in jobs for r in j.rows]
        hosts = [j.host for j in jobs for _ in j.rows]
        loop = asyncio.get_running_loop()
        preds: list[Prediction] = []
        for start in range(0, len(rows), self.max_batch_size):
            if all(j.abandoned for j in jobs):
                break  # nobody waits for the rest (timeout, disconnect)
            chunk = slice(start, start + self.max_batch_size)
            t0 = time.perf_counter()
            try:
                preds += await loop.run_in_executor(self._executor, self.predict, rows[chunk], hosts[chunk])
            finally:
                if self.metrics is not None:
                    self.metrics.batch_rows.observe(len(rows[chunk]))
                    self.metrics.forward.observe(time.perf_counter() - t0)
        return preds

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))
