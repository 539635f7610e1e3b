"""transferlm: transfer a pretrained language model to your task, and measure which method wins."""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# The public API: name -> the module that defines it. Imported on first use, so `import transferlm` stays fast
# and torch loads only when a run starts.
_EXPORTS = {
    "run": ".protocol.run", "compare": ".protocol.compare", "probe": ".protocol.probe",
    "RunConfig": ".config", "CompareConfig": ".config", "TrainConfig": ".config", "DataConfig": ".config",
    "IntermediateConfig": ".config",
    "load_task": ".data.loading",
    "load_backbone": ".models.loading",
    "pretrain": ".training.pretrain", "PretrainConfig": ".training.pretrain",
    "multitask": ".protocol.multitask", "MultitaskConfig": ".protocol.multitask",
    "load_multitask_model": ".protocol.multitask",
    "load_task_adapter": ".methods.efficient", "TaskModel": ".methods.efficient",
    "build_report": ".reports",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'transferlm' has no attribute {name!r}")
    return getattr(import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
