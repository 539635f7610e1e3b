"""The ``transferlm`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .config import (
    CompareConfig,
    RunConfig,
    check_sections,
    from_dict,
    load_yaml,
    parse_shots,
    set_dotted,
    yaml_loads,
)
from .errors import ConfigError, TransferLMError

EXAMPLES = {
    "run": """examples:
  transferlm run --task SST-2 --data-dir ../shared/data --shots 16 --seed 13 --model minilm-l6 \\
      --method finetune --output runs/sst2-ft-13
  transferlm run --task SST-2 --shots full --model minilm-l6 --set train.epochs=1 --output runs/sst2-full
  transferlm run --task mine --train-file train.csv --test-file test.csv --text-columns review \\
      --label-column stars --shots 8 --output runs/mine
  transferlm run --config experiment.yaml --seed 21
  transferlm run --task SST-2 --model smollm2-135m --method prompt-finetune --steps 100 --output runs/sst2-pft
  transferlm run --task SST-2 --model splade-tiny --method prompt-zero-shot --auto labels --output runs/sst2-zs
  transferlm run --task cr --model smollm2-135m --method icl --set method_args.k=4 --output runs/cr-icl""",
    "compare": """examples:
  transferlm compare --task SST-2 --data-dir ../shared/data --methods finetune --model minilm-l6 --output runs/cmp
  transferlm compare --task cr --methods finetune --seeds 13,21 --grid train.learning_rate=1e-5,3e-5 \\
      --output runs/cr""",
    "tasks": "examples:\n  transferlm tasks\n  transferlm tasks --data-dir ../shared/data",
    "models": "examples:\n  transferlm models",
    "methods": "examples:\n  transferlm methods",
    "probe": """examples:
  transferlm probe --task SST-2 --data-dir ../shared/data --model minilm-l6 --output runs/probe
  transferlm probe --task cr --model minilm-l6 --layers 2,4,6 --steps 50 --output runs/probe-cr""",
    "pretrain": """examples:
  # DAPT on science text, then TAPT on chemprot's own training text (less the dev texts of the runs it
  # prepares for: --tapt-shots/--tapt-seeds, as the runs' --shots/--seed), in one command:
  transferlm pretrain --model minilm-l6 --text ../shared/data/unlabeled/scibert/mag/dev.txt \\
      --tapt-task chemprot --tapt-shots full --tapt-seeds 13 --data-dir ../shared/data --steps 200 \\
      --output models/minilm-sci
  transferlm run --task chemprot --shots full --model models/minilm-sci --output runs/chemprot-dapt
  transferlm pretrain --model smollm2-135m --text reviews.jsonl --text-field review --output models/smol-rev""",
    "multitask": """examples:
  transferlm multitask --tasks SST-2,cr,mr --data-dir ../shared/data --model minilm-l6 --sampling temperature \\
      --temperature 2 --steps 300 --output runs/mt
  transferlm run --task SST-2 --shots 16 --model runs/mt/model --output runs/sst2-after-mt""",
    "kshot": """examples:
  transferlm kshot --task SST-2 --data-dir ../shared/data --output /tmp/kshot
  transferlm kshot --task mr --data-dir ../shared/data --k 16 --seeds 13,21 --output /tmp/kshot --verify""",
}


def _add_run_options(p: argparse.ArgumentParser, compare: bool, prompt: bool = True) -> None:
    g = p.add_argument_group("what to run")
    g.add_argument("--config", help="YAML file with run settings (flags override it)")
    g.add_argument("--task", help="task name (see `transferlm tasks`) or a name for your own files")
    g.add_argument("--data-dir", help="data root (default: $TRANSFERLM_DATA)")
    g.add_argument("--shots", help="examples per class (K), or 'full'/0 for the whole training set (default 16)")
    g.add_argument("--model", help="zoo name (see `transferlm models`), local folder or hub id (default minilm-l6)")
    g.add_argument("--output", help="output folder" + (" for every run and summary.json" if compare else ""))
    if compare:
        g.add_argument("--methods", help="comma-separated methods (default finetune)")
        g.add_argument("--seeds", help="comma-separated seeds (default 13,21,42,87,100)")
        g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="hyper-parameter grid searched per seed on dev, e.g. train.learning_rate=1e-5,2e-5")
    else:
        g.add_argument("--method", help="transfer method (see `transferlm methods`; default finetune)")
        g.add_argument("--seed", type=int, help="random seed; also picks the k-shot split (default 13)")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=float, help="learning rate (train.learning_rate)")
    t.add_argument("--steps", type=int, help="optimisation steps (train.max_steps)")
    t.add_argument("--batch-size", type=int, help="global batch size (train.batch_size)")
    t.add_argument("--max-length", type=int, help="max tokens per input (train.max_length)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, dotted, e.g. --set train.eval_every=100 --set method_args.pooling=mean")
    t.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    t.add_argument("--intermediate-task", help="sequential transfer: fine-tune on this task first (e.g. MNLI for RTE)")
    if prompt:
        q = p.add_argument_group("prompts (prompt-zero-shot, icl, prompt-finetune)")
        q.add_argument("--template", help="template, e.g. '{sentence} It was {answer}.', or a templates.json "
                                          "from `transferlm search templates` (its best)")
        q.add_argument("--label-words", help="JSON label -> word(s), e.g. '{\"0\": \"terrible\", \"1\": \"great\"}', "
                                             "or a label_words.json from `transferlm search labels` (its best)")
        q.add_argument("--auto", nargs="?", const="both", choices=["labels", "templates", "both"],
                       help="search label words and/or a template on this seed's dev split first (LM-BFF auto)")
    d = p.add_argument_group("your own data")
    d.add_argument("--train-file", help="training file (.csv .tsv .jsonl .json)")
    d.add_argument("--dev-file", help="dev file (default: K per class sampled after train, or a hold-out)")
    d.add_argument("--test-file", help="test file")
    d.add_argument("--text-columns", help="one or two comma-separated text columns (names or 0-based indices)")
    d.add_argument("--label-column", help="label column (name or 0-based index)")
    d.add_argument("--labels", help="comma-separated label values, in class order")
    d.add_argument("--empty-text", choices=["error", "drop", "keep"], help="what to do with empty text rows")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")


def _column(v: str) -> str | int:
    return int(v) if v.strip().isdigit() else v.strip()


def _yaml_value(raw: str) -> Any:
    try:
        return yaml_loads(raw)
    except yaml.YAMLError:
        return raw


def _key_values(items: list[str], flag: str) -> list[tuple[str, Any]]:
    """``KEY=VALUE`` options in the order given (a YAML value each); a malformed one is an error naming ``flag``."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} expects KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        pairs.append((k.strip(), _yaml_value(v)))
    return pairs


def build_run_dict(args: argparse.Namespace) -> dict[str, Any]:
    d: dict[str, Any] = load_yaml(args.config) if args.config else {}
    run_keys = {k: d.pop(k) for k in list(d) if k not in ("methods", "seeds", "grid")}
    compare_keys = d
    check_sections(RunConfig, run_keys, args.config)
    check_sections(CompareConfig, compare_keys, args.config)
    r = run_keys
    flags = {"task": args.task, "model": args.model, "output": args.output,
             "method": getattr(args, "method", None), "seed": getattr(args, "seed", None)}
    for k, v in flags.items():
        if v is not None:
            r[k] = v
    data = {"data_dir": args.data_dir, "train_file": args.train_file, "dev_file": args.dev_file,
            "test_file": args.test_file, "label_column": _column(args.label_column) if args.label_column else None,
            "text_columns": [_column(c) for c in args.text_columns.split(",")] if args.text_columns else None,
            "labels": [x.strip() for x in args.labels.split(",")] if args.labels else None,
            "empty_text": args.empty_text}
    for k, v in data.items():
        if v is not None:
            set_dotted(r, f"data.{k}", v)
    if args.shots is not None:  # the file's data.shots is read by from_dict (parse_shots), naming the file
        set_dotted(r, "data.shots", parse_shots(args.shots))
    for k, v in {"learning_rate": args.lr, "max_steps": args.steps, "batch_size": args.batch_size,
                 "max_length": args.max_length}.items():
        if v is not None:
            set_dotted(r, f"train.{k}", v)
    for k, v in _key_values(args.set, "--set"):
        set_dotted(r, k, v)
    for key, value in _prompt_args(args).items():
        set_dotted(r, f"method_args.{key}", value)
    if args.no_resume:
        r["resume"] = False
    if args.intermediate_task:
        set_dotted(r, "intermediate.task", args.intermediate_task)
    if args.quiet:
        r["quiet"] = True
    if "data_dir" not in (r.get("data") or {}):
        set_dotted(r, "data.data_dir", os.environ.get("TRANSFERLM_DATA"))
    return {"run": r, **compare_keys}


def _search_best(path: Path, key: str) -> Any:
    """The ``best`` candidate's ``key`` in a file written by ``transferlm search``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
    best = doc.get("best") if isinstance(doc, dict) else None
    if not isinstance(best, dict) or key not in best:
        raise ConfigError(f"{path}: no 'best.{key}' (expected a file written by `transferlm search`)")
    return best[key]


def _prompt_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    template = getattr(args, "template", None)
    if template is not None:
        out["template"] = _search_best(Path(template), "template") if template.endswith(".json") else template
    words = getattr(args, "label_words", None)
    if words is not None:
        if words.endswith(".json") and not words.lstrip().startswith(("{", "[")):
            out["label_words"] = _search_best(Path(words), "label_words")
        else:
            try:
                out["label_words"] = json.loads(words)
            except ValueError:
                raise ConfigError(f"--label-words: '{words}' is neither JSON (e.g. '{{\"0\": \"bad\", "
                                  "\"1\": \"good\"}') nor a .json file from `transferlm search labels`") from None
    if isinstance(getattr(args, "auto", None), str):  # `search --auto` is a different, boolean flag
        out["auto"] = args.auto
    return out


def _list_arg(raw: Any, cast: type, where: str = "list") -> list[Any]:
    """A comma-separated option (or a config file's list) as a list of ``cast``; ``where`` names it in errors."""
    bad = ConfigError(f"{where}: bad value {raw!r}; expected comma-separated {cast.__name__}s (e.g. "
                      f"{'13,21' if cast is int else 'a,b'})")
    if isinstance(raw, dict | bool):
        raise bad
    items = raw if isinstance(raw, list) else str(raw).split(",")
    if any(isinstance(x, dict | list | bool) or (isinstance(x, float) and cast is int) for x in items):
        raise bad
    try:
        return [cast(str(x).strip()) for x in items if str(x).strip()]
    except ValueError:
        raise bad from None


def run_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of ``run``/``probe``/``search`` flags (and their ``--config`` file); reads no data or model."""
    return RunConfig.from_dict(build_run_dict(args)["run"], source=args.config or "flags")


def cmd_run(args: argparse.Namespace) -> int:
    from .protocol.run import run

    cfg = run_config(args)
    if not cfg.output:
        raise ConfigError("run needs --output (a folder for results.json)")
    res = run(cfg).results
    metrics = res["metrics"] or res["dev_metrics"]
    print(f"{res['task']} {res['method']} seed {res['seed']}: {res['primary_metric']} = "
          f"{metrics.get(res['primary_metric'], float('nan')):.4f} on {res['split']} "
          f"({res['trainable_params']:,} trainable of {res['total_params']:,} params; "
          f"train {res['train_seconds']:.1f}s) -> {cfg.output}/results.json")
    return 0


def compare_config(args: argparse.Namespace) -> CompareConfig:
    """The CompareConfig of ``compare``'s flags (and its ``--config`` file); reads no data or model."""
    d = build_run_dict(args)
    run_cfg = RunConfig.from_dict(d["run"], source=args.config or "flags")
    grid = dict(d.get("grid") or {})
    for item in args.grid:
        if "=" not in item:
            raise ConfigError(f"--grid expects KEY=V1,V2, got '{item}'")
        k, v = item.split("=", 1)
        grid[k.strip()] = [_yaml_value(x) for x in v.split(",")]
    return CompareConfig(run=run_cfg, output=run_cfg.output,
                           methods=_list_arg(args.methods or d.get("methods") or "finetune", str,
                                             "--methods" if args.methods else f"{args.config}.methods"),
                           seeds=_list_arg(args.seeds or d.get("seeds") or "13,21,42,87,100", int,
                                           "--seeds" if args.seeds else f"{args.config}.seeds"),
                           grid=grid)


def cmd_compare(args: argparse.Namespace) -> int:
    from .protocol.compare import compare

    cfg = compare_config(args)
    summary = compare(cfg)
    print(summary["table"])
    print(f"summary: {cfg.output}/summary.json")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .data.tasks import list_tasks

    rows = [("task", "family", "labels", "pair", "metric", "description")]
    for t in list_tasks():
        rows.append((t.name, t.family, "regression" if t.regression else str(len(t.labels)),
                     "yes" if t.is_pair else "no", t.metric, t.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if args.data_dir or os.environ.get("TRANSFERLM_DATA"):
        from .data.loading import find_task_dir, resolve_data_dir

        root = resolve_data_dir(args.data_dir)
        missing = []
        for t in list_tasks():
            try:
                find_task_dir(t.name, root)
            except TransferLMError:
                missing.append(t.name)
        print(f"\ndata: {root}; " + (f"missing: {', '.join(missing)}" if missing else "all tasks present"))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models.zoo import format_models_table, list_models

    print(format_models_table(list_models()))
    print("\nAny Hugging Face model id or local model folder also works wherever a model name is asked for.")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import list_methods

    for name, cls in list_methods().items():
        print(f"{name:20s} {cls.description}")
    return 0


def cmd_kshot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data.kshot import generate_kshot, read_checksums, verify_kshot
    from .data.loading import find_task_dir, resolve_data_dir
    from .io import check_output_dir

    root = resolve_data_dir(args.data_dir)
    task_dir = find_task_dir(args.task, root)
    out = check_output_dir(Path(args.output) / args.task)
    seeds = _list_arg(args.seeds, int, "--seeds")
    files = generate_kshot(args.task, task_dir / "original", out, k=args.k, seeds=seeds)
    print(f"wrote {len(files)} files under {out}")
    if args.verify:
        sums_path = task_dir.parent / "CHECKSUMS-lm-bff-k-shot.txt"
        if not sums_path.is_file():
            raise ConfigError(f"--verify needs {sums_path}")
        n, bad = verify_kshot(out, read_checksums(sums_path), args.task)
        print(f"verified {n} files against {sums_path.name}: " + ("all identical" if not bad else f"MISMATCH {bad}"))
        return 1 if bad or n == 0 else 0
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from .protocol.probe import format_probe, probe

    cfg = run_config(args)
    layers = _list_arg(args.layers, int, "--layers") if args.layers else None
    report = probe(cfg, layers)
    print(format_probe(report))
    if cfg.output:
        print(f"report: {cfg.output}/probe.json")
    return 0


def pretrain_config(args: argparse.Namespace) -> Any:
    """The PretrainConfig of ``pretrain``'s flags (and its ``--config`` file); reads no text or model."""
    from .training.pretrain import PretrainConfig

    d: dict[str, Any] = load_yaml(args.config) if args.config else {}
    flags = {"model": args.model, "output": args.output, "text_field": args.text_field, "objective": args.objective,
             "data_dir": args.data_dir or os.environ.get("TRANSFERLM_DATA"), "steps": args.steps,
             "learning_rate": args.lr, "batch_size": args.batch_size, "max_length": args.max_length,
             "seed": args.seed, "mlm_probability": args.mlm_probability, "warmup_ratio": args.warmup_ratio,
             "grad_accum_steps": args.grad_accum_steps}
    d.update({k: v for k, v in flags.items() if v is not None})
    texts = d.get("texts") or []
    texts = [texts] if isinstance(texts, str) else texts  # `texts: domain.txt`: one source
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ConfigError(f"{args.config}.texts must be a list of text files or folders (or task:NAME), "
                          f"got {texts!r:.60}")
    texts = texts + list(args.text or []) + [f"task:{t}" for t in args.tapt_task or []]
    d["texts"] = texts
    if args.tapt_shots is not None:
        d["tapt_shots"] = args.tapt_shots  # "full" is read by from_dict (parse_shots)
    if args.tapt_seeds is not None:
        d["tapt_seeds"] = _list_arg(args.tapt_seeds, int, "--tapt-seeds")
    if args.whole_word_mask:
        d["whole_word_mask"] = True
    if args.quiet:
        d["quiet"] = True
    return from_dict(PretrainConfig, d, source=args.config or "flags")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .training.pretrain import pretrain

    cfg = pretrain_config(args)
    report = pretrain(cfg)
    for ph in report["phases"]:
        left_out = f", {ph['excluded_dev_texts']} dev texts left out" if "excluded_dev_texts" in ph else ""
        print(f"{ph['phase']}: perplexity {ph['perplexity_before']:.2f} -> {ph['perplexity_after']:.2f} "
              f"({ph['train_texts']} texts{left_out}, {ph['seconds']:.1f}s, {ph['tokens_per_second']:.0f} tokens/s)")
    print(f"adapted model: {cfg.output} (use it with run --model)")
    return 0


def multitask_config(args: argparse.Namespace) -> Any:
    """The MultitaskConfig of ``multitask``'s flags (and its ``--config`` file); reads no data or model."""
    from .protocol.multitask import MultitaskConfig

    d: dict[str, Any] = load_yaml(args.config) if args.config else {}
    check_sections(MultitaskConfig, d, args.config)
    for k, v in {"model": args.model, "output": args.output, "seed": args.seed, "sampling": args.sampling,
                 "temperature": args.temperature}.items():
        if v is not None:
            d[k] = v
    if args.tasks:
        d["tasks"] = _list_arg(args.tasks, str, "--tasks")
    set_dotted(d, "data.data_dir", args.data_dir or (d.get("data") or {}).get("data_dir") or os.environ.get("TRANSFERLM_DATA"))
    if args.shots is not None:
        set_dotted(d, "data.shots", parse_shots(args.shots))
    if args.steps is not None:
        set_dotted(d, "train.max_steps", args.steps)
    if args.lr is not None:
        set_dotted(d, "train.learning_rate", args.lr)
    if args.quiet:
        d["quiet"] = True
    if args.no_resume:
        d["resume"] = False
    return from_dict(MultitaskConfig, d, source=args.config or "flags")


def cmd_multitask(args: argparse.Namespace) -> int:
    from .protocol.multitask import multitask

    res = multitask(multitask_config(args))
    for task, r in res["tasks"].items():
        m = r["metrics"] or r["dev_metrics"]
        print(f"{task}: {r['primary_metric']} = {m.get(r['primary_metric'], float('nan')):.4f} "
              f"(sampling p = {res['probabilities'][task]})")
    if "model_dir" in res:
        print(f"model: {res['model_dir']} (transferlm run --model {res['model_dir']} ...)")
    return 0


def add_command(subparsers: Any, name: str, help_: str, fn: Any, epilog: str) -> argparse.ArgumentParser:
    """One ``transferlm NAME`` subcommand running ``fn(args)``, with its examples as the epilog."""
    p = subparsers.add_parser(name, help=help_, description=help_, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(fn=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="transferlm", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Transfer a pretrained language model to your task and measure which method wins.",
        epilog="examples:\n  transferlm compare --task SST-2 --data-dir ../shared/data --methods finetune "
               "--model minilm-l6 --output runs/cmp\n  transferlm run --help")
    parser.add_argument("--version", action="version", version=f"transferlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, fn: Any) -> argparse.ArgumentParser:
        return add_command(sub, name, help_, fn, EXAMPLES[name])

    _add_run_options(add("run", "train and evaluate one method on one task and seed", cmd_run), compare=False)
    _add_run_options(add("compare", "run methods over seeds and print a mean (std) table", cmd_compare), compare=True)
    add("tasks", "list the built-in tasks", cmd_tasks).add_argument("--data-dir")
    add("models", "list the built-in models and whether each is installed", cmd_models)
    add("methods", "list the transfer methods", cmd_methods)
    pr = add("probe", "train a head on each layer in turn and report the best layer for the task", cmd_probe)
    _add_run_options(pr, compare=False)
    pr.add_argument("--layers", help="comma-separated layers to probe (default: all, 0 = embeddings)")
    pt = add("pretrain", "continued pretraining (DAPT/TAPT) on unlabelled text; writes a model folder", cmd_pretrain)
    pt.add_argument("--config", help="YAML with PretrainConfig keys")
    pt.add_argument("--model", help="model to adapt (zoo name, folder or hub id)")
    pt.add_argument("--text", action="append", help="text file or folder; repeat for consecutive phases (DAPT, ...)")
    pt.add_argument("--tapt-task", action="append", help="a final phase on this task's own training text (TAPT)")
    pt.add_argument("--tapt-shots", help="K per class of the downstream runs, or 'full' (default 16): their dev "
                    "texts are left out of the TAPT text")
    pt.add_argument("--tapt-seeds", help="comma-separated seeds of the downstream runs, whose dev texts are left out "
                    "of the TAPT text (default 13,21,42,87,100)")
    pt.add_argument("--text-field", help="field/column holding the text in jsonl/json/tsv/csv (default text)")
    pt.add_argument("--data-dir", help="data root for --tapt-task (default $TRANSFERLM_DATA)")
    pt.add_argument("--objective", choices=["auto", "mlm", "clm"], help="default: mlm for encoders, clm for decoders")
    pt.add_argument("--whole-word-mask", action="store_true", help="mask whole words (MLM)")
    pt.add_argument("--mlm-probability", type=float)
    pt.add_argument("--steps", type=int, help="optimisation steps per phase (default 200)")
    pt.add_argument("--lr", type=float)
    pt.add_argument("--warmup-ratio", type=float, help="linear warm-up over this fraction of each phase's steps, "
                    "then linear decay (default 0; Gururangan et al. 0.06)")
    pt.add_argument("--batch-size", type=int)
    pt.add_argument("--grad-accum-steps", type=int, help="micro-batches of --batch-size per optimizer step "
                    "(effective batch = batch size x this; default 1)")
    pt.add_argument("--max-length", type=int)
    pt.add_argument("--seed", type=int)
    pt.add_argument("--output", help="folder for the adapted model")
    pt.add_argument("--quiet", action="store_true")
    mt = add("multitask", "multi-task fine-tuning: one shared encoder, one head per task", cmd_multitask)
    mt.add_argument("--config")
    mt.add_argument("--tasks", help="comma-separated tasks")
    mt.add_argument("--data-dir")
    mt.add_argument("--model")
    mt.add_argument("--shots", help="K per class, or full")
    mt.add_argument("--seed", type=int)
    mt.add_argument("--steps", type=int)
    mt.add_argument("--lr", type=float)
    mt.add_argument("--sampling", choices=["proportional", "temperature", "uniform"])
    mt.add_argument("--temperature", type=float, help="T for temperature sampling: p ∝ n^(1/T)")
    mt.add_argument("--output", help="writes multitask.json, the model (OUTPUT/model) and checkpoints")
    mt.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    mt.add_argument("--quiet", action="store_true")
    k = add("kshot", "regenerate LM-BFF k-shot splits from a task's original/ files", cmd_kshot)
    k.add_argument("--task", required=True)
    k.add_argument("--data-dir")
    k.add_argument("--output", required=True)
    k.add_argument("--k", type=int, default=16)
    k.add_argument("--seeds", default="13,21,42,87,100")
    k.add_argument("--verify", action="store_true", help="compare md5s with CHECKSUMS-lm-bff-k-shot.txt")
    from .prompts.cli import add_search_commands
    from .reports.cli import add_report_commands
    from .serving.cli import add_serve_command

    add_serve_command(sub)
    add_report_commands(sub)
    add_search_commands(sub)
    return parser


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        if quiet:
            transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "quiet", False))
    try:
        return args.fn(args)
    except TransferLMError as e:
        print(f"transferlm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("transferlm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `transferlm reproduce --dry-run | head`: the reader left; stop quietly, as other Unix tools do, and keep
        # the interpreter from failing again when it flushes stdout at exit.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is no file (captured): nothing is left to flush at exit
            pass
        return 141
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear down a torchrun/accelerate process group before exit: left to interpreter shutdown, gloo's threads can
    abort a rank ("terminate called without an active exception") after its run has finished."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to check (cheap commands stay cheap)
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
