"""Serving settings: defaults < YAML file < command-line flags, validated once at startup."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import from_dict, load_yaml
from ..errors import ConfigError

BATCHING_MODES = ("mixed", "per-task", "none")
PRECISIONS = ("fp32", "bf16")
ADMIN_TOKEN_ENV = "TRANSFERLM_ADMIN_TOKEN"


@dataclass
class ServeConfig:
    # The base model every task adapter sits on (zoo name, folder or hub id); default: the model the
    # first task was trained on (its run's results.json).
    model: str | None = None
    # Task name -> a run's saved model folder (<output>/model, written with save_model: true).
    tasks: dict[str, str] = field(default_factory=dict)
    # Load an adapter whose run recorded another base model than `model` (a warning in the log); off: refused.
    allow_base_mismatch: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    # mixed: rows of different tasks share one forward pass; per-task: only same-task requests are
    # batched; none: one request per forward pass.
    batching: str = "mixed"
    max_batch_size: int = 32  # rows (inputs) per forward pass
    max_wait_ms: float = 5.0  # how long the oldest waiting request may wait for company
    max_queue: int = 256  # requests waiting for a forward pass; beyond it: 429
    request_timeout_s: float = 30.0  # queueing + inference; beyond it: 504
    max_inputs: int = 64  # inputs per request
    max_chars: int = 4000  # characters per text
    max_body_bytes: int = 1_000_000
    # Open connections uvicorn accepts before answering 503 (bounds what idle or slow clients can hold).
    max_connections: int = 1024
    # A request's headers must arrive within this many seconds of its first byte (or of connecting), else
    # 408 and the connection is closed: stalled half-sent headers cannot hold connections (slowloris).
    header_timeout_s: float = 10.0
    # Tokens per input; default: each task's training max_length (its run's results.json), else 128.
    max_length: int | None = None
    # A forward pass's padded tokens may be at most this many times its real tokens; longer rows go to
    # another pass (rows sorted by length). Default: 1.3 on a CPU, where a pass costs ~ its padded
    # tokens; off (one pass per batch) on a GPU. 0 turns it off.
    pad_ratio: float | None = None
    # Bearer token for POST /v1/tasks (or $TRANSFERLM_ADMIN_TOKEN). Without one, admin calls are
    # accepted only while the server listens on loopback.
    admin_token: str | None = None
    drain_timeout_s: float = 30.0  # graceful shutdown: how long in-flight requests may take to finish
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16: forward passes under bfloat16 autocast. On CPUs with AMX (and on GPUs) several times faster, and
    # batching gains more from it; probabilities move by bfloat16 rounding (~1e-2), labels rarely.
    precision: str = "fp32"
    threads: int | None = None  # torch intra-op threads (default: torch's choice)
    log_level: str = "info"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.batching not in BATCHING_MODES:
            raise ConfigError(f"batching must be one of {', '.join(BATCHING_MODES)}, got '{self.batching}'")
        for name in ("max_batch_size", "max_queue", "max_inputs", "max_chars", "max_body_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "drain_timeout_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("request_timeout_s", "header_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")
        if self.pad_ratio is not None and self.pad_ratio != 0 and self.pad_ratio < 1:
            raise ConfigError(f"pad_ratio must be 0 (off) or >= 1, got {self.pad_ratio}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, got '{self.log_level}'")
        for name in self.tasks:
            check_task_name(name)

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    def public_dict(self) -> dict[str, Any]:
        """The settings, without the admin token (for logs and /health)."""
        d = asdict(self)
        d["admin_token"] = "set" if self.admin_token else None
        return d


def check_task_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", name):
        raise ConfigError(f"task name must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or "
                          f"digit; got {name!r}")


def load_serve_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ServeConfig:
    """``path`` (YAML with ServeConfig keys; ``tasks`` is a mapping name -> folder) updated by ``overrides``.

    Relative task folders in the YAML are relative to the YAML file, so a config travels with its runs.
    """
    d: dict[str, Any] = load_yaml(path) if path else {}
    source = str(path) if path else "flags"
    tasks = d.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise ConfigError(f"{source}: tasks must be a mapping of task name -> adapter folder")
    if path:
        base = Path(path).resolve().parent
        d["tasks"] = {str(k): str(v if Path(str(v)).is_absolute() else base / str(v)) for k, v in tasks.items()}
    for k, v in (overrides or {}).items():
        if k == "tasks":
            d["tasks"] = {**d.get("tasks", {}), **v}
        elif v is not None:
            d[k] = v
    cfg = from_dict(ServeConfig, d, source=source)
    if cfg.admin_token is None and os.environ.get(ADMIN_TOKEN_ENV):
        cfg.admin_token = os.environ[ADMIN_TOKEN_ENV]
    cfg.validate()
    return cfg
