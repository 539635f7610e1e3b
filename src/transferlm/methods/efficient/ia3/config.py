from __future__ import annotations

from dataclasses import dataclass

from ..config import EfficientConfig


@dataclass
class IA3Options(EfficientConfig):
    """IA3 (Liu et al., 2022) rescales keys, values and the FFN input of the down projection; no options."""
