"""Transfer methods. Each module registers itself; importing this package loads them all."""

from .base import Method, Prepared
from .registry import get_method, list_methods, register

# Import for their registration side effect.
from . import finetune  # noqa: E402,F401  isort: skip
from . import efficient  # noqa: E402,F401  isort: skip
from . import prompting  # noqa: E402,F401  isort: skip

__all__ = ["Method", "Prepared", "get_method", "list_methods", "register"]
