"""Templates: parsing, validation, rendering (answer slot exactly where written), input-only truncation."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferlm.data.example import Example
from transferlm.data.tasks import TASKS
from transferlm.errors import ConfigError
from transferlm.models.loading import load_backbone
from transferlm.prompts.defaults import DEFAULTS
from transferlm.prompts.template import Template, TemplateEncoder, from_lmbff

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert_tok(tiny_mlm: Path):
    return load_backbone(str(tiny_mlm), head="mlm").tokenizer


@pytest.mark.parametrize("text, message", [
    ("{sentence} It was great.", "no answer slot"),
    ("{sentence} {answer} and {answer}", "more than one answer slot"),
    ("{sentence} {label} was {answer}", "unknown slot {label}"),
    ("{sentence} It was {answer", "unbalanced"),
    ("It was {answer}.", "no input slot"),
    ("{sentence|shout} {answer}", "bad filter"),
    ("   ", "empty"),
])
def test_bad_templates_are_one_line_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        Template.parse(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_template_must_match_the_task_and_the_lm() -> None:
    with pytest.raises(ConfigError, match="drops the second sentence"):
        Template.parse("{sentence} It was {answer}.").validate_for(is_pair=True)
    with pytest.raises(ConfigError, match="one sentence"):
        Template.parse("{sentence1} ? {answer} , {sentence2}").validate_for(is_pair=False)
    pair = Template.parse("{sentence1} ? {answer} , {sentence2}")
    pair.validate_for(is_pair=True)  # fine for a masked LM
    with pytest.raises(ConfigError, match="causal LM"):
        pair.validate_for(is_pair=True, causal=True)
    assert Template.parse("{sentence1} {sentence2} Answer: {answer}.").validate_for(True, causal=True)


def test_literal_braces_and_filters() -> None:
    t = Template.parse("{{x}} {sentence1|no_punct}? {answer}, {sentence2|lower_first}")
    assert t.fill(Example("A cat sat.", "The dog ran."), "Yes") == "{x} A cat sat? Yes, the dog ran."


def test_rendered_mlm_prompt_has_the_mask_exactly_where_the_template_says(bert_tok) -> None:
    enc = TemplateEncoder(Template.parse("{sentence} it was {answer} . fun"), bert_tok)
    q = enc.encode(Example("good movie"), max_tokens=50)
    tokens = bert_tok.convert_ids_to_tokens
    assert tokens(q.before) == ["good", "movie", "it", "was"]
    assert tokens(q.after) == [".", "fun"]
    assert tokens(enc.specials_before) == ["[CLS]"] and tokens(enc.specials_after) == ["[SEP]"]
    # The answer slot at the very start and in the middle of a pair template.
    enc2 = TemplateEncoder(Template.parse("{answer} ! {sentence}"), bert_tok)
    q2 = enc2.encode(Example("a cat"), max_tokens=50)
    assert q2.before == [] and tokens(q2.after) == ["!", "a", "cat"]
    enc3 = TemplateEncoder(Template.parse("{sentence1} ? {answer} , {sentence2}"), bert_tok)
    q3 = enc3.encode(Example("a cat", "the dog"), max_tokens=50)
    assert tokens(q3.before) == ["a", "cat", "?"] and tokens(q3.after) == [",", "the", "dog"]


def test_truncation_cuts_inputs_never_the_template(bert_tok) -> None:
    enc = TemplateEncoder(Template.parse("{sentence} it was {answer} ."), bert_tok)
    long = Example(" ".join(["good movie"] * 30))
    q = enc.encode(long, max_tokens=10)
    tokens = bert_tok.convert_ids_to_tokens
    assert len(q.before) + len(q.after) == 10
    assert tokens(q.before)[-2:] == ["it", "was"] and tokens(q.after) == ["."]
    assert tokens(q.before)[:2] == ["good", "movie"]  # the input keeps its start
    # Pairs: longest first, so the short sentence survives whole.
    pair = TemplateEncoder(Template.parse("{sentence1} ? {answer} , {sentence2}"), bert_tok)
    q = pair.encode(Example(" ".join(["bad"] * 40), "a cat"), max_tokens=12)
    assert tokens(q.after) == [",", "a", "cat"] and tokens(q.before).count("bad") == 12 - 2 - 2
    with pytest.raises(ConfigError, match="needs 3 tokens of its own and at least one per input, 4 in all, more "
                                          "than the 3 that train.max_length leaves"):
        enc.encode(long, max_tokens=3)


def test_a_demonstration_cap_too_small_for_the_template_names_that_cap(bpe_tok) -> None:
    from transferlm.prompts.demonstrations import DemoSampler
    from transferlm.prompts.inputs import PromptCollator
    from transferlm.prompts.verbalizer import Verbalizer

    enc = TemplateEncoder(Template.parse("{sentence} It was {answer}."), bpe_tok)
    verb = Verbalizer([["terrible"], ["great"]], enc.word_ids, label_names=["neg", "pos"])
    collate = PromptCollator(enc, verb, kind="causal", max_length=64, pad_id=0, demo_max_tokens=4,
                             sampler=DemoSampler([Example("bad film", label=0)], num_labels=2, k=1))
    with pytest.raises(ConfigError, match="that method_args.demo_max_tokens leaves for it; shorten the template "
                                          "or raise method_args.demo_max_tokens"):
        collate([Example("good movie")])


def test_lmbff_templates_translate_and_every_default_parses() -> None:
    assert from_lmbff("*cls**sent_0*_It_was*mask*.*sep+*") == "{sentence} It was {answer}."
    assert (from_lmbff("*cls**sent-_0*?*mask*,*+sentl_1**sep+*", is_pair=True)
            == "{sentence1|no_punct}? {answer}, {sentence2|lower_first}")
    assert from_lmbff("*cls**mask*:*+sent_0**sep+*") == "{answer}: {sentence}"
    assert DEFAULTS["SST-2"].mapping == {"0": "terrible", "1": "great"}
    assert DEFAULTS["MNLI"].mapping == {"contradiction": "No", "entailment": "Yes", "neutral": "Maybe"}
    for name, d in DEFAULTS.items():
        spec = TASKS[name]
        for causal in (False, True):
            Template.parse(d.template(spec.is_pair, causal)).validate_for(spec.is_pair, causal)
        if not spec.regression:
            assert set(d.mapping) == set(spec.labels), name


@pytest.fixture(scope="module")
def bpe_tok():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["good movie It was great.\nbad film It was terrible.", "a cat? Yes, the dog"] * 20,
                            vocab_size=300, min_frequency=1, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    tok.pad_token = tok.eos_token = tok.convert_ids_to_tokens(0)
    return tok


def test_piecewise_rendering_matches_whole_text_tokenisation_for_byte_level_bpe(bpe_tok) -> None:
    # Byte-level BPE (SmolLM2, Qwen) marks a leading space in the token ("Ġgreat" != "great"): the
    # prompt built piece by piece must equal the tokenisation of the whole filled text.
    tok = bpe_tok
    whole = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for template, ex, word, text in [
        ("{sentence} It was {answer}.", Example("good movie"), "great", "good movie It was great."),
        ("{sentence1|no_punct}? {answer}, {sentence2|lower_first}", Example("a cat.", "The dog"), "Yes",
         "a cat? Yes, the dog"),
        # Whitespace other than one space is template text, kept as written: newlines between the slots,
        # and no space before an answer that starts its own line.
        ("Review: {sentence}\n\nIt was:\n{answer}.", Example("good movie"), "great",
         "Review: good movie\n\nIt was:\ngreat."),
        ("{sentence}\n{answer}", Example("bad film"), "terrible", "bad film\nterrible"),
        ("{sentence}  It was {answer}.", Example("good movie"), "great", "good movie  It was great."),
    ]:
        enc = TemplateEncoder(Template.parse(template), tok)
        q = enc.encode(ex, max_tokens=50)
        assert q.before + enc.word_ids(word) + q.after == whole(text), template
        # A causal LM reads the prefix only, and the label word is its continuation.
        causal = enc.encode(ex, max_tokens=50, causal=True)
        assert causal.before == q.before and causal.after == []


def test_label_words_take_a_leading_space_unless_the_template_says_otherwise(bpe_tok) -> None:
    ids = lambda text: bpe_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for template, spaced in [("{answer}: {sentence}", True),  # LM-BFF's trec: the slot opens the template
                             ("{sentence} It was {answer}.", True), ("{sentence}\n{answer}", False),
                             ("{sentence} It was:{answer}", False)]:
        enc = TemplateEncoder(Template.parse(template), bpe_tok)
        assert enc.word_ids("great") == ids(" great" if spaced else "great"), template
    assert ids(" great") != ids("great")  # the check above can tell them apart


def test_causal_demonstrations_render_like_the_whole_text(bpe_tok) -> None:
    from transferlm.prompts.demonstrations import DemoSampler
    from transferlm.prompts.inputs import PromptCollator
    from transferlm.prompts.verbalizer import Verbalizer

    enc = TemplateEncoder(Template.parse("{sentence} It was {answer}."), bpe_tok)
    verb = Verbalizer([["terrible"], ["great"]], enc.word_ids, label_names=["neg", "pos"])
    pool = [Example("bad film", label=0)]
    collate = PromptCollator(enc, verb, kind="causal", max_length=64, pad_id=0,
                             sampler=DemoSampler(pool, num_labels=2, k=1))
    batch = collate([Example("good movie")])
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert row == bpe_tok("bad film It was terrible.\ngood movie It was", add_special_tokens=False)["input_ids"]
    assert int(batch["positions"][0, 0]) == len(row) - 1


@pytest.mark.parametrize("sep, text", [
    (" | ", "bad film It was terrible. | good movie It was"),  # the spaces around "|" stay
    ("| ", "bad film It was terrible.| good movie It was"),
    ("\n\n", "bad film It was terrible.\n\ngood movie It was"),
])
def test_a_written_demonstration_separator_renders_like_the_whole_text(bpe_tok, sep: str, text: str) -> None:
    from transferlm.prompts.demonstrations import DemoSampler
    from transferlm.prompts.inputs import PromptCollator
    from transferlm.prompts.verbalizer import Verbalizer

    enc = TemplateEncoder(Template.parse("{sentence} It was {answer}."), bpe_tok)
    verb = Verbalizer([["terrible"], ["great"]], enc.word_ids, label_names=["neg", "pos"])
    collate = PromptCollator(enc, verb, kind="causal", max_length=64, pad_id=0, demo_separator=sep,
                             sampler=DemoSampler([Example("bad film", label=0)], num_labels=2, k=1))
    batch = collate([Example("good movie")])
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert row == bpe_tok(text, add_special_tokens=False)["input_ids"]


def test_a_template_opening_with_text_keeps_the_space_after_a_blank_separator(bpe_tok) -> None:
    from transferlm.prompts.demonstrations import DemoSampler
    from transferlm.prompts.inputs import PromptCollator
    from transferlm.prompts.verbalizer import Verbalizer

    ids = lambda text: bpe_tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    sampler = DemoSampler([Example("bad film", label=0)], num_labels=2, k=1)
    # Causal: "... terrible. Review: good movie", not "... terrible.Review: ...".
    enc = TemplateEncoder(Template.parse("Review: {sentence} It was {answer}."), bpe_tok)
    verb = Verbalizer([["terrible"], ["great"]], enc.word_ids, label_names=["neg", "pos"])
    collate = PromptCollator(enc, verb, kind="causal", max_length=64, pad_id=0, demo_separator=" ", sampler=sampler)
    batch = collate([Example("good movie")])
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert row == ids("Review: bad film It was terrible. Review: good movie It was")
    # Masked LM (blank separator by default): the demonstration after the input opens with " It", not "It".
    enc = TemplateEncoder(Template.parse("It was {answer}! {sentence}"), bpe_tok)
    verb = Verbalizer([["terrible"], ["great"]], enc.word_ids, label_names=["neg", "pos"])
    collate = PromptCollator(enc, verb, kind="mlm", max_length=64, pad_id=0, mask_id=1, sampler=sampler)
    batch = collate([Example("good movie")])
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    demo = ids(" It was terrible! bad film")
    assert row[-len(demo):] == demo and row[:-len(demo)] == ids("It was") + [1] + ids("! good movie")


@pytest.fixture(scope="module")
def dummy_prefix_tok():
    """A SentencePiece-style tokenizer (Llama 2, Mistral, T5): a "▁" before any text it is given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    t.train_from_iterator(["good movie It was great . \n bad film It was terrible . a cat ? Yes , the dog"] * 20,
                          trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"],
                                              initial_alphabet=list("\n.?,"), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.pad_token = "</s>"
    return tok


def test_piecewise_rendering_matches_whole_text_for_a_tokenizer_with_a_dummy_prefix(dummy_prefix_tok) -> None:
    from transferlm.prompts.demonstrations import DemoSampler
    from transferlm.prompts.inputs import PromptCollator
    from transferlm.prompts.verbalizer import Verbalizer

    tok = dummy_prefix_tok
    whole = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert whole(".") != whole("good.")[-1:]  # alone "▁.", after a word "." : the case at hand
    for template, ex, word, text in [
        ("{sentence} It was {answer}.", Example("good movie"), "great", "good movie It was great."),
        ("{sentence1|no_punct}? {answer}, {sentence2|lower_first}", Example("a cat.", "The dog"), "Yes",
         "a cat? Yes, the dog"),
        ("{sentence}\n{answer}", Example("bad film"), "terrible", "bad film\nterrible"),
    ]:
        enc = TemplateEncoder(Template.parse(template), tok)
        q = enc.encode(ex, max_tokens=50)
        assert q.before + enc.word_ids(word) + q.after == whole(text), template
    enc = TemplateEncoder(Template.parse("{sentence} It was {answer}."), tok)
    verb = Verbalizer([["terrible"], ["great"]], enc.word_ids, label_names=["neg", "pos"])
    for sep in ("\n", " "):  # after a newline the next demonstration or input has no "▁"
        collate = PromptCollator(enc, verb, kind="causal", max_length=64, pad_id=0, demo_separator=sep,
                                 sampler=DemoSampler([Example("bad film", label=0)], num_labels=2, k=1))
        batch = collate([Example("good movie")])
        row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
        assert row == whole(f"bad film It was terrible.{sep}good movie It was"), repr(sep)


def test_label_search_candidates_are_the_words_the_slot_reads(dummy_prefix_tok) -> None:
    # Label-word search scores one vocabulary entry per candidate: it must be the id the verbalizer reads
    # for that word in the slot, also where the slot follows text directly ("\n{answer}").
    from transferlm.prompts.search import candidate_words

    for template in ("{sentence} It was {answer}.", "{sentence}\n{answer}"):
        enc = TemplateEncoder(Template.parse(template), dummy_prefix_tok)
        cands = candidate_words(dummy_prefix_tok, enc)
        assert cands, template
        assert all(enc.word_ids(word) == [i] for i, word in cands.items()), template
