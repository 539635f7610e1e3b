from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from ....errors import ConfigError
from ..core import PeftBackbone, copy_into, keyword_inputs, pos_from_first_token
from .config import PrefixOptions
from .layer import PrefixEncoder


# A prefix is stored as rows of concatenated heads; a cache holds one slice per head. These convert both ways.
def heads_to_rows(x: torch.Tensor) -> torch.Tensor:
    """[..., heads, P, head_dim] (a cache's layout) -> [..., P, heads * head_dim] (a prefix's)."""
    return x.transpose(-3, -2).flatten(-2)


def rows_to_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., P, heads * head_dim] (a prefix's layout) -> [..., heads, P, head_dim] (a cache's)."""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


class PrefixBackbone(PeftBackbone):
    """Prefixes enter through the model's own KV cache, so no attention code is copied or patched.

    Each forward builds a :class:`~transformers.DynamicCache` holding every layer's prefix keys and
    values, prepends the prefix to the attention mask, and passes the text's positions explicitly
    (0..T-1 for absolute-position encoders such as BERT; after the row's prefix for rotary decoders, where a
    caller's own ``position_ids`` move by the prefix length alike). That works for encoders (BERT, RoBERTa) and decoders
    (Llama, Gemma, Qwen) alike. Rows of a mixed batch take their own task's prefix; shorter prefixes
    are padded and masked.
    """

    method = "prefix"
    extends_context = True
    no_layer_decay = "its prefix encoder produces every layer's keys/values at once"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.arch.spec.prefix:
            raise ConfigError(f"prefix-tuning needs a key/value cache, which {self.arch.spec.family} models lack; "
                              "use lora or adapter")
        self.encoders = nn.ModuleDict()

    def _add(self, name: str, cfg: PrefixOptions) -> None:
        a = self.arch
        init = None
        if cfg.init == "vocab":
            emb = self.model.get_input_embeddings()
            init = self.token_kv(torch.randint(0, emb.num_embeddings, (1, cfg.length)).to(emb.weight.device))
        self.encoders[name] = PrefixEncoder(cfg.length, a.num_layers, a.kv_dim, reparam=cfg.reparam,
                                            mlp_hidden=cfg.mlp_hidden, embed_dim=a.hidden_size, init=init)

    @torch.no_grad()
    def token_kv(self, ids: torch.Tensor) -> torch.Tensor:
        """[layers, 2, length, kv_dim]: the keys/values the frozen model caches for the ``[1, length]`` ``ids``.

        Taken from the model's own cache, so they are exactly what attention would see had those tokens
        preceded the input (after any key norm and rotary embedding): with the text's positions starting
        after the prefix, a decoder then computes what it computes for the real tokens followed by the text.
        """
        # No config: every layer keeps all `length` tokens (a sliding-window layer would keep only its window).
        cache = DynamicCache()
        was_training = self.model.training
        self.model.eval()  # no dropout in the start it copies
        try:
            self.model(input_ids=ids, cache=cache)
        finally:
            self.model.train(was_training)
        kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])
        return heads_to_rows(kv).float()  # [layers, 2, P, heads * head_dim]

    def _delete(self, name: str) -> None:
        del self.encoders[name]

    def fold(self) -> None:
        """Replace every reparametrisation MLP by the prefixes it computes (outputs do not change)."""
        for enc in self.encoders.values():
            enc.fold()
        self.configs = {n: dataclasses.replace(c, reparam=False) for n, c in self.configs.items()}

    def saved_config(self, name: str) -> PrefixOptions:
        # The saved form is the plain trained prefix: loading it needs neither the MLP nor a start to compute.
        return dataclasses.replace(self.configs[name], reparam=False, init="random")

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        return {"prefix": self.encoders[name].kv().detach()}

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        self.encoders[name].fold()
        copy_into({"prefix": self.encoders[name].prefix}, state, f"prefix '{name}'")

    def _prefix_rows(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[batch, layers, 2, P, kv_dim] prefixes and their [batch, P] mask (P: longest prefix in the batch)."""
        names = self.row_names(batch)
        kinds = list(dict.fromkeys(names))
        longest = max(self.encoders[n].length for n in kinds)
        table, masks = [], []
        for n in kinds:
            kv = self.encoders[n].kv()
            pad = longest - kv.shape[2]
            table.append(nn.functional.pad(kv, (0, 0, 0, pad)))
            masks.append(torch.arange(longest, device=kv.device) < kv.shape[2])
        idx = torch.tensor([kinds.index(n) for n in names], device=table[0].device)
        return torch.stack(table)[idx].to(dtype), torch.stack(masks)[idx]

    def _positions(self, ids: torch.Tensor | None, plen: torch.Tensor, length: int,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
        pos = torch.arange(length, device=plen.device).expand(plen.shape[0], length)
        if not self.arch.spec.absolute_positions:
            # Rotary models: the text follows the prefix (as with a real cache). The prefix keys carry no
            # rotation, so each row must count from its own prefix length for mixed batches to be exact.
            return pos_from_first_token(pos, mask) + plen.unsqueeze(1)
        if self.arch.spec.position_offset_from_padding:  # RoBERTa: padding_idx + 1 + index, padding at padding_idx
            pad = self.model.config.pad_token_id
            if ids is None:
                return pos + pad + 1
            keep = (ids != pad).long()
            return torch.cumsum(keep, dim=1) * keep + pad
        return pos  # absolute positions: the text keeps 0..T-1, as without a prefix

    def _forward(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        if self.active is None:
            return self.model(*args, **kwargs)
        kwargs = keyword_inputs(args, kwargs)
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        batch, length = ref.shape[:2]
        emb_dtype = self.model.get_input_embeddings().weight.dtype
        kv, pmask = self._prefix_rows(batch, emb_dtype)
        kwargs = dict(kwargs)
        cache = kwargs.pop("cache", None) or kwargs.pop("past_key_values", None)
        continuing = cache is not None and cache.get_seq_length() > 0  # a continuing generation holds the prefix
        mask = kwargs.get("attention_mask")
        if mask is None:  # every token attended: those already in the cache (after the prefix) and these
            seen = cache.get_seq_length() - pmask.shape[1] if continuing else 0
            mask = torch.ones(batch, seen + length, dtype=torch.long, device=ref.device)
        kwargs["attention_mask"] = torch.cat([pmask.to(mask.dtype), mask], dim=1)
        plen = pmask.sum(1)
        given = kwargs.get("position_ids")
        if given is not None:
            # The caller numbers its own tokens, as it would without a prefix. A rotary decoder's text follows
            # its row's prefix (what the default below computes), so the caller's positions move by the prefix
            # length alike: passing the positions the model would compute itself changes nothing. Absolute
            # positions (BERT, RoBERTa) are the text's own with or without a prefix: kept as given.
            if not self.arch.spec.absolute_positions:
                kwargs["position_ids"] = given + plen.unsqueeze(1)
        elif not continuing:
            kwargs["position_ids"] = self._positions(ids, plen, length, mask)
        elif not self.arch.spec.absolute_positions:
            # Continue each row's numbering (its own prefix length, from its first real token); the model's
            # default would count the cache's slots, padding and the longest prefix included.
            kwargs["position_ids"] = self._positions(None, plen, mask.shape[1], mask)[:, -length:]
        if not continuing:
            cache = DynamicCache(config=self.model.config)
            a = self.arch
            for layer in range(a.num_layers):
                k, v = (rows_to_heads(kv[:, layer, i], a.num_kv_heads) for i in (0, 1))
                cache.update(k, v, layer)
        return self.model(**kwargs, cache=cache)
