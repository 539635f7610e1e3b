"""Every version-dependent import and call, in one place."""

from __future__ import annotations

import functools
from typing import Any

import torch


def configure_threads() -> None:
    # Torch defaults to all cores; keep it, but make inter-op single threaded for determinism.
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set once in this process


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 / AMX, as oneDNN checks it).

    Without it torch emulates bf16 matmuls: measured on an AVX2-only AMD EPYC, 1 GFLOP/s against 86 in fp32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an op this torch build lacks: assume the slow path
        return False


def slow_bf16_warning(precision: str, device: torch.device | str, where: str) -> str | None:
    """A one-line warning when ``precision`` is bf16 on a CPU without native bf16, else None."""
    if precision != "bf16" or torch.device(device).type != "cpu" or cpu_has_fast_bf16():
        return None
    return (f"{where}: bf16 on a CPU without native bfloat16 (no AVX512-BF16/AMX; torch reports "
            f"{torch.backends.cpu.get_cpu_capability()}) runs matmuls emulated, tens of times slower than fp32; "
            "use fp32 here")


def new_accelerator(mixed_precision: str, cpu: bool) -> Any:
    """An ``accelerate.Accelerator``; a run after another run with a different precision gets its own state.

    accelerate keeps one process-wide state and refuses a second precision ("AcceleratorState has already
    been initialized"), which broke fp32 then bf16 runs in one Python session. Resetting the accelerator part
    keeps ``PartialState`` (device, process group), so distributed runs are unaffected.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") not in (None, mixed_precision):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


# -- key/value caches of decoders (transformers renamed past_key_values to cache, and changed the object) --
def hf_model(module: Any) -> Any:
    """The outermost transformers ``PreTrainedModel`` in ``module``, looking through PEFT wrappers; or None."""
    from transformers import PreTrainedModel

    for _ in range(5):
        if isinstance(module, PreTrainedModel):
            return module
        module = getattr(module, "model", None) or getattr(module, "base_model", None)
        if module is None:
            return None
    return None


def cache_kwarg(model: Any) -> str:
    """The keyword ``model``'s forward takes a KV cache by: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def kv_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) ``[batch, kv_heads, length, head_dim]`` of a cache object or legacy tuple."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return [(k, v) for k, v, *_ in cache]


def kv_cache(config: Any, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A ``DynamicCache`` holding ``layers`` (the model appends the new tokens' keys and values to it)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers, config=config)


@functools.cache
def decoder_only_model_types() -> frozenset[str]:
    """The model types transformers knows as decoder-only LMs: a causal-LM class, and neither a masked-LM one
    (BERT-style encoders have a causal head too) nor a seq2seq one. Empty where the mapping moved."""
    try:
        from transformers.models.auto import modeling_auto as auto
    except ImportError:
        return frozenset()
    causal = set(getattr(auto, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", {}))
    return frozenset(causal - set(getattr(auto, "MODEL_FOR_MASKED_LM_MAPPING_NAMES", {}))
                     - set(getattr(auto, "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", {})))


def hub_file_metadata(url: str, timeout: float) -> Any:
    """``huggingface_hub.get_hf_file_metadata`` asked once: ``retry_on_errors`` is a newer keyword (older releases
    never retried here), and an unknown keyword would read as an unreachable hub."""
    import inspect

    from huggingface_hub import get_hf_file_metadata

    extra = {"retry_on_errors": False} if "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters else {}
    return get_hf_file_metadata(url, timeout=timeout, **extra)
