from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ....errors import ConfigError
from ....models.loading import is_decoder_config
from ..core import PeftBackbone, SavedAdapter, copy_into, keyword_inputs, pos_from_first_token
from ..peftlib import PEFT_WEIGHTS
from .config import PromptTuningOptions


class PromptTuningBackbone(PeftBackbone):
    """Soft prompts prepended to the input embeddings; outputs are returned for the real tokens only.

    Our own forward glue (rather than peft's PeftModelForFeatureExtraction) keeps ``token_type_ids``
    (peft drops them, which breaks BERT sentence pairs), aligns outputs with the input, and lets rows
    of one batch use different tasks' prompts. Saved in PEFT's prompt-tuning format.
    """

    weights_file = PEFT_WEIGHTS  # saved in PEFT's layout (adapter_model.safetensors)
    method = "prompt-tuning"
    extends_context = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prompts = nn.ParameterDict()

    def layer_of_param(self, name: str) -> int | None:
        # A soft prompt is input embeddings: it takes the embeddings' rate.
        return 0 if name.startswith("prompts.") else super().layer_of_param(name)

    def _init_ids(self, cfg: PromptTuningOptions) -> torch.Tensor:
        emb = self.model.get_input_embeddings()
        if cfg.init == "vocab":
            return torch.randint(0, emb.num_embeddings, (cfg.length,))
        ids: list[int] = []
        for w in cfg.words:
            if isinstance(w, int):
                ids.append(w)
            elif self.tokenizer is None:
                raise ConfigError("prompt-tuning init=label-words with words needs a tokenizer; pass token ids")
            else:
                ids += self.tokenizer(str(w), add_special_tokens=False)["input_ids"]
        bad = [i for i in ids if not 0 <= i < emb.num_embeddings]
        if not ids or bad:
            raise ConfigError(f"method_args.words gives no usable token ids (out of range: {bad[:3]})")
        return torch.tensor((ids * cfg.length)[: cfg.length])

    def _add(self, name: str, cfg: PromptTuningOptions) -> None:
        emb = self.model.get_input_embeddings()
        with torch.no_grad():
            if cfg.init == "random":
                # At the scale of the embeddings the model sees: Gemma's module multiplies its table by embed_scale.
                std = emb.weight.float().std() * float(getattr(emb, "embed_scale", 1.0))
                init = torch.randn(cfg.length, emb.weight.shape[1], device=emb.weight.device) * std
            else:  # through the module, so scaled embeddings (Gemma) come out as the model sees them
                init = emb(self._init_ids(cfg).to(emb.weight.device))
        self.prompts[name] = nn.Parameter(init.detach().clone().to(emb.weight.dtype))

    def _delete(self, name: str) -> None:
        del self.prompts[name]

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.prompts[name]}

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        copy_into({"prompt_embeddings": self.prompts[name]}, state, f"prompt-tuning '{name}'")

    # -- forward ---------------------------------------------------------------------------------------
    def _forward(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        if self.active is None:
            return self.model(*args, **kwargs)
        kwargs = keyword_inputs(args, kwargs)
        ids = kwargs.pop("input_ids", None)
        embeds = kwargs.pop("inputs_embeds", None)
        if embeds is None:
            embeds = self.model.get_input_embeddings()(ids)
        batch, length = embeds.shape[:2]
        names = self.row_names(batch)
        kinds = list(dict.fromkeys(names))
        width = max(self.prompts[n].shape[0] for n in kinds)
        # Rows are [padding | prompt | text]: a shorter prompt is padded (and masked) in front.
        table = torch.stack([nn.functional.pad(self.prompts[n], (0, 0, width - self.prompts[n].shape[0], 0))
                             for n in kinds])
        sizes = torch.tensor([self.prompts[n].shape[0] for n in kinds], device=embeds.device)
        idx = torch.tensor([kinds.index(n) for n in names], device=embeds.device)
        k = sizes[idx]  # prompt length per row
        slots = torch.arange(width, device=embeds.device)
        pmask = slots.unsqueeze(0) >= (width - k).unsqueeze(1)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        pos = kwargs.get("position_ids")
        if pos is None:
            pos = torch.arange(length, device=embeds.device).expand(batch, length)
            if not self.arch.spec.absolute_positions:  # rotary: left padding must not part prompt and text
                pos = pos_from_first_token(pos, mask)
            if self.arch.spec.position_offset_from_padding:  # RoBERTa counts from padding_idx + 1
                pos = pos + self.model.config.pad_token_id + 1
        pos = pos.expand(batch, length)
        # The prompt takes the text's first positions; the text moves right by its row's prompt length.
        prompt_pos = pos[:, :1] + (slots.unsqueeze(0) - (width - k).unsqueeze(1)).clamp(min=0)
        kwargs["inputs_embeds"] = torch.cat([table[idx].to(embeds.dtype), embeds], dim=1)
        kwargs["attention_mask"] = torch.cat([pmask.to(mask.dtype), mask], dim=1)
        kwargs["position_ids"] = torch.cat([prompt_pos, pos + k.unsqueeze(1)], dim=1)
        if kwargs.get("token_type_ids") is not None:
            tt = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([tt.new_zeros(batch, width), tt], dim=1)
        return _strip(self.model(**kwargs), width)

    # -- PEFT's on-disk format -------------------------------------------------------------------------
    def save_adapter(self, folder: Path, name: str) -> None:
        from peft import PromptTuningConfig

        self.check_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        a, model = self.arch, self.model
        decoder_lm = is_decoder_config(a.config) and model.get_output_embeddings() is not None
        PromptTuningConfig(task_type="CAUSAL_LM" if decoder_lm else "FEATURE_EXTRACTION",
                           num_virtual_tokens=self.prompts[name].shape[0], token_dim=a.hidden_size,
                           num_transformer_submodules=1, num_attention_heads=a.num_heads, num_layers=a.num_layers,
                           inference_mode=True, base_model_name_or_path=getattr(a.config, "_name_or_path", None)
                           or None).save_pretrained(str(folder))
        save_file({"prompt_embeddings": self.prompts[name].detach().cpu().contiguous()}, str(folder / self.weights_file),
                  metadata={"format": "pt"})
        self.write_meta(folder, self.configs[name])

    def attach_adapter(self, name: str, saved: SavedAdapter) -> None:
        self.check_signature(saved.base, str(saved.folder))
        self.check_new_name(name)
        self._add(name, dataclasses.replace(saved.config, init="random"))  # the weights are loaded next
        self.configs[name] = saved.config
        if self.active is None:
            self._activate(name)
        self.load_or_remove(name, saved.state)


def _strip(out: Any, width: int) -> Any:
    """Drop the soft-prompt positions so outputs line up with the caller's tokens.

    Per-token outputs (``last_hidden_state``, ``logits``, every ``hidden_states`` entry, which finetune's
    ``layers`` pooling reads with the caller's mask) lose the ``width`` prompt slots. ``attentions`` are left
    whole, ``[batch, heads, width + T, width + T]``: their key axis must keep the prompt for each row's weights
    to sum to one (as a prefix's keys stay in its attentions), and nothing here reads them; a caller
    inspecting them takes ``[..., width:, :]`` for its own tokens' queries.
    """
    out = copy.copy(out)
    for key in ("last_hidden_state", "logits"):
        if getattr(out, key, None) is not None:
            out[key] = out[key][:, width:]
    if getattr(out, "hidden_states", None) is not None:
        out["hidden_states"] = tuple(h[:, width:] for h in out.hidden_states)
    return out
