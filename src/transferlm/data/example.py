"""The unit of data: one labelled (or unlabelled) input, one or two sentences."""

from __future__ import annotations

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

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}
