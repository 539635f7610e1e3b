"""``transferlm serve``: its flags and command (wired into the main parser with ``add_serve_command(sub)``)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError

EPILOG = """examples:
  # two LoRA tasks on one minilm-l6 (runs saved with --set save_model=true), mixed-task batching:
  transferlm serve --model minilm-l6 --task sst2=runs/sst2-lora/model --task trec=runs/trec-lora/model
  curl -s localhost:8000/v1/classify -H 'content-type: application/json' \\
      -d '{"task": "sst2", "inputs": ["a gripping film", "flat and tedious"]}'
  transferlm serve --config serve.yaml --port 8080 --max-batch-size 64 --max-wait-ms 10
  TRANSFERLM_ADMIN_TOKEN=secret transferlm serve --config serve.yaml --host 0.0.0.0

serve.yaml:  model: minilm-l6
             tasks: {sst2: runs/sst2-lora/model, trec: runs/trec-lora/model}   # relative to the YAML
             max_batch_size: 32
API: POST /v1/classify, GET /v1/tasks, POST /v1/tasks (admin), GET /health, GET /metrics, /docs"""


def add_serve_command(subparsers: Any) -> None:
    """Add ``serve`` to the ``transferlm`` subparsers."""
    from ..cli import add_command

    p = add_command(subparsers, "serve", "serve saved task adapters on one base model over HTTP (mixed-task batching)",
                    cmd_serve, EPILOG)
    p.add_argument("--config", help="YAML with serve settings; tasks: {name: folder} (flags override it)")
    p.add_argument("--model", help="base model all adapters share (default: the model the first task's run used)")
    p.add_argument("--task", action="append", metavar="NAME=FOLDER",
                   help="serve a run's saved model folder (<output>/model) as task NAME; repeat for more tasks")
    p.add_argument("--allow-base-mismatch", action="store_true", default=None,
                   help="load adapters whose run used another base model than --model (logged; default: refused)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--batching", choices=["mixed", "per-task", "none"],
                   help="mixed (default): tasks share a forward pass; per-task: same-task batches; none: one at a time")
    p.add_argument("--max-batch-size", type=int, help="inputs per forward pass (default 32)")
    p.add_argument("--max-wait-ms", type=float, help="how long a request may wait for company (default 5)")
    p.add_argument("--max-queue", type=int, help="requests waiting before 429 (default 256)")
    p.add_argument("--timeout", type=float, help="per-request timeout in seconds before 504 (default 30)")
    p.add_argument("--header-timeout", type=float,
                   help="seconds a request's headers may take to arrive before 408 and close (default 10)")
    p.add_argument("--max-inputs", type=int, help="inputs per request (default 64)")
    p.add_argument("--max-chars", type=int, help="characters per input (default 4000)")
    p.add_argument("--max-length", type=int, help="tokens per input (default: what each task's run cut inputs "
                   "to); never more than a soft prompt leaves room for")
    p.add_argument("--admin-token", help="bearer token for POST /v1/tasks (better: $TRANSFERLM_ADMIN_TOKEN)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch threads for the forward pass")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="fp32 (default) or bf16 autocast (several times faster on CPUs with AMX and on GPUs)")
    p.add_argument("--drain-timeout", type=float, help="seconds in-flight requests get on shutdown (default 30)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="JSON log level (default info)")


def serve_config(args: argparse.Namespace) -> Any:
    """The ServeConfig of ``serve``'s flags (and its ``--config`` file); loads no model or adapter."""
    from . import load_serve_config

    tasks: dict[str, str] = {}
    for item in args.task or []:
        if "=" not in item:
            raise ConfigError(f"--task expects NAME=FOLDER (a run's <output>/model), got '{item}'")
        name, folder = (part.strip() for part in item.split("=", 1))
        if not folder:
            raise ConfigError(f"--task {item}: no folder after '='; give NAME=FOLDER (a run's <output>/model)")
        if name in tasks:
            raise ConfigError(f"--task {name} is given twice ({tasks[name]} and {folder}); give each task name once")
        tasks[name] = folder
    flags = {"model": args.model, "tasks": tasks, "host": args.host, "port": args.port, "batching": args.batching,
             "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "max_queue": args.max_queue,
             "request_timeout_s": args.timeout, "header_timeout_s": args.header_timeout,
             "max_inputs": args.max_inputs, "max_chars": args.max_chars, "max_length": args.max_length,
             "admin_token": args.admin_token, "device": args.device,
             "threads": args.threads, "drain_timeout_s": args.drain_timeout, "log_level": args.log_level,
             "precision": args.precision, "allow_base_mismatch": args.allow_base_mismatch}
    return load_serve_config(args.config, flags)


def cmd_serve(args: argparse.Namespace) -> int:
    from . import serve

    serve(serve_config(args))
    return 0
