"""The speed benchmarks' bookkeeping: what each side's numbers hold (memory, one-off costs, the protocol's cost)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import train_speed  # noqa: E402


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=BENCH, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_a_worker_peak_rss_is_its_own_not_the_parents() -> None:
    # train_speed starts each worker with subprocess from a parent that may have used more memory than a small
    # worker ever does; getrusage's ru_maxrss carries the parent's high-water mark into the child.
    hog = bytearray(400 * 2**20)
    hog[::4096] = b"\x01" * len(hog[::4096])  # touch every page
    parent_peak = train_speed.peak_rss_mb()
    child_peak = float(_run("import train_speed; print(train_speed.peak_rss_mb())"))
    del hog
    assert parent_peak > 400
    assert child_peak < 200, f"a bare worker reported {child_peak:.0f} MB, its parent's peak is {parent_peak:.0f} MB"


def test_protocol_estimate_counts_the_dev_evaluations() -> None:
    # A run trains 100 steps of 8, evaluates SST-2's 32 dev examples every 25 steps and once after training,
    # then the 872 test examples.
    r = {"flop_params": 1000, "train_examples_per_s": 8.0, "eval_examples_per_s": 10.0, "tokens_per_step": 64,
         "attention_flops_per_step": 0, "batch_size": 8}
    train_speed.add_derived(r, "finetune", peak=1e9)
    assert r["protocol_estimate_s"] == pytest.approx(5 * (100 * 8 / 8.0 + (872 + 5 * 32) / 10.0))


def test_icl_warm_up_leaves_the_scikit_learn_import_out_of_the_timing() -> None:
    # transferlm's evaluation imports scikit-learn on its first scoring; the hand-written loop scores nothing.
    out = _run("""
        import sys
        import torch
        import icl_speed

        class Model(torch.nn.Module):
            def forward(self, input_ids):
                return input_ids

        icl_speed.warm_up(Model(), lambda text, return_tensors: {"input_ids": torch.ones(1, 3)})
        print("sklearn.metrics" in sys.modules)
    """)
    assert out == "True"


def test_dapt_does_not_take_a_pretrained_model_of_another_model_or_budget() -> None:
    from dapt import pretrain_mismatch

    from transferlm.training.pretrain import PretrainConfig

    recorded = {"model": "minilm-l6", "texts": ["task:SST-2"], "text_field": "text", "steps": 100, "output": "x",
                "tapt_shots": 16, "tapt_seeds": [13, 21, 42]}
    same = PretrainConfig(model="minilm-l6", texts=["task:SST-2"], text_field="text", steps=100, output="y",
                          tapt_seeds=[13, 21, 42])
    assert pretrain_mismatch(recorded, same) == []
    other = PretrainConfig(model="smollm2-135m", texts=["task:SST-2"], text_field="text", steps=150, output="x",
                           tapt_seeds=[13, 21])
    assert pretrain_mismatch(recorded, other) == ["model", "steps", "tapt_seeds"]
    # A TAPT model from before TAPT left out the runs' dev texts is not this call's; a DAPT one still is.
    old = {k: v for k, v in recorded.items() if not k.startswith("tapt_")}
    assert pretrain_mismatch(old, same) == ["tapt_shots", "tapt_seeds"]
    assert pretrain_mismatch({**old, "texts": ["d.txt"]}, PretrainConfig(model="minilm-l6", texts=["d.txt"],
                                                                        steps=100, output="y")) == []


def test_tokens_per_step_are_those_of_the_timed_steps() -> None:
    # The steady rate times steps 2..N; HF's loader may have collated batch N+1 already.
    assert train_speed.steady_tokens_per_step([71, 1024, 1000, 1024, 512], steps=4) == pytest.approx(
        (1024 + 1000 + 1024) / 3)


def test_achieved_flops_count_attention_matmuls_over_real_tokens() -> None:
    # QKᵀ and softmax·V hold no parameters, so 6·N leaves them out: 12·L·d·len² per sequence (forward 4·L·d·len²,
    # backward twice that), over each sequence's real tokens, not the padded length.
    import torch
    from transformers import BertConfig

    config = BertConfig(num_hidden_layers=2, hidden_size=8, num_attention_heads=2, intermediate_size=16)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert train_speed.attention_flops(mask, config) == 12 * 2 * 8 * (3**2 + 2**2)
    # One step per second (8 examples/s at batch 8): the step's parameter FLOPs plus its attention FLOPs.
    for method, per_token in (("finetune", 6), ("lora", 4)):
        r = {"flop_params": 1000, "train_examples_per_s": 8.0, "eval_examples_per_s": 10.0, "tokens_per_step": 64,
             "attention_flops_per_step": 5000.0, "batch_size": 8}
        train_speed.add_derived(r, method, peak=1e6)
        assert r["train_flops_per_s"] == pytest.approx(per_token * 1000 * 64 + 5000.0)
        assert r["fraction_of_matmul_peak"] == pytest.approx((per_token * 1000 * 64 + 5000.0) / 1e6)
