"""Every version-dependent import and call, in one place."""

from __future__ import annotations

import os
from typing import Any

import torch


def torch_load_state(path: str | os.PathLike[str]) -> Any:
    """Never unpickle arbitrary objects: weights_only refuses code execution."""
    return torch.load(path, map_location="cpu", weights_only=True)


def configure_threads() -> None:
    # Torch defaults to all cores; keep it, but make inter-op single threaded for determinism.
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set once in this process
