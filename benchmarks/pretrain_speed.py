"""Continued-pretraining (DAPT/TAPT) speed: transferlm's MLM step vs the plain Hugging Face step, in the
same run, on the same batches.

transferlm projects onto the vocabulary only at the masked positions (`masked_lm_loss`); the plain step
is `model(**batch).loss`, which projects every position (what `run_mlm.py` / Trainer do). Both train the
same model from the same start on the same masked batches, step by step in alternation, so a shared
machine slows both alike. Reported: tokens/s (non-padding tokens) for each, the ratio, and the loss
difference on the first step (same math: it should be ~0). Also the cost of one `pretrain` phase of
`--phase-steps` steps at the measured rate.

Usage (a few minutes on 2 CPU cores; the machine may be shared, numbers are as measured):
    python benchmarks/pretrain_speed.py --model minilm-l6 --steps 10 --max-length 128
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

from transferlm.io import write_json
from transferlm.training.pretrain import PretrainConfig, Pretrainer, _tokenize, masked_lm_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--text", default="unlabeled/scibert/sci-cite/train.txt", help="relative to --data-dir")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--data-dir", default=os.environ.get("TRANSFERLM_DATA", "../shared/data"))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per implementation (after 1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--phase-steps", type=int, default=200, help="for the cost estimate of one phase")
    ap.add_argument("--out", default="benchmarks/results/pretrain-speed.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = PretrainConfig(model=args.model, texts=[str(Path(args.data_dir) / args.text)], text_field=args.text_field,
                         output="/nonexistent/not-written", max_length=args.max_length, batch_size=args.batch_size,
                         quiet=True)
    trainer = Pretrainer(cfg)  # loads the model (a new tied head for minilm) and reads the text; writes nothing
    texts = trainer.phases[0][1]
    rows = _tokenize(trainer.tokenizer, texts[: args.batch_size * (args.steps + 1)], args.max_length, False)
    batches = [trainer._batch(rows[i * args.batch_size:(i + 1) * args.batch_size], i) for i in range(args.steps + 1)]
    ours_model, plain_model = trainer.model, copy.deepcopy(trainer.model)
    ours_model.train()
    plain_model.train()
    impls = {
        "transferlm (masked positions only)": (ours_model, lambda m, b: masked_lm_loss(m, b)),
        "plain HF (model(**batch).loss)": (plain_model, lambda m, b: m(**b).loss),
    }
    opts = {name: torch.optim.AdamW(m.parameters(), lr=5e-5) for name, (m, _) in impls.items()}
    seconds = dict.fromkeys(impls, 0.0)
    first_loss: dict[str, float] = {}
    tokens = 0
    for step, batch in enumerate(batches):
        if step:
            tokens += int(batch["attention_mask"].sum())
        for name, (model, loss_fn) in impls.items():
            torch.manual_seed(step)  # the same dropout masks for both
            t0 = time.perf_counter()
            loss = loss_fn(model, batch)
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if step:  # step 0 warms up allocations
                seconds[name] += time.perf_counter() - t0
            else:
                first_loss[name] = loss.item()
    rates = {name: tokens / s for name, s in seconds.items()}
    ours, plain = list(rates)
    result = {
        "model": args.model, "text": args.text, "batch_size": args.batch_size, "max_length": args.max_length,
        "timed_steps": args.steps, "tokens": tokens, "threads": torch.get_num_threads(),
        "tokens_per_second": {k: round(v, 1) for k, v in rates.items()},
        "speedup": round(rates[ours] / rates[plain], 2),
        "first_step_loss": first_loss,
        "phase_minutes_estimate": {k: round(args.phase_steps * (tokens / args.steps) / v / 60, 1)
                                   for k, v in rates.items()},
        "command": "python benchmarks/pretrain_speed.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("data_dir", "out")),
    }
    for name, rate in rates.items():
        print(f"{name:36s} {rate:8.0f} tokens/s   first-step loss {first_loss[name]:.4f}")
    print(f"speedup {result['speedup']}x; one {args.phase_steps}-step phase: {result['phase_minutes_estimate']} min")
    write_json(args.out, result)
    print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()
