from __future__ import annotations

from dataclasses import dataclass

from ..config import EfficientConfig, check_choice, check_positive

VARIANTS = ("houlsby", "pfeiffer")
ACTIVATIONS = ("relu", "gelu", "tanh")


@dataclass
class AdapterOptions(EfficientConfig):
    # houlsby: after the attention and the FFN sublayer of every layer; pfeiffer: after the FFN only.
    variant: str = "houlsby"
    bottleneck: int = 64  # m: each adapter has 2*m*d + d + m parameters
    activation: str = "relu"

    def validate(self) -> None:
        super().validate()
        check_choice("variant", self.variant, VARIANTS)
        check_positive("bottleneck", self.bottleneck)
        check_choice("activation", self.activation, ACTIVATIONS)

    @property
    def sites(self) -> tuple[str, ...]:
        return ("attn", "ffn") if self.variant == "houlsby" else ("ffn",)
