"""One registry for every transfer method: ``@register("name")`` on a :class:`Method` subclass."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .base import Method

_METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"method '{name}' registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]()


def list_methods() -> dict[str, type[Method]]:
    return dict(sorted(_METHODS.items()))
