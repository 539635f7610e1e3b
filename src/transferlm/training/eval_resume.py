"""Resumable evaluation: the predictions of a long evaluation, saved as it goes.

On a CPU an evaluation can outlast training (SmolLM2 with demonstrations on sst-5's 2,210 test inputs:
50 minutes against 30 of training), so a run killed there must not start it over. While checkpointing is on,
``predict`` saves the batches done so far (``<output>/checkpoint-eval/<desc>.safetensors``, atomically,
at most every ``EVERY_SECONDS``); a rerun with the same weights, examples and batching skips them. The key
covers everything the predictions depend on, so a file of other weights is never reused. The file goes
once the evaluation completes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..data.example import Example, examples_digest
from ..io import atomic_path
from .checkpoint import EVAL_DIR, weights_digest

log = logging.getLogger(__name__)

EVERY_SECONDS = 120.0


def evaluation_key(model: torch.nn.Module, examples: Sequence[Example], desc: str, batch_size: int,
                   order: Sequence[int], fingerprint: str | None = None) -> str:
    """What the predictions depend on: every weight, the examples, their batching, the evaluation's name and the
    run's ``fingerprint`` (its config and method settings: a template or demonstrations change the inputs, not
    the weights; a method that does not train never has its checkpoint's config checked by ``fit``)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([weights_digest(model), examples_digest(list(examples)), desc, batch_size,
                         list(order), fingerprint]).encode())
    return h.hexdigest()


class PartialPredictions:
    """The saved part of one evaluation; ``done`` batches of ``rows`` (index, scores) so far."""

    def __init__(self, out_dir: Path, desc: str, key: Callable[[], str]) -> None:
        self.path = out_dir / EVAL_DIR / f"{desc}.safetensors"
        self._make_key, self._key = key, None
        self.done = 0
        self.rows: list[tuple[int, list[float]]] = []
        self._saved_at = self._started = time.monotonic()
        # Seconds the saved batches took in the interrupted evaluation(s): part of this evaluation's time.
        self.seconds_before = 0.0

    @property
    def key(self) -> str:
        """Computed on first use (it hashes every weight): an evaluation that never saves, and finds no file,
        never pays for it (most dev evaluations during training)."""
        if self._key is None:
            self._key = self._make_key()
        return self._key

    def load(self) -> None:
        """Take the saved batches if the file is of this evaluation (else start over, and say why)."""
        if not self.path.is_file():
            return
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != self.key:
                    log.info("saved predictions in %s are of other weights or examples: evaluating from the start",
                             self.path)
                    return
                index, scores = f.get_tensor("index"), f.get_tensor("scores")
            self.done = int(meta["batches"])
            seconds = float(meta.get("seconds", 0.0))  # absent in files of older versions
        except (OSError, KeyError, ValueError, SafetensorError) as e:
            log.warning("saved predictions in %s cannot be read (%s): evaluating from the start", self.path, e)
            return
        self.rows = list(zip(index.tolist(), scores.tolist(), strict=True))
        self.seconds_before = seconds
        log.info("evaluation resumes after %d saved batches (%d rows) from %s", self.done, len(self.rows), self.path)

    def add(self, rows: list[tuple[int, list[float]]]) -> None:
        self.rows.extend(rows)
        self.done += 1
        if time.monotonic() - self._saved_at >= EVERY_SECONDS:
            self.save()

    def save(self) -> None:
        if not self.rows:
            return
        index = torch.tensor([i for i, _ in self.rows], dtype=torch.long)
        scores = torch.tensor([s for _, s in self.rows], dtype=torch.float64)
        with atomic_path(self.path) as tmp:
            save_file({"index": index, "scores": scores}, str(tmp),
                      metadata={"key": self.key, "batches": str(self.done),
                                "seconds": str(self.seconds_before + time.monotonic() - self._started)})
        self._saved_at = time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
            shutil.rmtree(self.path.parent, ignore_errors=True)
