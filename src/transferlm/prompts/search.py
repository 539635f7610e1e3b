"""Automatic prompts (LM-BFF, Gao et al. 2021): label words (slide 21) and templates (slide 22).

Label words, for a fixed template: for each class c, the top-k vocabulary words v by
sum_{x in D_train^c} log P([answer] = v | T(x)) under the initial LM; then assignments (one word per
class, all distinct) are pruned to the top n by zero-shot accuracy (the task metric) on the ranking
split, dev by default (LM-BFF ranks on train; ``rank_on="train"`` does that). Fine-tuning each
survivor and keeping the best on dev is ``search labels --auto``.

Templates, for fixed label words: T5 fills the spans around the label word
(``<S1> <X> word <Y>`` -> ``{sentence} X {answer} Y``), candidates pooled over the training examples;
without a T5, a built-in pool of patterns. Candidates are ranked by zero-shot dev accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.example import Example
from ..data.tasks import TaskSpec
from ..errors import ConfigError
from ..evaluation.metrics import compute_metrics
from .build import lm_kind
from .inputs import slot_batch
from .model import PromptModel
from .template import Template, TemplateEncoder
from .verbalizer import Verbalizer, normalize_label_words


class SlotReader:
    """Log-probabilities over the whole vocabulary at a template's (one-token) answer slot."""

    def __init__(self, backbone: Any, *, max_length: int = 128, batch_size: int = 32) -> None:
        self.backbone, self.kind = backbone, lm_kind(backbone)
        self.max_length, self.batch_size = max_length, batch_size
        self.model = PromptModel(backbone.model, None)

    @torch.no_grad()
    def logprobs(self, template: Template, examples: Sequence[Example]) -> torch.Tensor:
        tok = self.backbone.tokenizer
        enc = TemplateEncoder(template, tok)
        self.model.eval()
        out = []
        for i in range(0, len(examples), self.batch_size):
            b = slot_batch(enc, self.kind, examples[i:i + self.batch_size], max_length=self.max_length,
                           pad_id=tok.pad_token_id, mask_id=tok.mask_token_id)
            out.append(self.model.answer_logits(**b)[:, 0].float().log_softmax(-1))
        return torch.cat(out)

    def close(self) -> None:
        self.model.remove_hook()


def candidate_words(tokenizer: Any, enc: TemplateEncoder) -> dict[int, str]:
    """Vocabulary entries that are whole alphabetic words and come back as that one token in the slot."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    decoded = tokenizer.batch_decode([[i] for i in ids])
    words = {i: w.strip() for i, w in zip(ids, decoded, strict=True) if len(w.strip()) > 1 and w.strip().isalpha()}
    ids, texts = list(words), list(words.values())
    if enc.space_before_answer or not enc.glues:
        prefix = " " if enc.space_before_answer else ""
        encoded = tokenizer([prefix + t for t in texts], add_special_tokens=False)["input_ids"]
    else:  # a dummy-prefix tokenizer and a slot right after text: the word as the verbalizer will read it
        encoded = [enc.word_ids(t) for t in texts]
    return {i: t for i, t, e in zip(ids, texts, encoded, strict=True) if list(e) == [i]}


def _score(metric: str, labels: np.ndarray, preds: np.ndarray, num_labels: int) -> float:
    if metric == "accuracy":
        return float((labels == preds).mean())
    return float(compute_metrics(labels.tolist(), preds, regression=False, primary=metric,
                                 num_labels=num_labels)[metric])


def search_label_words(backbone: Any, spec: TaskSpec, template: Template, train: Sequence[Example],
                       rank: Sequence[Example], *, k: int = 10, n: int = 10, beam: int = 1000,
                       max_length: int = 128, reader: SlotReader | None = None) -> dict[str, Any]:
    """LM-BFF's automatic label words for ``template``; ``rank`` is the split assignments are ranked on."""
    if spec.regression:
        raise ConfigError("label-word search is for classification tasks (regression uses two fixed poles)")
    if not rank:
        raise ConfigError("label-word search ranks assignments on a split that is empty here; use a task with a "
                          "dev split (or --dev-file)")
    own = reader is None
    reader = reader or SlotReader(backbone, max_length=max_length)
    try:
        enc = TemplateEncoder(template, backbone.tokenizer)
        cands = candidate_words(backbone.tokenizer, enc)
        if not cands:
            raise ConfigError("no vocabulary entry is a whole word in the answer slot of this template")
        lp_train = reader.logprobs(template, train)
        lp_rank = reader.logprobs(template, rank) if rank is not train else lp_train
    finally:
        if own:
            reader.close()
    allowed = torch.full((lp_train.shape[1],), float("-inf"))
    allowed[list(cands)] = 0.0
    y = np.array([int(e.label) for e in train])  # type: ignore[arg-type]
    names = list(spec.label_names or spec.labels)
    per_class, top_ids = {}, []
    for c in range(spec.num_labels):
        if not (y == c).any():
            raise ConfigError(f"label-word search: class '{names[c]}' has no training example")
        total = lp_train[torch.from_numpy(y == c)].sum(0) + allowed  # the slide-21 objective
        scores, ids = total.topk(min(k, len(cands)))
        top_ids.append(ids.tolist())
        per_class[names[c]] = [{"word": cands[i], "token_id": i, "logprob_sum": round(float(s), 4)}
                               for i, s in zip(ids.tolist(), scores.tolist(), strict=True)]
    assignments = rank_assignments(lp_rank, np.array([int(e.label) for e in rank]), top_ids,  # type: ignore[arg-type]
                                   metric=spec.metric, n=n, beam=beam)
    return {"template": template.source, "k": k, "n": n, "metric": spec.metric, "per_class": per_class,
            "assignments": [{"label_words": {lab: cands[i] for lab, i in zip(spec.labels, a, strict=True)},
                             "zero_shot": round(s, 4)} for a, s in assignments]}


def rank_assignments(logprobs: torch.Tensor, labels: np.ndarray, top_ids: list[list[int]], *, metric: str,
                     n: int, beam: int) -> list[tuple[tuple[int, ...], float]]:
    """Beam search over one word per class (distinct), scored by zero-shot predictions with those words.

    A partial assignment (classes 0..c) is scored on the examples of those classes, predicting
    among its words only (LM-BFF's pruning); complete ones by the task metric.
    """
    lp = logprobs.numpy()
    beams: list[tuple[int, ...]] = [()]
    for c, ids in enumerate(top_ids):
        grown = [b + (i,) for b in beams for i in ids if i not in b]
        if c < len(top_ids) - 1:
            seen = labels <= c
            def partial(a: tuple[int, ...], seen: np.ndarray = seen) -> float:
                return float((lp[seen][:, list(a)].argmax(1) == labels[seen]).mean()) if seen.any() else 0.0
            grown.sort(key=partial, reverse=True)  # stable: ties keep the log-prob order of the words
            beams = grown[:beam]
        else:
            beams = grown
    scored = [(a, _score(metric, labels, lp[:, list(a)].argmax(1), len(top_ids))) for a in beams]
    scored.sort(key=lambda t: t[1], reverse=True)
    return scored[:n]


# -- templates ------------------------------------------------------------------------------------------
POOL_SINGLE = ["{sentence} It was {answer}.", "{sentence} It is {answer}.", "{sentence} A {answer} one.",
               "{sentence} A {answer} piece.", "{sentence} All in all {answer}.", "{sentence} This is {answer}.",
               "{sentence} That is {answer}.", "{sentence} It's {answer}!", "{sentence} Overall, it was {answer}.",
               "{sentence} In summary, it was {answer}.", "It was {answer}! {sentence}", "{answer}: {sentence}"]
POOL_PAIR = ["{sentence1} ? {answer} , {sentence2}", "{sentence1} . {answer} , {sentence2}",
             "{sentence1} ? {answer} {sentence2}", "{sentence1} {sentence2} {answer}",
             "{sentence1|no_punct}? {answer}, {sentence2|lower_first}", "{sentence2} ? {answer} , {sentence1}",
             "{sentence1} Question: {sentence2} Answer: {answer}", "{sentence1} {sentence2} Right? {answer}"]


def pool_templates(is_pair: bool) -> list[str]:
    return list(POOL_PAIR if is_pair else POOL_SINGLE)


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@torch.no_grad()
def t5_templates(t5: Any, t5_tokenizer: Any, examples: Sequence[Example], words: Sequence[str], *,
                 is_pair: bool, beams: int = 5, max_new_tokens: int = 16, top: int = 20) -> list[str]:
    """LM-BFF's template generation: T5 fills <X> and <Y> around the label word of each example.

    Each example proposes its ``beams`` best fillings; a candidate's score is its probability summed
    over examples (LM-BFF decodes one beam jointly over all examples; this pools per-example beams).
    """
    s0, s1 = "<extra_id_0>", "<extra_id_1>"
    forms = ([("{sentence1} ", " {sentence2}")] if is_pair else [("{sentence} ", ""), ("", " {sentence}")])
    scores: dict[str, float] = {}
    t5.eval()
    limit = 256

    def cut(text: str, n: int) -> str:
        ids = t5_tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= n else t5_tokenizer.decode(ids[:n], skip_special_tokens=True)

    for ex in examples:
        word = words[int(ex.label)]  # type: ignore[arg-type]
        middle = f"{s0} {word} {s1}"
        # Long inputs are cut, never the sentinels around the label word (right-truncating the whole text
        # would drop them when an input follows, or after a long first input).
        room = max(1, (limit - len(t5_tokenizer(middle)["input_ids"])) // (2 if is_pair else 1))
        a, b = cut(ex.text_a, room), cut(ex.text_b or "", room)
        for before, after in forms:
            text = middle
            if before:
                text = f"{a} {text}"
            if is_pair:
                text = f"{text} {b}"
            elif after:
                text = f"{text} {a}"
            enc = t5_tokenizer(text, return_tensors="pt", truncation=True, max_length=limit)
            out = t5.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], num_beams=beams, num_return_sequences=beams, max_new_tokens=max_new_tokens,
                              output_scores=True, return_dict_in_generate=True, early_stopping=True)
            seq_scores = out.sequences_scores.exp().tolist() if out.sequences_scores is not None else [1.0] * beams
            for seq, p in zip(out.sequences, seq_scores, strict=True):
                decoded = t5_tokenizer.decode(seq, skip_special_tokens=False)
                x, y = _spans(decoded, t5_tokenizer)
                tpl = f"{before}{_escape(x)} {{answer}} {_escape(y)}{after}"
                tpl = re.sub(r"\s+", " ", tpl).strip()
                scores[tpl] = scores.get(tpl, 0.0) + p
    return [t for t, _ in sorted(scores.items(), key=lambda kv: -kv[1])][:top]


def _spans(decoded: str, tokenizer: Any) -> tuple[str, str]:
    """"<pad> <extra_id_0> X <extra_id_1> Y <extra_id_2> ..." -> (X, Y); lenient with a model that skips sentinels."""
    for t in (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, getattr(tokenizer, "cls_token", None),
              getattr(tokenizer, "sep_token", None)):
        if t:
            decoded = decoded.replace(t, " ")
    parts = [p.strip() for p in re.split(r"<extra_id_\d+>", decoded)]
    parts = parts[1:] if len(parts) > 1 and not parts[0] else parts
    return (parts[0] if parts else ""), (parts[1] if len(parts) > 1 else "")


def search_templates(backbone: Any, spec: TaskSpec, label_words: object, candidates: Sequence[str],
                     rank: Sequence[Example], *, max_length: int = 128) -> list[dict[str, Any]]:
    """Rank template candidates by zero-shot ``rank``-split score with ``label_words``.

    Candidates that cannot be scored (an input after the answer slot for a causal LM, label words of several
    tokens) are skipped; where none is left, a ConfigError says why.
    """
    if not rank:
        raise ConfigError("template search ranks candidates on a split that is empty here; use a task with a "
                          "dev split (or --dev-file)")
    kind = lm_kind(backbone)
    tok = backbone.tokenizer
    names = list(spec.label_names or spec.labels)
    words = normalize_label_words(label_words, spec.labels, names)
    labels = np.array([int(e.label) for e in rank])  # type: ignore[arg-type]
    reader = SlotReader(backbone, max_length=max_length)
    ranked, seen = [], set()
    skipped: dict[str, int] = {}  # why candidates were skipped (the first reason of each kind), and how many
    try:
        for text in candidates:
            if text in seen:
                continue
            seen.add(text)
            try:
                tpl = Template.parse(text).validate_for(spec.is_pair, causal=kind == "causal")
                verb = Verbalizer(words, TemplateEncoder(tpl, tok).word_ids, label_names=names,
                                  unk_token_id=tok.unk_token_id,
                                  special_ids=tok.all_special_ids)
            except ConfigError as e:  # e.g. an input after the answer slot, for a causal LM
                _count(skipped, str(e))
                continue
            if verb.max_tokens > 1:  # the slot reader scores one-token words only
                long = [w for w, n in zip((w for ws in verb.words for w in ws), verb.lengths, strict=True) if n > 1]
                _count(skipped, f"label word(s) {', '.join(map(repr, long))} are several tokens for this model, "
                                "and template search scores one-token words only; choose one-token label words "
                                "(`transferlm search labels` finds them)")
                continue
            lp = reader.logprobs(tpl, rank)
            rows = torch.arange(len(rank))[:, None].expand(-1, verb.num_words)
            preds = verb(lp[:, None, :], rows).argmax(-1).numpy()
            ranked.append({"template": tpl.source, "zero_shot": round(_score(spec.metric, labels, preds, spec.num_labels), 4)})
    finally:
        reader.close()
    if not ranked and skipped:
        raise ConfigError(f"template search: none of the {len(seen)} candidates could be scored: "
                          + "; ".join(f"{n}× {why}" for why, n in skipped.items()))
    ranked.sort(key=lambda r: r["zero_shot"], reverse=True)
    return ranked


def _count(reasons: dict[str, int], why: str) -> None:
    reasons[why] = reasons.get(why, 0) + 1
