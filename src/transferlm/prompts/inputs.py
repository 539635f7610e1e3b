"""Batches for a PromptModel: prompts (with demonstrations) as padded token ids plus answer positions.

One *unit* is one prediction: an input with one set of demonstrations (LM-BFF averages several units
per input at inference). A unit needs one row when every label word is a single token, and otherwise
one row per word length (MLM: that many masks) or per word (causal: the word's tokens follow the prefix).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..data.example import Example
from .demonstrations import DemoSampler, DropLog
from .template import TemplateEncoder, split_spaces
from .verbalizer import Verbalizer

Batch = dict[str, torch.Tensor]


class PromptCollator:
    def __init__(self, encoder: TemplateEncoder, verbalizer: Verbalizer, *, kind: str, max_length: int,
                 pad_id: int, mask_id: int | None = None, sampler: DemoSampler | None = None,
                 eval_samples: int = 1, calibrate: bool = False, content_free: str = "N/A", is_pair: bool = False,
                 demo_separator: str | None = None, demo_max_tokens: int | None = None, on_overflow: str = "drop",
                 is_training: Callable[[], bool] = lambda: False,
                 demo_label: Callable[[Example], int] = lambda e: int(e.label)) -> None:  # type: ignore[arg-type]
        if kind == "mlm" and mask_id is None:
            raise ValueError("an MLM prompt needs the tokenizer's mask token")
        self.enc, self.verb, self.kind, self.max_length = encoder, verbalizer, kind, max_length
        self.pad_id, self.mask_id, self.sampler = pad_id, mask_id, sampler
        self.eval_samples, self.calibrate, self.is_training = max(1, eval_samples), calibrate, is_training
        self.content_free = Example(content_free, content_free if is_pair else None)
        # Causal LMs read demonstrations first (GPT-3); masked LMs after the input (LM-BFF).
        sep = demo_separator if demo_separator is not None else ("\n" if kind == "causal" else " ")
        # A blank separator is the leading space of what follows; any other ("\n", " | ") is its own
        # tokens, and what follows it starts fresh (after a newline a word has no leading space). One space at
        # either edge goes with the neighbouring word, as in template text (" | " reads "Ġ|", then "Ġword").
        body, lead, trail = split_spaces(sep) if sep.strip(" ") else ("", True, True)
        self.sep_ids = encoder.ids((" " if lead else "") + body, glued=not lead) if body else []
        self.after_sep_at_start = not trail
        # Which label's word a demonstration shows (regression: the nearer pole).
        self.demo_max_tokens, self.demo_label = demo_max_tokens, demo_label
        self.drops = DropLog(max_length, on_overflow)
        lengths = verbalizer.lengths
        self.width = max(lengths)
        self.groups = sorted(set(lengths))  # MLM: one row per distinct word length
        self.single = self.width == 1
        self._demo_cache: dict[tuple, list[int]] = {}
        # Whether rows of different inputs may start with the same demonstrations (then evaluation may reuse
        # their states): LM-BFF's one per class from a small pool, or the nearest k; k random draws rarely repeat.
        self.marks_prefixes = kind == "causal" and sampler is not None and (
            sampler.per_class or sampler.strategy == "similar")

    # -- one unit -----------------------------------------------------------------------------------
    def _demo_ids(self, demo: Example, at_start: bool, fresh: bool = False) -> list[int]:
        key = (demo.text_a, demo.text_b, demo.label, at_start, fresh)
        if key not in self._demo_cache:
            words = self.verb.first_word_ids(self.demo_label(demo))
            cap = self.demo_max_tokens or self.max_length
            limit = "method_args.demo_max_tokens" if self.demo_max_tokens else "train.max_length"
            self._demo_cache[key] = self.enc.filled(demo, words, max_tokens=cap, at_start=at_start, limit=limit,
                                                    fresh=fresh)
        return self._demo_cache[key]

    def _fit(self, demos: Sequence[Example], room: int, first_at_start: bool
             ) -> tuple[list[int], list[int], list[Example]]:
        """Greedily keep whole demonstrations, in order, that fit in ``room`` tokens: their ids, end offsets,
        and the demonstrations left out."""
        out: list[int] = []
        ends: list[int] = []
        left: list[Example] = []
        for d in demos:
            follows = bool(out) or not first_at_start  # something precedes it: separate, then start fresh
            ids = (self.sep_ids if follows else []) + self._demo_ids(
                d, at_start=self.after_sep_at_start if follows else True, fresh=follows)
            if len(out) + len(ids) <= room:
                out += ids
                ends.append(len(out))
            else:
                left.append(d)
        return out, ends, left

    def unit_rows(self, ex: Example, demos: Sequence[Example]
                  ) -> tuple[list[tuple[list[int], int]], list[int], list[Example], list[int]]:
        """(rows as (ids, first answer position), row offset of each word, demonstrations dropped, bounds).

        ``bounds``: where each demonstration ends in the rows (causal LMs read them first); the last one ends
        the rows' first tokens that depend on the demonstrations only, which rows of other inputs with the
        same demonstrations repeat (and with the same first demonstrations, up to those). Empty for masked LMs.
        """
        sb, sa = self.enc.specials_before, self.enc.specials_after
        if self.kind == "mlm":
            room = self.max_length - len(sb) - len(sa) - self.width
            q = self.enc.encode(ex, max_tokens=room, at_start=True)
            demo_ids, ends, dropped = self._fit(demos, room - len(q.before) - len(q.after), first_at_start=False)
            rows = [(sb + q.before + [self.mask_id] * n + q.after + demo_ids + sa, len(sb) + len(q.before))
                    for n in self.groups]
            return rows, [self.groups.index(n) for n in self.verb.lengths], dropped, []  # type: ignore[list-item]
        room = self.max_length - len(sb) - (self.width - 1)
        q = self.enc.encode(ex, max_tokens=room, at_start=not demos or self.after_sep_at_start, causal=True,
                            fresh=bool(demos))
        demo_ids, ends, dropped = self._fit(demos, room - len(q.before) - len(self.sep_ids), first_at_start=True)
        if demos and not ends:  # none fit: the input opens the row after all
            q = self.enc.encode(ex, max_tokens=room, at_start=True, causal=True)
        prefix = sb + demo_ids + (self.sep_ids if ends and self.sep_ids else []) + q.before
        # The last level takes the separator before the input along: it is the same for every input.
        bounds = [len(sb) + e for e in ends[:-1]] + [len(prefix) - len(q.before)] if ends else []
        if self.single:
            return [(prefix, len(prefix) - 1)], [0] * self.verb.num_words, dropped, bounds
        # Teacher forcing: the word's own tokens (but its last) follow the prefix; words that need the
        # same input (all one-token words, say) share one row.
        inputs: dict[tuple[int, ...], int] = {}
        offsets = [inputs.setdefault(tuple(ids[:-1]), len(inputs)) for ids in self.verb.word_ids]
        rows = [(prefix + list(extra), len(prefix) - 1) for extra in inputs]
        return rows, offsets, dropped, bounds

    def eval_lengths(self, examples: Sequence[Example]) -> list[int]:
        """Each example's longest evaluation row in tokens: the engine's sort key for length-grouped batches.

        With demonstrations the prompt's length is mostly theirs, not the input's, so sorting by the input
        text pads far more (measured on SST-2 ICL, k=4: 36% more tokens than sorting by these lengths).
        """
        samples = 1 if self.sampler is None or not self.sampler.per_class else self.eval_samples
        if self.sampler is not None:
            self.sampler.prepare(examples)
        out = []
        for ex in examples:
            longest = 0
            for s in range(samples):
                demos = self.sampler.sample(ex, s) if self.sampler is not None else []
                rows, _, _, _ = self.unit_rows(ex, demos)
                longest = max(longest, *(len(ids) for ids, _ in rows))
            out.append(longest)
        return out

    # -- a batch ------------------------------------------------------------------------------------
    def __call__(self, examples: Sequence[Example]) -> Batch:
        training = self.is_training()
        samples = 1 if training or self.sampler is None or not self.sampler.per_class else self.eval_samples
        if self.sampler is not None:
            self.sampler.prepare(examples)
        rows: list[tuple[list[int], int]] = []
        shared: list[list[int]] = []  # per row: where its demonstrations end (only they decide those tokens)
        word_rows: list[list[int]] = []
        # Calibration: one content-free unit per distinct demonstration set, rows placed after the real ones.
        prior_units: dict[tuple, int] = {}
        prior_parts: list[tuple[list[tuple[list[int], int]], list[int], list[int]]] = []
        prior_index: list[int] = []
        for ex in examples:
            for s in range(samples):
                demos: list[Example] = []
                if self.sampler is not None:
                    # Training draws fresh demonstrations each step (seeded by the engine's step seed).
                    draw = f"t{int(torch.randint(0, 2**31 - 1, ()).item())}" if training else s
                    demos = self.sampler.sample(ex, draw)
                unit, offsets, dropped, common = self.unit_rows(ex, demos)
                self.drops.add(ex, [self.verb.label_names[self.demo_label(d)] for d in dropped], len(demos))
                word_rows.append([len(rows) + o for o in offsets])
                rows += unit
                shared += [common] * len(unit)
                if self.calibrate:
                    key = tuple((d.text_a, d.text_b, d.label) for d in demos)
                    if key not in prior_units:
                        prior_units[key] = len(prior_parts)
                        cf_unit, cf_offsets, _, cf_common = self.unit_rows(self.content_free, demos)
                        prior_parts.append((cf_unit, cf_offsets, cf_common))
                    prior_index.append(prior_units[key])
        self.drops.flush(len(examples))
        prior_rows: list[list[int]] = []
        for cf_unit, cf_offsets, cf_common in prior_parts:
            prior_rows.append([len(rows) + o for o in cf_offsets])
            rows += cf_unit
            shared += [cf_common] * len(cf_unit)
        batch = self._pad(rows)
        if self.marks_prefixes and not training and any(shared):  # PromptModel.inference_scope may reuse them
            levels = max(map(len, shared))
            batch["prefix_bounds"] = torch.tensor([b + [0] * (levels - len(b)) for b in shared], dtype=torch.long)
        batch["word_rows"] = torch.tensor(word_rows, dtype=torch.long)
        batch["n_samples"] = torch.tensor(samples, dtype=torch.long)
        if self.calibrate:
            batch["prior_rows"] = torch.tensor(prior_rows, dtype=torch.long)
            batch["prior_index"] = torch.tensor(prior_index, dtype=torch.long)
        return batch

    def _pad(self, rows: list[tuple[list[int], int]]) -> Batch:
        return pad_rows(rows, self.pad_id, self.width)


def pad_rows(rows: list[tuple[list[int], int]], pad_id: int, width: int = 1) -> Batch:
    """Dynamic padding (right side) to the longest row of this batch, plus ``width`` answer positions per row."""
    longest = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (seq, at) in enumerate(rows):
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
        pos[r] = torch.clamp(at + torch.arange(width), max=len(seq) - 1)
    return {"input_ids": ids, "attention_mask": mask, "positions": pos}


def slot_batch(enc: TemplateEncoder, kind: str, examples: Sequence[Example], *, max_length: int, pad_id: int,
               mask_id: int | None) -> Batch:
    """Prompts with a one-token answer slot and no demonstrations (for reading the whole vocabulary there)."""
    sb, sa = enc.specials_before, enc.specials_after
    rows = []
    for ex in examples:
        if kind == "mlm":
            q = enc.encode(ex, max_tokens=max_length - len(sb) - len(sa) - 1)
            rows.append((sb + q.before + [mask_id] + q.after + sa, len(sb) + len(q.before)))
        else:
            q = enc.encode(ex, max_tokens=max_length - len(sb), causal=True)
            rows.append((sb + q.before, len(sb) + len(q.before) - 1))
    return pad_rows(rows, pad_id)
