"""Options every PEFT method shares: how the classification head pools, its dropout."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ..base import MethodConfig
from ..finetune import POOLINGS


@dataclass
class EfficientConfig(MethodConfig):
    # The classification head on top (ignored by apply_peft, which only transforms the backbone).
    pooling: str = "auto"
    head_dropout: float = 0.1

    def validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"method_args.pooling must be one of {POOLINGS}, got '{self.pooling}'")
        if not 0 <= self.head_dropout < 1:
            raise ConfigError(f"method_args.head_dropout must be in [0, 1), got {self.head_dropout}")


def check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"method_args.{name} must be > 0, got {value}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"method_args.{name} must be one of {', '.join(choices)}, got '{value}'")
