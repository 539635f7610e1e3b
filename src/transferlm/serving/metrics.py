"""Prometheus metrics of one server: requests, latency, batches, queue, rejections.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`, so several servers (or tests) in
one process never share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series only double the exposition; nothing here needs them

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNKNOWN_TASK = "_unknown"  # one label value for every unknown name: bounded label cardinality
CLASSIFY_PATH = "/v1/classify"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("transferlm_requests", "classify requests by task and HTTP status",
                                ["task", "status"], registry=r)
        self.inputs = Counter("transferlm_inputs", "inputs (rows) classified, by task", ["task"], registry=r)
        self.latency = Histogram("transferlm_request_latency_seconds", "classify request latency, by task",
                                 ["task"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejection_latency = Histogram("transferlm_rejection_latency_seconds",
                                           "time to answer a classify request that did not succeed (4xx/5xx)",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("transferlm_queue_wait_seconds", "time a request waits before its forward pass",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.forward = Histogram("transferlm_forward_seconds", "forward pass time per batch",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("transferlm_batch_rows", "inputs per forward pass", buckets=SIZE_BUCKETS,
                                    registry=r)
        self.batch_requests = Histogram("transferlm_batch_requests", "requests per forward pass",
                                        buckets=SIZE_BUCKETS, registry=r)
        self.batch_tasks = Histogram("transferlm_batch_tasks", "distinct tasks per forward pass",
                                     buckets=SIZE_BUCKETS, registry=r)
        self.queue_depth = Gauge("transferlm_queue_depth", "requests waiting for a forward pass", registry=r)
        self.queue_depth_max = Gauge("transferlm_queue_depth_max", "most requests ever waiting at once",
                                     registry=r)
        self.rejected = Counter("transferlm_rejected", "requests refused or abandoned, by reason (queue_full, "
                                "draining, timeout, disconnected, too_large, body_timeout)", ["reason"], registry=r)
        self.tasks_loaded = Gauge("transferlm_tasks_loaded", "tasks being served", registry=r)
        self.adapters_retiring = Gauge("transferlm_adapters_retiring", "replaced task versions not freed yet "
                                       "(requests admitted before the swap still use them)", registry=r)
        self.adapters_freed = Counter("transferlm_adapters_freed", "replaced task versions freed", registry=r)

    def refused_early(self, path: str, status: int, reason: str | None = None) -> None:
        """A request answered before its handler ran (a body too big or too slow, a malformed body): counted in
        ``requests_total`` like the classify handler's own answers, and by ``reason`` in ``rejected_total``."""
        if reason is not None:
            self.rejected.labels(reason).inc()
        if path == CLASSIFY_PATH:
            self.requests.labels(UNKNOWN_TASK, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
