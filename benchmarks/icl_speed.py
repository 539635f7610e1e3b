"""In-context learning evaluation speed: transferlm's ``icl`` method vs a hand-written GPT-3-style loop,
in the same run, on the same test examples with the same demonstrations.

* transferlm: the registered ``icl`` method prepared and evaluated through the engine exactly as
  ``protocol.run.run`` does (same data loading, seeding, ``method.prepare``, ``Engine.evaluate`` on the
  test split; dev is not evaluated): length-sorted batches of ``--eval-batch-size``, the LM head run at
  the answer position only.
* hand-written: what a practitioner writes with transformers + torch alone. Per test example, the prompt
  string is the k demonstrations rendered with the task's template and label words ("<sentence> It was
  great.") joined by newlines, then the query up to the answer slot ("<sentence> It was"); tokenize, one
  forward pass (batch size 1, no padding), argmax over the next-token logits of the label words
  (" great" / " terrible", leading space as they follow "was"). Demonstrations that would push the prompt
  past --max-length tokens are left out in order, as transferlm does. The demonstrations per example are
  drawn with transferlm's DemoSampler (seed = the run's seed, as ``icl`` does), so both read the same
  context; its own model and tokenizer are loaded with plain ``from_pretrained``.
* hand-written, batched: the same loop with --eval-batch-size prompts per forward pass (right padding,
  examples in data order, no length sorting), to show which part of the gap batching accounts for.

Checked before any number is printed: every hand-written prompt tokenizes to exactly the token ids
transferlm's collate builds for that example, and the predictions agree (an example may differ only
where both implementations put the two labels within 1e-3 of a tie). Reported: evaluation examples/s,
wall seconds and accuracy of each, the ratios transferlm / hand-written, the agreement and the largest
difference in label probabilities.

Usage (the default should take about 3 minutes on 2 idle CPU cores, and took 9 next to another benchmark;
the machine may be shared, numbers are as measured, with the load average in the JSON):
    python benchmarks/icl_speed.py
    python benchmarks/icl_speed.py --examples 8 --out /tmp/icl.json
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch

TIE = 1e-3  # predictions may differ only where both put the labels this close to 50/50


# --- the hand-written baseline: transformers + torch only -------------------------------------------------

def render(template: str, ex: Any, answer: str | None) -> str:
    """A demonstration (``answer`` given) or the query (the template up to its answer slot)."""
    a, b = ex.text_a.strip(), (ex.text_b or "").strip()
    fields = {"sentence": a, "sentence1": a, "sentence2": b}
    if answer is None:
        return template.split("{answer}")[0].rstrip().format(**fields)
    return template.format(answer=answer, **fields)


def fit_prompt(tok: Any, demos: list[str], query: str, max_length: int, sep: str = "\n") -> tuple[str, int]:
    """The prompt string, leaving out (in order) demonstrations that would exceed ``max_length`` tokens."""
    prompt = sep.join([*demos, query])
    if len(tok(prompt)["input_ids"]) <= max_length:
        return prompt, 0
    kept: list[str] = []
    for d in demos:
        if len(tok(sep.join([*kept, d, query]))["input_ids"]) <= max_length:
            kept.append(d)
    return sep.join([*kept, query]), len(demos) - len(kept)


@torch.no_grad()
def hand_written_icl(model: Any, tok: Any, test: Sequence[Any], demos: Sequence[Sequence[Any]], template: str,
                     words: list[str], max_length: int, batch_size: int = 1) -> dict[str, Any]:
    """Predictions, label probabilities and prompts of a plain ICL loop (``batch_size`` prompts per forward)."""
    word_ids = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    if any(len(ids) != 1 for ids in word_ids):
        raise SystemExit(f"the hand-written loop scores one-token label words only; {words} -> {word_ids}")
    label_ids = torch.tensor([ids[0] for ids in word_ids])
    preds, probs, prompts, dropped = [], [], [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(test), batch_size):
        batch = []
        for ex, ds in zip(test[start:start + batch_size], demos[start:start + batch_size], strict=True):
            shown = [render(template, d, words[int(d.label)]) for d in ds]
            prompt, n = fit_prompt(tok, shown, render(template, ex, None), max_length)
            batch.append(prompt)
            dropped += n
        if batch_size == 1:
            enc = tok(batch[0], return_tensors="pt")
            logits = model(**enc).logits[:, -1]
        else:
            enc = tok(batch, return_tensors="pt", padding=True)
            last = enc["attention_mask"].sum(1) - 1
            logits = model(**enc).logits[torch.arange(len(batch)), last]
        p = logits[:, label_ids].float().softmax(-1)
        preds += p.argmax(-1).tolist()
        probs += p.tolist()
        prompts += batch
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"preds": preds, "probs": probs, "prompts": prompts, "seconds": seconds, "cpu_seconds": cpu,
            "demos_dropped": dropped}


# --- transferlm --------------------------------------------------------------------------------------------

def transferlm_icl(cfg: Any, spec: Any, data: Any, test: Sequence[Any]) -> dict[str, Any]:
    """The icl method through the engine, step by step as protocol.run.run does it."""
    from transferlm.methods import get_method
    from transferlm.models.loading import load_backbone
    from transferlm.training.engine import Engine

    method = get_method(cfg.method)
    method_cfg = method.parse_config(cfg.method_args)
    t0 = time.perf_counter()
    backbone = load_backbone(cfg.model, head=method.head_for(cfg.model))
    load_s = time.perf_counter() - t0
    method_cfg = method.resolve(method_cfg, backbone, spec, data.train, data.dev)
    torch.manual_seed(cfg.seed)  # as run(): the demonstration sampler's seed is the run's seed
    prepared = method.prepare(backbone, spec, method_cfg, max_length=cfg.train.max_length, train=data.train)
    engine = Engine(prepared, spec, cfg.train, seed=cfg.seed, quiet=True)
    warm_up(backbone.model, backbone.tokenizer)
    t0, c0 = time.perf_counter(), time.process_time()
    ev = engine.evaluate(test, desc="test")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"preds": ev.predictions.tolist(), "probs": ev.scores.tolist(), "seconds": seconds, "cpu_seconds": cpu,
            "engine_seconds": ev.seconds, "metrics": ev.metrics, "load_seconds": load_s,
            "demos_dropped": prepared.collate.drops.total_dropped, "prompt": prepared.extras["prompt"],
            "collate": prepared.collate, "tokenizer": backbone.tokenizer}


def warm_up(model: Any, tok: Any) -> None:
    """One-off work kept out of the timings: a first forward pass, and the scikit-learn import that transferlm's
    evaluation does on its first scoring (seconds on a busy machine; the hand-written loop scores nothing)."""
    import sklearn.metrics  # noqa: F401

    with torch.no_grad():
        model(**tok("a short warm-up input", return_tensors="pt"))


# --- the benchmark -----------------------------------------------------------------------------------------

def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    return sum(int(p) == int(y) for p, y in zip(preds, labels, strict=True)) / max(len(labels), 1)


def padded_tokens(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> int:
    """Tokens the forward passes process when batches of ``order`` are padded to their longest prompt."""
    return sum(len(chunk) * max(lengths[i] for i in chunk)
               for chunk in (order[s:s + batch_size] for s in range(0, len(order), batch_size)))


def margin(probs: Sequence[float]) -> float:
    """How far the top label is ahead of the runner-up."""
    top = sorted(probs, reverse=True)
    return top[0] - top[1] if len(top) > 1 else 1.0


def compare(ref: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Agreement of predictions; disagreements outside a near-tie are reported as unexplained."""
    agree, unexplained, max_diff = 0, [], 0.0
    for i, (a, b, pa, pb) in enumerate(zip(ref["preds"], other["preds"], ref["probs"], other["probs"], strict=True)):
        max_diff = max(max_diff, max(abs(x - y) for x, y in zip(pa, pb, strict=True)))
        if int(a) == int(b):
            agree += 1
        elif not (margin(pa) < 2 * TIE and margin(pb) < 2 * TIE):
            unexplained.append(i)
    n = len(ref["preds"])
    return {"agree": agree, "of": n, "fraction": agree / max(n, 1), "max_prob_diff": max_diff,
            "unexplained": unexplained}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="SST-2")
    ap.add_argument("--examples", type=int, default=64, help="test examples evaluated (default 64)")
    ap.add_argument("--k", type=int, default=4, help="demonstrations per prompt (default 4)")
    ap.add_argument("--seed", type=int, default=13, help="data split and demonstration seed (default 13)")
    ap.add_argument("--max-length", type=int, default=256, help="prompt length limit in tokens (default 256)")
    ap.add_argument("--eval-batch-size", type=int, default=64,
                    help="transferlm's and the batched baseline's batch size (default 64, the engine's default)")
    ap.add_argument("--no-batched", action="store_true", help="skip the batched hand-written baseline")
    ap.add_argument("--data-dir", default=os.environ.get("TRANSFERLM_DATA", "../shared/data"))
    ap.add_argument("--out", default="benchmarks/results/icl-speed.json")
    args = ap.parse_args()
    t_start = time.perf_counter()

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transferlm.config import RunConfig
    from transferlm.io import write_json
    from transferlm.models.zoo import resolve_model
    from transferlm.prompts.demonstrations import DemoSampler
    from transferlm.protocol.run import load_run_data

    cfg = RunConfig.from_dict({
        "task": args.task, "model": args.model, "method": "icl", "seed": args.seed, "quiet": True,
        "method_args": {"k": args.k, "selection": "random"},
        "data": {"data_dir": args.data_dir, "shots": 16, "max_test": args.examples},
        "train": {"max_length": args.max_length, "eval_batch_size": args.eval_batch_size}})
    spec, data = load_run_data(cfg)
    test = data.test[:args.examples]
    n = len(test)
    labels = [int(e.label) for e in test]  # type: ignore[arg-type]
    load_avg = [os.getloadavg()[0]]
    print(f"{spec.name}: {len(test)} test examples, k={args.k}, {len(data.train)} training examples to draw from, "
          f"{torch.get_num_threads()} torch threads, load average {load_avg[0]:.2f}", flush=True)

    # transferlm, as a run does it.
    tl = transferlm_icl(cfg, spec, data, test)
    template = tl["prompt"]["template"]
    words = [ws[0] for ws in tl["prompt"]["label_words"].values()]  # in label order
    if "|" in template or tl["prompt"]["lm"] != "causal":
        raise SystemExit(f"the hand-written loop renders plain causal templates only, not {template!r}")
    print(f"transferlm icl: {tl['seconds']:.1f}s; template {template!r}, label words {words}", flush=True)

    # The same demonstrations: icl's sampler is DemoSampler(train, random, k, seed=the run's seed), draw 0.
    sampler = DemoSampler(data.train, num_labels=spec.num_labels, strategy="random", k=args.k, seed=args.seed,
                          regression=spec.regression)
    assert tl["collate"].sampler.seed == args.seed, "icl's demonstration seed is not the run's seed"
    demos = [sampler.sample(ex, 0) for ex in test]

    # The hand-written loop, with its own model and tokenizer.
    path = str(resolve_model(args.model).path)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    hw_load = time.perf_counter() - t0
    warm_up(model, tok)
    hw = hand_written_icl(model, tok, test, demos, template, words, args.max_length)
    print(f"hand-written (batch 1): {hw['seconds']:.1f}s", flush=True)
    hwb = None
    if not args.no_batched:
        hwb = hand_written_icl(model, tok, test, demos, template, words, args.max_length,
                               batch_size=args.eval_batch_size)
        print(f"hand-written (batch {args.eval_batch_size}): {hwb['seconds']:.1f}s", flush=True)
    load_avg.append(os.getloadavg()[0])

    # Checks: identical prompts (token ids) and agreeing predictions.
    collate = tl["collate"]
    same_ids, lengths, shown_diffs = 0, [], 0
    for ex, ds, prompt in zip(test, demos, hw["prompts"], strict=True):
        rows, _, _, _ = collate.unit_rows(ex, ds)
        ids = tok(prompt)["input_ids"]
        lengths.append(len(ids))
        if rows[0][0] == ids:
            same_ids += 1
        elif shown_diffs < 3:
            shown_diffs += 1
            print(f"prompt differs for {ex.text_a[:50]!r}:\n  transferlm   {tok.decode(rows[0][0])!r}\n"
                  f"  hand-written {prompt!r}")
    agreement = compare(tl, hw)
    # Padding: the engine batches test examples sorted by their text's length in characters (not the
    # prompt's, which the demonstrations dominate); the batched baseline keeps data order.
    by_text = sorted(range(n), key=lambda i: len(test[i].text_a) + len(test[i].text_b or ""))
    tokens = {"prompts": sum(lengths), "longest": max(lengths), "shortest": min(lengths),
              "padded_transferlm": padded_tokens(lengths, by_text, args.eval_batch_size),
              "padded_hand_written_batched": padded_tokens(lengths, range(n), args.eval_batch_size)}
    agreement_b = compare(tl, hwb) if hwb else None

    impls = {"transferlm": tl, "hand_written": hw, **({"hand_written_batched": hwb} if hwb else {})}
    batch = {"transferlm": args.eval_batch_size, "hand_written": 1, "hand_written_batched": args.eval_batch_size}
    rows_out = {name: {"batch_size": batch[name], "eval_seconds": round(r["seconds"], 3),
                       "eval_examples_per_s": round(n / r["seconds"], 3), "cpu_seconds": round(r["cpu_seconds"], 3),
                       "accuracy": round(accuracy(r["preds"], labels), 4), "demos_dropped": r["demos_dropped"]}
                for name, r in impls.items()}
    rows_out["transferlm"].update(engine_eval_seconds=round(tl["engine_seconds"], 3), metrics=tl["metrics"],
                                  load_seconds=round(tl["load_seconds"], 2))
    rows_out["hand_written"]["load_seconds"] = round(hw_load, 2)
    # From the unrounded seconds (same n on each side), not from the rates rounded for the JSON.
    ratios = {f"transferlm/{name}": round(impls[name]["seconds"] / tl["seconds"], 3)
              for name in impls if name != "transferlm"}
    result = {
        "task": spec.name, "model": args.model, "examples": n, "k": args.k, "seed": args.seed,
        "max_length": args.max_length, "template": template, "label_words": words,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "python": platform.python_version(),
                    "load_average_1min": [round(x, 2) for x in load_avg]},
        "implementations": rows_out, "ratios": ratios, "tokens": tokens,
        "agreement": {"prompt_ids_identical": same_ids, "of": n,
                      "hand_written": agreement, **({"hand_written_batched": agreement_b} if agreement_b else {})},
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }

    print(f"\n{'implementation':22s} {'batch':>5s} {'eval ex/s':>9s} {'seconds':>8s} {'accuracy':>8s} {'dropped':>7s}")
    for name, r in rows_out.items():
        print(f"{name:22s} {r['batch_size']:5d} {r['eval_examples_per_s']:9.2f} {r['eval_seconds']:8.1f} "
              f"{r['accuracy']:8.4f} {r['demos_dropped']:7d}")
    for name, ratio in ratios.items():
        print(f"ratio {name} (eval examples/s): {ratio:.2f}x")
    print(f"prompts identical (token ids): {same_ids}/{n}; prompt tokens {tokens['prompts']}, "
          f"{tokens['shortest']}-{tokens['longest']} per prompt; with padding: transferlm "
          f"{tokens['padded_transferlm']}, batched hand-written {tokens['padded_hand_written_batched']}")
    for name, a in (("hand_written", agreement), ("hand_written_batched", agreement_b)):
        if a:
            print(f"predictions agree transferlm vs {name}: {a['agree']}/{a['of']} "
                  f"(max label-probability difference {a['max_prob_diff']:.2e})")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out} ({result['wall_seconds']:.0f}s)")
    problems = []
    if same_ids != n:
        problems.append(f"{n - same_ids} prompts differ in token ids")
    for name, a in (("hand_written", agreement), ("hand_written_batched", agreement_b)):
        if a and a["unexplained"]:
            problems.append(f"{name} disagrees with transferlm outside a near-tie on examples {a['unexplained']}")
    if problems:
        raise SystemExit("implementations disagree: " + "; ".join(problems))


if __name__ == "__main__":
    main()
