"""Prompt-based learning methods: prompt-zero-shot, icl, prompt-finetune (registered on import)."""

from . import icl, prompt_finetune, zero_shot  # noqa: F401

__all__ = ["icl", "prompt_finetune", "zero_shot"]
