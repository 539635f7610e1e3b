from __future__ import annotations

from dataclasses import dataclass

from ..config import EfficientConfig, check_positive


@dataclass
class PrefixOptions(EfficientConfig):
    length: int = 10  # prefix positions per layer
    # Train P = MLP(P') (Li & Liang's reparametrisation, stabler); saved and served as plain P.
    reparam: bool = True
    mlp_hidden: int = 512

    def validate(self) -> None:
        super().validate()
        check_positive("length", self.length)
        check_positive("mlp_hidden", self.mlp_hidden)
