"""Start the server: load the base model and tasks (errors stop here, before binding), then uvicorn.

uvicorn handles SIGTERM/SIGINT: it stops accepting connections, waits up to ``drain_timeout_s`` for
open requests to be answered, then runs the app's shutdown, which drains the batcher.
"""

from __future__ import annotations

import logging
import logging.config

from ..errors import ConfigError
from .config import ServeConfig
from .logs import log_config
from .registry import Registry

log = logging.getLogger("transferlm.serving")


def build_registry(cfg: ServeConfig) -> Registry:
    """A registry with every task of ``cfg`` loaded (blocking; the first error is a one-line TransferLMError)."""
    if not cfg.tasks and not cfg.model:
        raise ConfigError("nothing to serve: give --task NAME=FOLDER (or tasks: in --config), or --model to start "
                          "empty and load tasks with POST /v1/tasks")
    registry = Registry(cfg.model, device=cfg.device, max_length=cfg.max_length, pad_ratio=cfg.pad_ratio,
                        precision=cfg.precision, allow_base_mismatch=cfg.allow_base_mismatch)
    for name, folder in cfg.tasks.items():
        registry.load(name, folder)
    if registry.model is not None and not cfg.tasks:
        # Fail now, not on the first POST /v1/tasks, if the model name is wrong.
        from ..models.zoo import resolve_model

        resolve_model(registry.model)
    return registry


def serve(cfg: ServeConfig) -> None:
    """Load everything, then serve until SIGTERM/SIGINT (blocking)."""
    import torch
    import uvicorn

    from .app import create_app
    from .protocol import protocol_with_header_timeout

    logging.config.dictConfig(log_config(cfg.log_level))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.loopback and not cfg.admin_token:
        log.warning("listening beyond loopback without an admin token: POST /v1/tasks is disabled",
                    extra={"event": "admin_off", "host": cfg.host})
    registry = build_registry(cfg)
    app = create_app(cfg, registry)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_config=log_config(cfg.log_level),
                            http=protocol_with_header_timeout(cfg.header_timeout_s),
                            access_log=False, lifespan="on", limit_concurrency=cfg.max_connections,
                            timeout_graceful_shutdown=max(1, int(round(cfg.drain_timeout_s))))
    uvicorn.Server(config).run()
