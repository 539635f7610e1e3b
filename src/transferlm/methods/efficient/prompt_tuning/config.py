from __future__ import annotations

from dataclasses import dataclass, field

from ....errors import ConfigError
from ..config import EfficientConfig, check_choice, check_positive

INITS = ("random", "vocab", "label-words")


@dataclass
class PromptTuningOptions(EfficientConfig):
    length: int = 20  # k soft tokens
    # random: N(0, std of the embedding matrix); vocab: embeddings of k random vocabulary tokens;
    # label-words: embeddings of `words` (token ids or words, e.g. the verbalizer's), repeated to fill k.
    init: str = "vocab"
    words: list[int | str] = field(default_factory=list)

    def validate(self) -> None:
        super().validate()
        check_positive("length", self.length)
        check_choice("init", self.init, INITS)
        if self.init == "label-words" and not self.words:
            raise ConfigError("method_args.words is required with init=label-words (token ids or words)")
