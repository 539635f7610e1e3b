"""Load a backbone (encoder or decoder) and its tokenizer from a zoo name, folder or hub id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from .. import compat
from ..errors import ModelError
from .zoo import locate_model, model_help

log = logging.getLogger(__name__)

# Architectures by family: data, not code paths.
# Decoder-only families the prefix cache is tested on (its KV reuse is kept to them).
DECODER_TYPES = {"llama", "gemma", "gemma2", "gemma3", "gemma3_text", "qwen2", "qwen3", "mistral", "gpt2",
                 "gpt_neox", "phi", "phi3", "opt", "smollm3", "olmo", "olmo2"}


def is_decoder_config(config: Any) -> bool:
    """Whether ``config`` is a decoder-only LM: a tested family, any family transformers maps only to a causal
    LM (falcon, bloom, gpt_neo, ...: treated as encoders they would get mean pooling and an MLM head), or a
    config that says so itself."""
    model_type = getattr(config, "model_type", None)
    return (model_type in DECODER_TYPES or model_type in compat.decoder_only_model_types()
            or bool(getattr(config, "is_decoder", False)))


@dataclass
class Backbone:
    name: str
    path: str
    model: torch.nn.Module
    tokenizer: Any
    is_decoder: bool
    kind: str  # "encoder" | "mlm" | "causal"

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "hidden_size", None) or cfg.d_model


# Any one of these in a model folder is a saved tokenizer (fast, WordPiece, BPE or SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model", "spm.model", "sentencepiece.model", "merges.txt")


def load_tokenizer(path: str, trust_remote_code: bool) -> Any:
    """The tokenizer saved with the model at ``path``, with a pad token (decoders often lack one)."""
    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # transformers would load an empty vocabulary from such a folder: every word [UNK], a run of noise.
        raise ModelError(f"model folder {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                         "save the tokenizer into it too (tokenizer.save_pretrained(folder))")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    # Right padding whatever the folder saved: left padding shifts the positions of a short row in an
    # absolute-position decoder (GPT-2), so its prediction would depend on the batch it is in.
    tok.padding_side = "right"
    if tok.pad_token is None:
        # Decoders often ship without a pad token; padding uses EOS and the attention mask hides it.
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_backbone(name: str, *, head: str = "base", trust_remote_code: bool = False) -> Backbone:
    """Load ``name`` as a bare backbone (``head="base"``) or with its LM head (``"mlm"``/``"causal"``)."""
    resolved = locate_model(name)
    path = str(resolved.path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if resolved.source == "hub":  # the hub answered, without it: most often a typo of a built-in name
            raise ModelError(f"cannot load model '{name}' ({_first_line(e)}){model_help(name)}") from None
        raise ModelError(f"cannot load model '{name}' ({_first_line(e)}); use a built-in name "
                         "(`transferlm models`), a local folder with config.json, or a hub id while online") from None
    is_decoder = is_decoder_config(config)
    cls = {"base": AutoModel, "mlm": AutoModelForMaskedLM, "causal": AutoModelForCausalLM}[head]
    try:
        # Weights come from safetensors only: a pickled checkpoint (pytorch_model.bin) is never opened.
        model, info = cls.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=torch.float32,
                                          use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model '{name}' with a {head} head ({_first_line(e)})"
                         + (SAFETENSORS_ONLY if not _has_safetensors(path) else "")) from None
    except SafetensorError as e:
        raise ModelError(f"cannot load model '{name}': its weights file is damaged ({_first_line(e)}); copy or save "
                         "the model folder again") from None
    missing = sorted(info.get("missing_keys") or ())
    if head != "base" and missing:
        # An LM head the checkpoint lacks is randomly initialised: a prompt read through it scores noise.
        raise ModelError(f"model '{name}' has no weights for its {head} head ({len(missing)} missing, e.g. "
                         f"{missing[0]}); use a model saved with its LM head (e.g. splade-tiny, smollm2-135m), or "
                         "give this one a head first with `transferlm pretrain`")
    tokenizer = load_tokenizer(path, trust_remote_code)
    kind = "causal" if is_decoder else ("mlm" if head == "mlm" else "encoder")
    return Backbone(name=name, path=path, model=model, tokenizer=tokenizer, is_decoder=is_decoder, kind=kind)


SAFETENSORS_ONLY = ("; transferlm reads weights from safetensors files only, never pickled ones: convert the "
                    "checkpoint once where you trust it (load it, then save_pretrained(folder), which writes "
                    "model.safetensors)")


def _has_safetensors(path: str) -> bool:
    folder = Path(path)
    return not folder.is_dir() or any(folder.glob("*.safetensors"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
