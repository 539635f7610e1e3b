"""``transferlm serve``: one base model hosting many saved task adapters, with mixed-task dynamic batching.

``Registry`` loads tasks (a run's ``<output>/model`` folder) onto shared base models, ``Batcher`` gathers
concurrent requests into forward passes, ``create_app`` is the FastAPI app and ``serve`` runs it with
uvicorn. FastAPI, uvicorn and prometheus_client are imported only here, never by training code.
"""

from .config import BATCHING_MODES, ServeConfig, load_serve_config

__all__ = ["BATCHING_MODES", "Registry", "ServeConfig", "TaskEntry", "UnknownTaskError", "build_registry",
           "create_app", "load_serve_config", "serve"]


def __getattr__(name: str):
    # The web stack and the model code (torch, transformers) load only when used: `transferlm --help` stays fast.
    if name in ("Registry", "TaskEntry", "UnknownTaskError"):
        from . import registry

        return getattr(registry, name)
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("serve", "build_registry"):
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
