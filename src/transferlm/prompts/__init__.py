"""Prompt-based learning: templates, verbalizers, the prompt model, demonstrations and automatic search.

Template (what the LM reads), Verbalizer (label <-> words) and PromptModel (LM read at the answer
slot) are separate pieces, as in OpenPrompt; :func:`build_prompt` assembles them for a task.
"""

from .build import PromptSetup, build_prompt, predict_scores
from .defaults import DEFAULTS, get_default, resolve_prompt
from .demonstrations import DemoSampler, SbertEmbedder
from .model import PromptModel
from .template import Template, TemplateEncoder, from_lmbff
from .verbalizer import Verbalizer, answer_search, normalize_label_words

__all__ = ["DEFAULTS", "DemoSampler", "PromptModel", "PromptSetup", "SbertEmbedder", "Template", "TemplateEncoder",
           "Verbalizer", "answer_search", "build_prompt", "from_lmbff", "get_default", "normalize_label_words",
           "predict_scores", "resolve_prompt"]
