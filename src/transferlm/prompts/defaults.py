"""Manual prompts for the registered LM-BFF tasks, as in LM-BFF's run_experiment.sh (Gao et al. 2021, Table 1).

Each entry keeps LM-BFF's own template string and mapping verbatim; our template is derived from it
by :func:`template.from_lmbff`, so the two cannot drift apart. Causal LMs predict the answer as the
next token, so where LM-BFF puts an input after the mask we add a causal variant with the answer
last (ours, not LM-BFF's; marked ``causal``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.tasks import TaskSpec
from ..errors import ConfigError
from .template import Template, from_lmbff

_SENT = "*cls**sent_0*_It_was*mask*.*sep+*"
_NLI = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"
_PARA = "*cls**sent_0**mask*,*+sentl_1**sep+*"


@dataclass(frozen=True)
class PromptDefault:
    lmbff_template: str
    mapping: dict[str, str]  # LM-BFF's MAPPING: raw label value -> label word
    causal: str | None = None  # our answer-last variant for causal LMs, where LM-BFF's is not

    def template(self, is_pair: bool, causal: bool) -> str:
        if causal and self.causal:
            return self.causal
        return from_lmbff(self.lmbff_template, is_pair)


_YN_CAUSAL = "{sentence1} Question: {sentence2} Yes or No? Answer: {answer}"
DEFAULTS: dict[str, PromptDefault] = {
    "SST-2": PromptDefault(_SENT, {"0": "terrible", "1": "great"}),
    "sst-5": PromptDefault(_SENT, {"0": "terrible", "1": "bad", "2": "okay", "3": "good", "4": "great"}),
    "mr": PromptDefault(_SENT, {"0": "terrible", "1": "great"}),
    "cr": PromptDefault(_SENT, {"0": "terrible", "1": "great"}),
    "trec": PromptDefault("*cls**mask*:*+sent_0**sep+*",
                          {"0": "Description", "1": "Entity", "2": "Expression", "3": "Human", "4": "Location",
                           "5": "Number"},
                          causal="{sentence} Answer type: {answer}"),
    "CoLA": PromptDefault("*cls**sent_0*_This_is*mask*.*sep+*", {"0": "incorrect", "1": "correct"}),
    "MNLI": PromptDefault(_NLI, {"contradiction": "No", "entailment": "Yes", "neutral": "Maybe"},
                          causal="{sentence1} Question: {sentence2} Yes, No or Maybe? Answer: {answer}"),
    "SNLI": PromptDefault(_NLI, {"contradiction": "No", "entailment": "Yes", "neutral": "Maybe"},
                          causal="{sentence1} Question: {sentence2} Yes, No or Maybe? Answer: {answer}"),
    "QNLI": PromptDefault(_NLI, {"not_entailment": "No", "entailment": "Yes"}, causal=_YN_CAUSAL),
    "RTE": PromptDefault(_NLI, {"not_entailment": "No", "entailment": "Yes"}, causal=_YN_CAUSAL),
    "MRPC": PromptDefault(_PARA, {"0": "No", "1": "Yes"},
                          causal="{sentence1} Question: Does it mean the same as: {sentence2} Answer: {answer}"),
    "QQP": PromptDefault(_PARA, {"0": "No", "1": "Yes"},
                         causal="{sentence1} Question: Is it the same question as: {sentence2} Answer: {answer}"),
    # Regression: LM-BFF's two poles, 0 -> "No" and 5 -> "Yes"; the prediction is the expected value.
    "STS-B": PromptDefault(_PARA, {"0": "No", "1": "Yes"},
                           causal="{sentence1} Question: Does it mean the same as: {sentence2} Answer: {answer}"),
}


def get_default(task: str) -> PromptDefault | None:
    lowered = {k.lower(): v for k, v in DEFAULTS.items()}
    return DEFAULTS.get(task) or lowered.get(task.lower())


def resolve_template(spec: TaskSpec, template: str | None, *, causal: bool) -> Template:
    """The template to use (given, else the task's default), parsed and validated for the task and LM."""
    if template is None:
        default = get_default(spec.name)
        if default is None:
            raise ConfigError(f"task {spec.name} has no default template; set method_args.template (or --template), "
                              "e.g. '{sentence} It was {answer}.'")
        template = default.template(spec.is_pair, causal)
    return Template.parse(template).validate_for(spec.is_pair, causal)


def resolve_prompt(spec: TaskSpec, template: str | None, label_words: object, *, causal: bool
                   ) -> tuple[Template, object]:
    """The template (parsed, validated for the task and LM kind) and raw label words to use."""
    parsed = Template.parse(template).validate_for(spec.is_pair, causal) if template is not None else None
    default = get_default(spec.name)
    if (parsed is None or label_words is None) and default is None:
        missing = " and ".join(k for k, v in (("template", template), ("label_words", label_words)) if v is None)
        raise ConfigError(f"task {spec.name} has no default prompt; set method_args.{missing}, e.g. "
                          "--set method_args.template='{sentence} It was {answer}.' "
                          "--set method_args.label_words='{\"0\": bad, \"1\": good}'")
    words = label_words if label_words is not None else dict(default.mapping)  # type: ignore[union-attr]
    return parsed or resolve_template(spec, None, causal=causal), words
