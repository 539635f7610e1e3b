"""``transferlm search labels|templates``: LM-BFF's automatic label words and templates, ranked, as JSON.

Wire into the main parser with ``add_search_commands(sub)`` (``sub`` = its subparsers).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

EPILOG_LABELS = """examples:
  transferlm search labels --task SST-2 --data-dir ../shared/data --model splade-tiny --output runs/sst2-labels
  transferlm search labels --task SST-2 --model splade-tiny --template '{sentence} A {answer} one.' --k 20 --n 5 \\
      --output runs/labels --auto --steps 50        # also fine-tune the top n and re-rank them on dev"""
EPILOG_TEMPLATES = """examples:
  transferlm search templates --task SST-2 --model splade-tiny --output runs/sst2-templates
  transferlm search templates --task cr --model splade-tiny --generator path/to/t5 \\
      --label-words '{"0": "terrible", "1": "great"}' --output runs/cr-templates"""


def add_search_commands(subparsers: Any) -> None:
    """Add ``search labels`` and ``search templates`` to the ``transferlm`` subparsers."""
    from ..cli import _add_run_options  # the run flags: task, data, model, shots, seed, training options

    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("search", help="automatic label words or templates (LM-BFF), ranked on dev",
                              description="automatic prompt search as in LM-BFF; writes ranked candidates to JSON",
                              formatter_class=fmt, epilog=EPILOG_LABELS + "\n" + EPILOG_TEMPLATES.split("\n", 1)[1])
    sub = p.add_subparsers(dest="search_command", required=True)
    lab = sub.add_parser("labels", help="label words for a template", formatter_class=fmt, epilog=EPILOG_LABELS,
                         description="top-k words per class by summed log-prob over its training examples, then the "
                                     "top-n assignments by zero-shot score; writes OUTPUT/label_words.json")
    _add_run_options(lab, compare=False, prompt=False)
    lab.add_argument("--template", help="template (default: the task's LM-BFF template)")
    lab.add_argument("--k", type=int, default=10, help="candidate words per class (default 10)")
    lab.add_argument("--n", type=int, default=10, help="assignments kept (default 10)")
    lab.add_argument("--beam", type=int, default=1000, help="beam width over classes (default 1000)")
    lab.set_defaults(fn=cmd_search_labels)
    tpl = sub.add_parser("templates", help="templates for label words", formatter_class=fmt, epilog=EPILOG_TEMPLATES,
                         description="T5 span filling around the label word (or a built-in pool), ranked by "
                                     "zero-shot score; writes OUTPUT/templates.json")
    _add_run_options(tpl, compare=False, prompt=False)
    tpl.add_argument("--label-words", help="JSON mapping label -> word (default: the task's LM-BFF words)")
    tpl.add_argument("--generator", default="pool", help="a T5 model (folder or hub id) to generate templates, "
                                                         "or 'pool' for the built-in patterns (default)")
    tpl.add_argument("--beams", type=int, default=5, help="T5 beams per example (default 5)")
    tpl.add_argument("--n", type=int, default=20, help="templates kept (default 20)")
    tpl.set_defaults(fn=cmd_search_templates)
    for q in (lab, tpl):
        q.add_argument("--rank-on", choices=["dev", "train"], default="dev",
                       help="split the zero-shot ranking uses (default dev; LM-BFF's paper uses train)")
        q.add_argument("--auto", action="store_true",
                       help="also fine-tune each kept candidate with prompt-finetune and re-rank by dev score")


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    from ..cli import build_run_dict
    from ..config import RunConfig
    from ..protocol.run import load_run_data

    run = build_run_dict(args)["run"]
    run.setdefault("method", "prompt-finetune")
    cfg = RunConfig.from_dict(run, source=args.config or "flags")
    if not cfg.output:
        raise ConfigError("search needs --output (a folder for the ranked candidates)")
    spec, data = load_run_data(cfg)
    if (args.auto or args.rank_on == "dev") and not data.dev:
        what = "--auto selects fine-tuned candidates on dev" if args.auto else "ranking on dev"
        raise ConfigError(f"{what}, but task {spec.name} has no dev split here; pass --dev-file with --train-file "
                          "(or --rank-on train without --auto)")
    if not data.train:
        raise ConfigError(f"task {spec.name}: empty training split")
    return cfg, spec, data, data.dev if args.rank_on == "dev" else data.train


def _backbone(cfg: Any) -> Any:
    from ..methods.prompting.common import prompt_head
    from ..models.loading import load_backbone

    return load_backbone(cfg.model, head=prompt_head(cfg.model))


def _search_length(cfg: Any, backbone: Any) -> int:
    """The inputs' cut in the runs the candidates are meant for (``--auto`` fine-tunes them with method_args)."""
    from ..methods.prompting.prompt_finetune import planned_max_length

    return planned_max_length(backbone.model, cfg.method_args.get("peft"), cfg.train.max_length)


def finetune_rerank(cfg: Any, candidates: list[dict[str, Any]], args_of: Any) -> None:
    """LM-BFF's last step: fine-tune each candidate (prompt-finetune) and re-rank by its dev score."""
    from dataclasses import replace

    from ..protocol.run import run

    for cand in candidates:
        args = {**cfg.method_args, **args_of(cand)}
        res = run(replace(cfg, method="prompt-finetune", method_args=args, output=None, quiet=True)).results
        cand["finetuned_dev"] = round(res["dev_metrics"][res["primary_metric"]], 4)
    candidates.sort(key=lambda c: c["finetuned_dev"], reverse=True)


def _write(folder: str, name: str, payload: dict[str, Any]) -> Path:
    from ..io import write_json

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)
    return path


def cmd_search_labels(args: argparse.Namespace) -> int:
    from ..prompts.defaults import resolve_template
    from ..prompts.search import search_label_words

    cfg, spec, data, rank = _setup(args)
    backbone = _backbone(cfg)
    # --template was resolved into method_args already (a templates.json from `search templates` included).
    template = resolve_template(spec, cfg.method_args.get("template"), causal=backbone.is_decoder)
    result = search_label_words(backbone, spec, template, data.train, rank, k=args.k, n=args.n, beam=args.beam,
                                max_length=_search_length(cfg, backbone))
    result.update(task=spec.name, model=cfg.model, seed=cfg.seed, rank_on=args.rank_on)
    if args.auto:
        finetune_rerank(cfg, result["assignments"], lambda c: {"template": template.source,
                                                                "label_words": c["label_words"]})
    if result["assignments"]:
        result["best"] = {"template": template.source, "label_words": result["assignments"][0]["label_words"]}
    path = _write(cfg.output, "label_words.json", result)
    for a in result["assignments"][:5]:
        score = a.get("finetuned_dev", a["zero_shot"])
        print(f"{score:.4f}  {json.dumps(a['label_words'])}")
    print(f"wrote {path}")
    return 0


def cmd_search_templates(args: argparse.Namespace) -> int:
    from ..prompts.defaults import get_default
    from ..prompts.search import pool_templates, search_templates, t5_templates
    from ..prompts.verbalizer import normalize_label_words

    cfg, spec, data, rank = _setup(args)
    if spec.regression:
        raise ConfigError("template search is for classification tasks")
    words = cfg.method_args.get("label_words")  # --label-words: JSON or a label_words.json, resolved already
    if words is None:
        default = get_default(spec.name)
        if default is None:
            raise ConfigError(f"task {spec.name} has no default label words; pass --label-words")
        words = dict(default.mapping)
    backbone = _backbone(cfg)
    if args.generator == "pool":
        candidates = pool_templates(spec.is_pair)
    else:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from ..models.zoo import locate_model

        path = str(locate_model(args.generator).path)
        t5, t5_tok = AutoModelForSeq2SeqLM.from_pretrained(path, use_safetensors=True), AutoTokenizer.from_pretrained(path)
        firsts = [w[0] for w in normalize_label_words(words, spec.labels, spec.label_names or spec.labels)]
        candidates = t5_templates(t5, t5_tok, data.train, firsts, is_pair=spec.is_pair, beams=args.beams,
                                  top=max(args.n * 2, 20))
    ranked = search_templates(backbone, spec, words, candidates, rank, max_length=_search_length(cfg, backbone))[:args.n]
    if args.auto:
        finetune_rerank(cfg, ranked, lambda c: {"template": c["template"], "label_words": words})
    result = {"task": spec.name, "model": cfg.model, "seed": cfg.seed, "rank_on": args.rank_on,
              "generator": args.generator, "label_words": words, "metric": spec.metric, "templates": ranked}
    if ranked:
        result["best"] = {"template": ranked[0]["template"], "label_words": words}
    path = _write(cfg.output, "templates.json", result)
    for r in ranked[:5]:
        print(f"{r.get('finetuned_dev', r['zero_shot']):.4f}  {r['template']}")
    print(f"wrote {path}")
    return 0
