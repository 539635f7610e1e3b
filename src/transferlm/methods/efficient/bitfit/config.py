from __future__ import annotations

from dataclasses import dataclass

from ..config import EfficientConfig


@dataclass
class BitFitOptions(EfficientConfig):
    """Every bias of the transformer's linear and LayerNorm modules trains (the LM head's stay frozen)."""
