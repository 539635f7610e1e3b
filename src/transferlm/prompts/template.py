"""Templates: a small readable prompt language, parsed, validated and rendered to token ids.

    "{sentence} It was {answer}."                      one input, answer slot inside the text
    "{sentence1|no_punct}? {answer}, {sentence2|lower_first}"   two inputs, with per-slot filters

Slots: ``{sentence}`` (= ``{sentence1}``), ``{sentence2}``, ``{answer}`` (exactly one). Filters after
``|``: ``no_punct`` drops trailing punctuation, ``lower_first`` lower-cases the first letter (LM-BFF's
``sent-`` and ``sentl`` markers). ``{{`` and ``}}`` are literal braces.

Rendering works on token ids, one segment at a time (as LM-BFF does), so the answer slot's position
is exact and truncation can cut the inputs while the template text and answer slot stay whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data.example import Example
from ..errors import ConfigError

SLOTS = {"sentence": "a", "sentence1": "a", "sentence2": "b", "answer": "answer"}
FILTERS = ("no_punct", "lower_first")
_SLOT = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Segment:
    kind: str  # "text" | "a" | "b" | "answer"
    text: str = ""  # literal text (kind "text")
    filters: tuple[str, ...] = ()


@dataclass(frozen=True)
class Template:
    source: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        if not isinstance(source, str) or not source.strip():
            raise ConfigError("template is empty; write e.g. '{sentence} It was {answer}.'")
        segments: list[Segment] = []
        literal, pos = "", 0
        for m in _SLOT.finditer(source):
            literal += source[pos:m.start()]
            pos = m.end()
            tok = m.group(0)
            if tok in ("{{", "}}"):
                literal += tok[0]
                continue
            if m.group(1) is None:
                raise ConfigError(f"template {source!r}: unbalanced '{tok}' (write '{tok}{tok}' for a literal brace)")
            name, *filters = [p.strip() for p in m.group(1).split("|")]
            if name not in SLOTS:
                raise ConfigError(f"template {source!r}: unknown slot {{{name}}}; slots are "
                                  f"{', '.join('{' + s + '}' for s in SLOTS)}")
            bad = [f for f in filters if f not in FILTERS]
            if bad or (filters and name == "answer"):
                raise ConfigError(f"template {source!r}: bad filter {'|'.join(bad or filters)!r} on {{{name}}}; "
                                  f"input slots take {', '.join(FILTERS)}")
            if literal:
                segments.append(Segment("text", literal))
                literal = ""
            segments.append(Segment(SLOTS[name], filters=tuple(filters)))
        literal += source[pos:]
        if literal:
            segments.append(Segment("text", literal))
        kinds = [s.kind for s in segments]
        if kinds.count("answer") != 1:
            what = "has no answer slot" if "answer" not in kinds else "has more than one answer slot"
            raise ConfigError(f"template {source!r} {what}; put exactly one {{answer}} where the label word goes")
        if "a" not in kinds:
            raise ConfigError(f"template {source!r} has no input slot; use {{sentence}} (and {{sentence2}} for pairs)")
        return cls(source, tuple(segments))

    @property
    def kinds(self) -> list[str]:
        return [s.kind for s in self.segments]

    @property
    def answer_at_end(self) -> bool:
        """True when no input follows the answer slot (what causal scoring needs)."""
        after = self.kinds[self.kinds.index("answer") + 1:]
        return "a" not in after and "b" not in after

    def validate_for(self, is_pair: bool, causal: bool = False) -> Template:
        uses_b = "b" in self.kinds
        if is_pair and not uses_b:
            raise ConfigError(f"template {self.source!r} drops the second sentence of a pair task; add {{sentence2}}")
        if not is_pair and uses_b:
            raise ConfigError(f"template {self.source!r} uses {{sentence2}} but the task has one sentence")
        if causal and not self.answer_at_end:
            raise ConfigError(f"template {self.source!r}: a causal LM predicts the answer as the next token, so no "
                              "input may follow {answer}; move {answer} to the end, e.g. "
                              "'{sentence1} Question: {sentence2} Answer: {answer}'")
        return self

    def fill(self, example: Example, answer: str) -> str:
        """The prompt as readable text (for logs, reports and the T5 template search)."""
        parts = []
        for s in self.segments:
            if s.kind == "text":
                parts.append(s.text)
            elif s.kind == "answer":
                parts.append(answer)
            else:
                parts.append(apply_filters(example.text_a if s.kind == "a" else example.text_b or "", s.filters))
        return "".join(parts)


def apply_filters(text: str, filters: Sequence[str]) -> str:
    text = text.strip()
    for f in filters:
        if f == "no_punct":
            text = text.rstrip(".?!,;: ")
        elif f == "lower_first" and text:
            text = text[0].lower() + text[1:]
    return text


def from_lmbff(template: str, is_pair: bool = False) -> str:
    """Translate LM-BFF's template syntax (``*cls**sent_0*_It_was*mask*.*sep+*``) into ours."""
    out = []
    for part in re.split(r"(\*[^*]*\*)", template):
        if not part:
            continue
        if not (part.startswith("*") and part.endswith("*")) or len(part) < 2:
            out.append(part.replace("_", " "))
            continue
        name = part[1:-1]
        if name in ("cls", "sep", "sep+", "cls+"):
            continue
        if name == "mask":
            # LM-BFF encodes label words with a leading space wherever the mask sits.
            if out and not out[-1].endswith(" "):
                out.append(" ")
            out.append("{answer}")
            continue
        m = re.fullmatch(r"(\+?)sent(-?)(l?)(-?)_(\d)", name)
        if not m:
            raise ConfigError(f"LM-BFF template {template!r}: unsupported part {part!r}")
        space, minus1, lower, minus2, idx = m.groups()
        slot = "sentence2" if idx == "1" else ("sentence1" if is_pair else "sentence")
        filters = (["no_punct"] if minus1 or minus2 else []) + (["lower_first"] if lower else [])
        out.append((" " if space else "") + "{" + "|".join([slot, *filters]) + "}")
    return "".join(out).strip()


@dataclass
class Encoded:
    """One example's prompt pieces as token ids, before demonstrations and special tokens."""

    before: list[int]  # everything up to the answer slot
    after: list[int]  # everything after it (MLM only; causal scoring stops at the slot)
    space_before_answer: bool


class TemplateEncoder:
    """Renders a template with a tokenizer: token ids, answer slot position, input-only truncation."""

    def __init__(self, template: Template, tokenizer: Any) -> None:
        self.template, self.tok = template, tokenizer
        self._cache: dict[tuple[str, bool], list[int]] = {}
        self._anchor: list[int] | None = None
        self._anchor = self._glue_anchor()
        # Tokenisation is cached: each input is tokenised once per run, not once per epoch.
        self._encoded: dict[tuple, Encoded] = {}
        probe = tokenizer("x", add_special_tokens=True)["input_ids"]
        core = tokenizer("x", add_special_tokens=False)["input_ids"]
        # Where the tokenizer puts its special tokens ([CLS] .. [SEP], <s> ..): found by probing,
        # because transformers 5 tokenizers no longer expose build_inputs_with_special_tokens.
        at = _find(probe, core)
        self.specials_before = probe[:at] if at >= 0 else []
        self.specials_after = probe[at + len(core):] if at >= 0 else []
        idx = self.template.kinds.index("answer")
        prev = self.template.segments[idx - 1] if idx else None
        # An answer slot that opens the template also takes a leading space, as LM-BFF encodes every label
        # word (RoBERTa predicts "ĠDescription" after <s> in trec's "*cls**mask*:*+sent_0*"); a masked LM's
        # demonstrations then show it as it reads after the query.
        self.space_before_answer = bool(prev is None or prev.kind != "text" or split_spaces(prev.text)[2])

    def _glue_anchor(self) -> list[int] | None:
        """Tokenizers that put a space before any text they are given (SentencePiece's dummy prefix: "." is
        "▁." on its own but "." after a word) tokenise text that follows something directly after an anchor
        ("\n"), whose ids are then dropped. None for the others (WordPiece, byte-level BPE): nothing to undo."""
        nl, nl_dot = self.ids("\n"), self.ids("\n.")
        return nl if nl and nl_dot[:len(nl)] == nl and nl_dot[len(nl):] != self.ids(".") else None

    @property
    def glues(self) -> bool:
        """Whether text right after other text tokenises differently from text alone (see ``_glue_anchor``)."""
        return self._anchor is not None

    def ids(self, text: str, glued: bool = False) -> list[int]:
        """``text``'s ids; ``glued``: as it reads right after other text (no space of its own in between)."""
        glued = glued and self._anchor is not None and bool(text) and not text.startswith(" ")
        if (text, glued) not in self._cache:
            out = list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []
            if glued:
                full = list(self.tok("\n" + text, add_special_tokens=False)["input_ids"])
                n = len(self._anchor)  # type: ignore[arg-type]
                out = full[n:] if full[:n] == self._anchor else out
            self._cache[(text, glued)] = out
        return self._cache[(text, glued)]

    def word_ids(self, word: str) -> list[int]:
        """A label word's ids as they appear in the answer slot (with a leading space if the slot has one)."""
        if self.space_before_answer:
            return self.ids(" " + word.strip())
        return self.ids(word.strip(), glued=True)

    def _pieces(self, example: Example, at_start: bool, fresh: bool = False) -> list[tuple[str, list[int]]]:
        """(kind, ids) per segment; whitespace before a segment is tokenised with it (BPE's "Ġword")."""
        pieces: list[tuple[str, list[int]]] = []
        pending_space = not at_start
        for seg in self.template.segments:
            if seg.kind == "answer":
                pieces.append(("answer", []))
                pending_space = True
                continue
            if seg.kind == "text":
                # Template text keeps its own spacing: "{answer}." attaches the period, " It was" does not.
                body, lead, trail = split_spaces(seg.text)
            else:
                body = apply_filters(example.text_a if seg.kind == "a" else example.text_b or "", seg.filters)
                lead, trail = pending_space, False
            if body:
                # Nothing before it yet (the answer slot counts: a word will stand there).
                first = not any(kind == "answer" or ids for kind, ids in pieces)
                # Opening text after something (a blank demonstration separator) takes its space, as an input does.
                lead = lead or (first and not at_start)
                spaced = lead and not (first and at_start)
                # Only the row's very first text reads as tokenised alone; the rest follows something.
                pieces.append((seg.kind, self.ids((" " if spaced else "") + body,
                                                  glued=not spaced and not (first and at_start and not fresh))))
            pending_space = trail
        return pieces

    def encode(self, example: Example, *, max_tokens: int, at_start: bool = True, causal: bool = False,
               limit: str = "train.max_length", fresh: bool = False) -> Encoded:
        """Token ids around the answer slot; inputs (never template text) are cut to fit ``max_tokens``.

        ``at_start``: no space before the prompt, either at the row's start or, with ``fresh``, right after a
        separator such as "\n" (the difference matters to tokenizers with a dummy prefix, see ``ids``).
        ``causal``: only the part before the answer slot counts (the LM predicts the answer next).
        ``limit``: the setting that ``max_tokens`` comes from, named in the error when the template cannot fit.
        """
        key = (example.text_a, example.text_b, max_tokens, at_start, causal, fresh)
        if key in self._encoded:
            return self._encoded[key]
        pieces = self._pieces(example, at_start, fresh)
        if causal:
            pieces = pieces[:[k for k, _ in pieces].index("answer") + 1]
        fixed = sum(len(ids) for kind, ids in pieces if kind == "text")
        inputs = [i for i, (kind, _) in enumerate(pieces) if kind in ("a", "b")]
        budget = max_tokens - fixed
        if budget < len(inputs):
            raise ConfigError(f"template {self.template.source!r} needs {fixed} tokens of its own and at least one "
                              f"per input, {fixed + len(inputs)} in all, more than the {max_tokens} that {limit} "
                              f"leaves for it; shorten the template or raise {limit}")
        lengths = [len(pieces[i][1]) for i in inputs]
        # Longest-first: shorten whichever input is longest, one token at a time (keeps their start).
        while sum(lengths) > budget:
            j = max(range(len(lengths)), key=lambda i: lengths[i])
            lengths[j] -= 1
        for i, n in zip(inputs, lengths, strict=True):
            pieces[i] = (pieces[i][0], pieces[i][1][:n])
        cut = [k for k, (kind, _) in enumerate(pieces) if kind == "answer"][0]
        before = [t for _, ids in pieces[:cut] for t in ids]
        after = [t for _, ids in pieces[cut + 1:] for t in ids]
        self._encoded[key] = Encoded(before, after, self.space_before_answer)
        return self._encoded[key]

    def filled(self, example: Example, word_ids: list[int], *, max_tokens: int, at_start: bool,
               limit: str = "train.max_length", fresh: bool = False) -> list[int]:
        """A demonstration: the template with the answer slot holding its label word."""
        enc = self.encode(example, max_tokens=max_tokens - len(word_ids), at_start=at_start, limit=limit,
                          fresh=fresh)
        return enc.before + word_ids + enc.after


def split_spaces(text: str) -> tuple[str, bool, bool]:
    """Template text as (body, one space before, one space after).

    A single space at either edge belongs to the neighbouring word, as BPE tokenises it ("Ġword"); any
    other whitespace ("\n\n", two spaces) is part of the template and tokenised as written.
    """
    if not text.strip():
        return (text, False, False) if text != " " else ("", True, True)
    lead = text.startswith(" ") and not text[1:2].isspace()
    trail = text.endswith(" ") and not text[-2:-1].isspace()
    return text[1 if lead else 0:len(text) - 1 if trail else len(text)], lead, trail


def _find(seq: list[int], sub: list[int]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    return -1
