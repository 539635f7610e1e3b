from __future__ import annotations

from dataclasses import dataclass, field

from ....errors import ConfigError
from ..config import EfficientConfig, check_positive

PRESETS = ("qv", "attention", "all-linear")


@dataclass
class LoraOptions(EfficientConfig):
    # A preset (qv | attention | all-linear) or explicit module names, matched as suffixes inside each layer
    # ("query", "attention.self.value", "o_proj").
    target: list[str] | str = field(default_factory=lambda: ["qv"])
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    # Also write merged/: the backbone with the update folded into its weights (serving without peft).
    merge: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.target, str):
            self.target = [t.strip() for t in self.target.split(",") if t.strip()]

    def validate(self) -> None:
        super().validate()
        if self.r <= 0:
            raise ConfigError(f"method_args.r (LoRA rank) must be > 0, got {self.r}")
        check_positive("alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method_args.dropout must be in [0, 1), got {self.dropout}")
        if not self.target:
            raise ConfigError(f"method_args.target must be one of {', '.join(PRESETS)} or module names")
        mixed = [t for t in self.target if t in PRESETS]
        if mixed and len(self.target) > 1:  # a preset is not a module name: it would match nothing
            raise ConfigError(f"method_args.target: preset '{mixed[0]}' cannot be combined with other targets "
                              f"(got {','.join(self.target)}); use the preset alone or list module names only")

    @property
    def preset(self) -> str | None:
        return self.target[0] if len(self.target) == 1 and self.target[0] in PRESETS else None
