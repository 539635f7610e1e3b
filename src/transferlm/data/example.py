"""The unit of data: one labelled (or unlabelled) input, one or two sentences."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None = None
    # Class index into TaskSpec.labels, or a float for regression tasks; None when unlabelled.
    label: int | float | None = None
    guid: str = ""


@dataclass
class TaskData:
    """The three splits the protocol needs. ``test`` may be empty where a benchmark has none."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    notes: list[str] = field(default_factory=list)
    # dev is a seeded hold-out of the training pool (full data, no dev split of its own): train + dev = the pool.
    dev_held_out: bool = False

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}

    def digests(self) -> dict[str, str]:
        """A digest of each split's examples: what a run read, wherever the files sat."""
        return {"train": examples_digest(self.train), "dev": examples_digest(self.dev),
                "test": examples_digest(self.test)}


def examples_digest(examples: Sequence[Example]) -> str:
    """A digest of the examples' texts and labels, in order."""
    h = hashlib.blake2b(digest_size=16)
    for e in examples:
        h.update(json.dumps([e.text_a, e.text_b, e.label], default=str).encode())
    return h.hexdigest()
