"""transferlm: transfer a pretrained language model to your task, and measure which method wins."""

__version__ = "0.1.0"

__all__ = ["__version__", "run", "compare", "RunConfig", "CompareConfig", "TrainConfig", "DataConfig", "load_task"]


def __getattr__(name: str):
    # Lazy: `import transferlm` stays fast, torch loads only when a run starts.
    if name in ("run", "compare"):
        from .protocol import compare as _c
        from .protocol import run as _r

        return {"run": _r.run, "compare": _c.compare}[name]
    if name in ("RunConfig", "CompareConfig", "TrainConfig", "DataConfig"):
        from . import config

        return getattr(config, name)
    if name == "load_task":
        from .data.loading import load_task

        return load_task
    raise AttributeError(name)
