"""Training and evaluation speed, peak memory and hardware utilisation: transferlm's engine vs plain
Hugging Face Trainer (+ peft for LoRA), in the same run, on the same examples.

For each model × method × implementation a fresh subprocess (so peak RSS is its own) trains for a few
steps on IMDB's K=16 training split (long reviews: at the default lengths all but one of the 32 are cut to
--max-length tokens, and a batch pads to its longest, so every step of both implementations does the same work),
then predicts on test examples. Reported:

* training examples/s: steady state, from the time between consecutive steps (the first step, with its
  warm-up allocations, is left out); evaluation examples/s;
* peak RSS of the process (model, optimizer state, activations);
* achieved FLOP/s as a fraction of this machine's matmul peak, measured here with a torch.mm loop in
  the run's precision on the same threads. Model FLOPs per token: 6·N for full fine-tuning (forward 2N, backward 4N),
  4·N for LoRA (the frozen weights need no weight gradients), N = non-embedding parameters, over the batches'
  non-padding tokens; plus attention's own matmuls (QKᵀ and the weighted sum of V, which hold no parameters):
  12·L·d·len² per sequence of len real tokens (forward 4·L·d·len², backward twice that, for both methods);
* the estimated cost of the whole 5-seed protocol at these rates (5 × (100 steps × batch 8 + 872 SST-2
  test examples + 5 dev evaluations of 32 examples: every 25 steps and once after training)), at this
  benchmark's sequence length;
* ratios transferlm / HF for each;
* with ``--precisions fp32,bf16``, each row also in bfloat16 autocast (transferlm: train.mixed_precision=bf16;
  HF: TrainingArguments(bf16=True)) and the bf16 / fp32 speed ratios. CPUs with AMX (Sapphire Rapids and
  later) multiply bfloat16 several times faster than float32.

Usage (defaults take a few minutes on 2 CPU cores; the machine may be shared, numbers are as measured):
    python benchmarks/train_speed.py
    python benchmarks/train_speed.py --models minilm-l6 --methods finetune,lora --steps 12 --out /tmp/s.json
    python benchmarks/train_speed.py --models smollm2-135m --methods finetune --precisions fp32,bf16 --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Per-model defaults: smollm2-135m is ~6x the compute of minilm-l6 per token, so it gets fewer, shorter steps.
PROFILES = {
    "minilm-l6": {"steps": 8, "batch_size": 8, "max_length": 128, "eval_examples": 128},
    "smollm2-135m": {"steps": 8, "batch_size": 4, "max_length": 64, "eval_examples": 32},
}
DEFAULT_PROFILE = {"steps": 6, "batch_size": 8, "max_length": 128, "eval_examples": 64}
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
LEARNING_RATES = {"finetune": 5e-5, "lora": 1e-3}
LORA_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}
TASK = "imdb"  # reviews longer than max_length: nearly every sequence is exactly max_length tokens
# Per seed, a run (protocol.run) trains, evaluates dev every eval_every=25 steps and once more after training
# (5 passes over SST-2's 32 dev examples at K=16), then evaluates test.
PROTOCOL = {"seeds": 5, "steps": 100, "batch_size": 8, "test_examples": 872, "dev_examples": 5 * 32}


# --- helpers shared by the workers ----------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's own peak RSS. Not getrusage's ru_maxrss: a child started by subprocess (vfork + exec)
    inherits its parent's high-water mark there, so it reads at least the parent's peak. VmHWM is the peak of
    this process's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # no /proc: Linux KiB, an upper bound


def non_embedding_params(model: Any) -> int:
    import torch

    embedding = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in embedding:
            seen.add(id(p))
            total += p.numel()
    return total


def clock_optimizer_steps(times: list[float]) -> None:
    """Timestamp every optimizer step, at the same point for both implementations (after the update).

    The first interval then starts after the first update, so both rates exclude the one-off cost of
    allocating the optimizer state, which would otherwise weigh on whichever side clocks earlier.
    """
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *_: times.append(time.perf_counter()))


def steady_rate(times: list[float], examples_per_step: int, steps: int) -> float:
    """Examples/s over the steps after the first (times: one timestamp per step, same point in each)."""
    if len(times) != steps:
        raise SystemExit(f"clocked {len(times)} optimizer steps, expected {steps}")
    if len(times) < 3:
        raise SystemExit("need at least 3 steps to measure a steady-state rate (--steps >= 3)")
    return (len(times) - 1) * examples_per_step / (times[-1] - times[0])


def steady_tokens_per_step(tokens: list[int], steps: int) -> float:
    """Mean per-batch count (non-padding tokens, or attention FLOPs) of the steps ``steady_rate`` times: the 2nd to
    the ``steps``-th batch.

    ``tokens`` holds one count per collated training batch, in order; HF's data loader collates one batch ahead,
    so it may hold one batch more than was trained.
    """
    timed = tokens[1:steps]
    return sum(timed) / len(timed)


def attention_flops(attention_mask: Any, config: Any) -> int:
    """Training FLOPs of attention's score and value matmuls for one batch, over its real tokens.

    Per layer and sequence of ``len`` tokens the forward pass multiplies QKᵀ and (softmax)·V, 2·len²·d each
    (d = heads × head size = the hidden size); the backward pass takes twice the forward's. These matmuls hold
    no parameters, so 6·N (or 4·N) leaves them out: 12·L·d·Σ len² per batch.
    """
    lengths = attention_mask.sum(1).tolist()
    return 12 * config.num_hidden_layers * config.hidden_size * sum(int(n) ** 2 for n in lengths)


def load_data(data_dir: str, n_eval: int):
    from transferlm.data.loading import DataOptions, load_task

    spec, data = load_task(TASK, data_dir, DataOptions(shots=16, seed=13))
    return spec, data.train, data.test[:n_eval]


# --- workers (one per subprocess) ------------------------------------------------------------------------

def worker_transferlm(model: str, method: str, p: dict[str, Any], data_dir: str) -> dict[str, Any]:
    import sklearn.metrics  # noqa: F401  (both sides score with it; its one-off import is not evaluation speed)
    import torch

    from transferlm.config import TrainConfig
    from transferlm.methods import get_method
    from transferlm.methods.base import count_parameters, freeze_unused_parameters
    from transferlm.models.loading import load_backbone
    from transferlm.training.engine import Engine

    spec, train, test = load_data(data_dir, p["eval_examples"])
    m = get_method(method)
    backbone = load_backbone(model, head=m.head_for(model))
    n_flop_params = non_embedding_params(backbone.model)
    model_config = backbone.model.config
    torch.manual_seed(13)
    prepared = m.prepare(backbone, spec, m.parse_config({}), max_length=p["max_length"], train=train)
    freeze_unused_parameters(prepared.model, prepared.collate(train[:2]))  # as run() does
    trainable, total = count_parameters(prepared.model)
    cfg = TrainConfig(max_steps=p["steps"], batch_size=p["batch_size"], eval_batch_size=32, eval_every=0,
                      checkpoint_every=0, learning_rate=LEARNING_RATES[method], max_length=p["max_length"],
                      mixed_precision="no" if p.get("precision", "fp32") == "fp32" else p["precision"])
    engine = Engine(prepared, spec, cfg, seed=13, quiet=True)
    times: list[float] = []
    tokens: list[int] = []
    attention: list[int] = []

    def count(*, batch: dict[str, torch.Tensor], logits: torch.Tensor, **_: Any) -> torch.Tensor:
        tokens.append(int(batch["attention_mask"].sum()))  # FLOPs are the real tokens', not the padding's
        attention.append(attention_flops(batch["attention_mask"], model_config))
        return logits.new_zeros(())

    engine.loss_hooks.append(count)
    clock_optimizer_steps(times)
    fit = engine.fit(train, [])
    ev = engine.evaluate(test, desc="test")
    return {"train_examples_per_s": steady_rate(times, p["batch_size"], p["steps"]), "train_seconds": fit.train_seconds,
            "tokens_per_step": steady_tokens_per_step(tokens, p["steps"]),
            "attention_flops_per_step": steady_tokens_per_step(attention, p["steps"]),
            "eval_examples_per_s": len(test) / ev.seconds,
            "eval_seconds": ev.seconds, "trainable_params": trainable, "total_params": total,
            "flop_params": n_flop_params, "peak_rss_mb": peak_rss_mb()}


def worker_hf(model: str, method: str, p: dict[str, Any], data_dir: str) -> dict[str, Any]:
    import sklearn.metrics  # noqa: F401  (as in worker_transferlm)
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from transferlm.models.zoo import resolve_model

    spec, train, test = load_data(data_dir, p["eval_examples"])
    path = str(resolve_model(model).path)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(13)
    hf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=spec.num_labels, dtype=torch.float32)
    hf.config.pad_token_id = tok.pad_token_id
    n_flop_params = non_embedding_params(hf)
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        family = AutoConfig.from_pretrained(path).model_type
        hf = get_peft_model(hf, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05,
                                           target_modules=LORA_TARGETS[family]))
    trainable = sum(q.numel() for q in hf.parameters() if q.requires_grad)
    total = sum(q.numel() for q in hf.parameters())

    def encode(examples):
        rows = []
        for e in examples:
            enc = tok(e.text_a, e.text_b, truncation=True, max_length=p["max_length"])
            rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": e.label})
        return rows

    tokens: list[int] = []
    attention: list[int] = []
    pad = DataCollatorWithPadding(tok)
    model_config = hf.config

    def collate(rows):
        batch = pad(rows)
        tokens.append(int(batch["attention_mask"].sum()))  # as in worker_transferlm: padding is not counted
        attention.append(attention_flops(batch["attention_mask"], model_config))
        return batch

    times: list[float] = []
    clock_optimizer_steps(times)

    def classification_metrics(pred):  # what transferlm's evaluation reports, with the same library
        from sklearn.metrics import accuracy_score, f1_score

        y = pred.predictions.argmax(-1)
        return {"accuracy": accuracy_score(pred.label_ids, y),
                "macro_f1": f1_score(pred.label_ids, y, average="macro", zero_division=0)}

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=p["batch_size"],
                                 per_device_eval_batch_size=32, max_steps=p["steps"],
                                 learning_rate=LEARNING_RATES[method], weight_decay=0.01, max_grad_norm=1.0,
                                 logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[],
                                 use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True,
                                 seed=13, bf16=p.get("precision") == "bf16")
        trainer = Trainer(model=hf, args=args, train_dataset=encode(train), data_collator=collate,
                          compute_metrics=classification_metrics)
        t0 = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - t0
        train_tokens, train_attention = list(tokens), list(attention)
        t0 = time.perf_counter()
        trainer.predict(encode(test))
        eval_seconds = time.perf_counter() - t0
    return {"train_examples_per_s": steady_rate(times, p["batch_size"], p["steps"]), "train_seconds": train_seconds,
            "tokens_per_step": steady_tokens_per_step(train_tokens, p["steps"]),
            "attention_flops_per_step": steady_tokens_per_step(train_attention, p["steps"]),
            "eval_examples_per_s": len(test) / eval_seconds,
            "eval_seconds": eval_seconds, "trainable_params": trainable, "total_params": total,
            "flop_params": n_flop_params, "peak_rss_mb": peak_rss_mb()}


# --- the parent ---------------------------------------------------------------------------------------------

def matmul_peak(seconds: float = 2.0, precision: str = "fp32") -> dict[str, Any]:
    """Best matmul FLOP/s in ``precision`` on this process's torch threads."""
    import torch

    dtype = getattr(torch, DTYPES[precision])
    best = {}
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)  # warm up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b)
            reps += 1
        best[n] = 2 * n**3 * reps / (time.perf_counter() - t0)
    n_best = max(best, key=best.get)
    return {"flops_per_s": best[n_best], "size": n_best, "by_size": {str(k): v for k, v in best.items()},
            "threads": torch.get_num_threads(), "dtype": DTYPES[precision]}


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated runs (rates are maxima: the noise on a shared machine only slows a run down)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    best = dict(max(ok, key=lambda r: r["train_examples_per_s"]))
    best["eval_examples_per_s"] = max(r["eval_examples_per_s"] for r in ok)
    best["peak_rss_mb"] = min(r["peak_rss_mb"] for r in ok)
    best["repeats"] = {k: [r[k] for r in ok] for k in ("train_examples_per_s", "eval_examples_per_s", "peak_rss_mb")}
    return best


def run_worker(impl: str, model: str, method: str, p: dict[str, Any], data_dir: str) -> dict[str, Any]:
    spec = json.dumps({"impl": impl, "model": model, "method": method, "profile": p, "data_dir": data_dir})
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def add_derived(r: dict[str, Any], method: str, peak: float) -> None:
    if "error" in r:
        return
    per_token = (6 if method == "finetune" else 4) * r["flop_params"]
    steps_per_s = r["train_examples_per_s"] / r["batch_size"]
    # The parameters' matmuls per real token, and attention's (QKᵀ, ·V), which no parameter count holds.
    r["train_flops_per_s"] = steps_per_s * (per_token * r["tokens_per_step"] + r["attention_flops_per_step"])
    r["fraction_of_matmul_peak"] = r["train_flops_per_s"] / peak
    r["flops_formula"] = (f"{6 if method == 'finetune' else 4}·N·tokens + 12·L·d·Σ len² (attention), "
                          f"N = {r['flop_params']:,} non-embedding params")
    r["protocol_estimate_s"] = PROTOCOL["seeds"] * (
        PROTOCOL["steps"] * PROTOCOL["batch_size"] / r["train_examples_per_s"]
        + (PROTOCOL["test_examples"] + PROTOCOL["dev_examples"]) / r["eval_examples_per_s"])


def measure_row(model: str, method: str, p: dict[str, Any], args: argparse.Namespace, peak: float) -> dict[str, Any]:
    """One model × method × precision: each implementation ``args.repeats`` times, best rates, HF ratios."""
    impls = args.impls.split(",")
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for rep in range(args.repeats):
        # Alternate the order so neither side always runs first on a machine whose speed drifts.
        for impl in impls if rep % 2 == 0 else impls[::-1]:
            runs[impl].append(run_worker(impl, model, method, p, args.data_dir))
    results = {}
    tag = f"{model:13s} {method:8s} {p['precision']:4s}"
    for impl in impls:
        r = best_of(runs[impl])
        add_derived(r, method, peak)
        results[impl] = r
        if "error" in r:
            print(f"{tag} {impl:10s} ERROR {r['error']}", flush=True)
            continue
        print(f"{tag} {impl:10s} train {r['train_examples_per_s']:7.2f} ex/s  "
              f"eval {r['eval_examples_per_s']:7.2f} ex/s  peak RSS {r['peak_rss_mb']:6.0f} MB  "
              f"{100 * r['fraction_of_matmul_peak']:5.1f}% of matmul peak  "
              f"5-seed protocol ≈ {r['protocol_estimate_s'] / 60:.0f} min", flush=True)
    row = {"model": model, "method": method, "profile": p, "results": results}
    ours, theirs = results.get("transferlm", {}), results.get("hf", {})
    if ours and theirs and "error" not in ours and "error" not in theirs:
        row["ratios_transferlm_over_hf"] = rr = {
            k: ours[k] / theirs[k] for k in ("train_examples_per_s", "eval_examples_per_s", "peak_rss_mb")}
        print(f"{tag} ratio transferlm/HF: train {rr['train_examples_per_s']:.2f}x  "
              f"eval {rr['eval_examples_per_s']:.2f}x  peak RSS {rr['peak_rss_mb']:.2f}x", flush=True)
    return row


def print_precision_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed of each later precision over the first (fp32), per implementation; stored on the later rows."""
    first = rows[0]
    for row in rows[1:]:
        ratios = {}
        for impl, r in row["results"].items():
            f = first["results"].get(impl, {})
            if "error" in r or not f or "error" in f:
                continue
            ratios[impl] = rr = {k: r[k] / f[k] for k in ("train_examples_per_s", "eval_examples_per_s", "peak_rss_mb")}
            print(f"{row['model']:13s} {row['method']:8s} {impl:10s} {row['profile']['precision']} / "
                  f"{first['profile']['precision']}: train {rr['train_examples_per_s']:.2f}x  "
                  f"eval {rr['eval_examples_per_s']:.2f}x  peak RSS {rr['peak_rss_mb']:.2f}x", flush=True)
        row[f"ratios_over_{first['profile']['precision']}"] = ratios


WORKERS = {"transferlm": worker_transferlm, "hf": worker_hf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm-l6,smollm2-135m")
    ap.add_argument("--methods", default="finetune,lora")
    ap.add_argument("--impls", default="transferlm,hf")
    ap.add_argument("--steps", type=int, help="training steps (default per model: minilm 8, smollm2 8)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--eval-examples", type=int)
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs per implementation, in alternating order; the best rates of each are reported")
    ap.add_argument("--precisions", default="fp32",
                    help="comma-separated, from fp32, bf16 (autocast); the first is the reference of the ratios")
    ap.add_argument("--data-dir", default=os.environ.get("TRANSFERLM_DATA", "../shared/data"))
    ap.add_argument("--out", default="benchmarks/results/train-speed.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if unknown := sorted(set(args.impls.split(",")) - set(WORKERS)):  # a typo would run HF under its name
        raise SystemExit(f"--impls: unknown {', '.join(unknown)}; choose from {', '.join(WORKERS)}")
    if args.worker:
        w = json.loads(args.worker)
        fn = WORKERS[w["impl"]]
        res = fn(w["model"], w["method"], w["profile"], w["data_dir"])
        print(json.dumps({**res, "batch_size": w["profile"]["batch_size"]}))
        return

    import torch

    t_start = time.perf_counter()
    precisions = args.precisions.split(",")
    for prec in precisions:
        if prec not in DTYPES:
            raise SystemExit(f"--precisions: unknown '{prec}'; choose from {', '.join(DTYPES)}")
    peaks = {prec: matmul_peak(precision=prec) for prec in precisions}
    for pk in peaks.values():
        print(f"matmul peak: {pk['flops_per_s'] / 1e9:.1f} GFLOP/s ({pk['dtype']}, n={pk['size']}, "
              f"{pk['threads']} threads)", flush=True)
    rows = []
    for model in args.models.split(","):
        base = dict(PROFILES.get(model, DEFAULT_PROFILE))
        for key in ("steps", "batch_size", "max_length", "eval_examples"):
            if getattr(args, key) is not None:
                base[key] = getattr(args, key)
        for method in args.methods.split(","):
            for prec in precisions:
                p = {**base, "precision": prec}
                rows.append(measure_row(model, method, p, args, peaks[prec]["flops_per_s"]))
            if len(precisions) > 1:
                print_precision_ratios(rows[-len(precisions):])
    # The peaks again at the end (a shared machine's load changes): the higher of the two is the reference.
    for prec in precisions:
        again = matmul_peak(precision=prec)
        if again["flops_per_s"] > peaks[prec]["flops_per_s"]:
            for row in rows:
                for r in row["results"].values():
                    if row["profile"]["precision"] == prec and "error" not in r:
                        r["fraction_of_matmul_peak"] = r["train_flops_per_s"] / again["flops_per_s"]
        print(f"matmul peak at the end: {again['flops_per_s'] / 1e9:.1f} GFLOP/s ({again['dtype']}); "
              "fractions use the higher", flush=True)
        peaks[prec] = {**max(peaks[prec], again, key=lambda x: x["flops_per_s"]),
                       "measured_gflops": [round(peaks[prec]["flops_per_s"] / 1e9, 1),
                                           round(again["flops_per_s"] / 1e9, 1)]}
    # One precision keeps the file's earlier shape (one peak); several record one peak each.
    peak = peaks[precisions[0]] if len(precisions) == 1 else peaks
    from transferlm.io import write_json

    write_json(args.out, {"task": TASK, "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
                          "matmul_peak": peak, "protocol_estimate": PROTOCOL, "rows": rows,
                          "wall_seconds": round(time.perf_counter() - t_start, 1),
                          "note": "measured on a possibly shared machine; rerun to compare"})
    print(f"wrote {args.out} ({time.perf_counter() - t_start:.0f}s)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
