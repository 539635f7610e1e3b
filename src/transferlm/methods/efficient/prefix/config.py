from __future__ import annotations

from dataclasses import dataclass

from ..config import EfficientConfig, check_choice, check_positive

INITS = ("random", "vocab")


@dataclass
class PrefixOptions(EfficientConfig):
    length: int = 10  # prefix positions per layer
    # Train P = MLP(P') (Li & Liang's reparametrisation, stabler); saved and served as plain P.
    reparam: bool = True
    mlp_hidden: int = 512
    # random: prefixes start as noise, which perturbs every layer's attention at step 0. vocab: they start
    # as the frozen model's own keys/values for `length` random vocabulary tokens, so the input reads as
    # if it followed real words (Li & Liang find real-word initialisation trains better from few examples).
    init: str = "random"

    def validate(self) -> None:
        super().validate()
        check_positive("length", self.length)
        check_positive("mlp_hidden", self.mlp_hidden)
        check_choice("init", self.init, INITS)
