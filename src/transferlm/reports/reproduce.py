"""``transferlm reproduce``: the experiments behind the seed lecture's three tables, then their report.

Suites (lecture slide → what runs):

* ``lmbff`` (slide 25, Gao et al. 2021): prompt-based zero-shot, in-context learning, fine-tuning,
  prompt-based fine-tuning (manual prompt), + demonstrations, and with the automatic template + demonstrations;
  K=16, seeds 13, 21, 42, 87, 100, on SST-2, SST-5, MR, CR, TREC and the pair tasks with a test set
  (RTE, MRPC, QNLI); model ``smollm2-135m``.
* ``peft`` (slide 33, Hu et al. 2021): fine-tuning, BitFit, adapters, LoRA, prefix-tuning, prompt-tuning,
  with their trainable parameters; on ``minilm-l6``; GLUE tasks with a test set (SST-2, MRPC, CoLA, QNLI,
  RTE, STS-B), in the K=16 protocol.
* ``dapt`` (slide 8, Gururangan et al. 2020): fine-tuning from the base model, after domain-adaptive
  pretraining (DAPT), task-adaptive pretraining (TAPT), and DAPT then TAPT; on ACL-ARC, SciERC and IMDB.

A suite is a :class:`Plan`: pretraining steps (dapt) and one ``compare`` per (task, method variant),
each in its own folder. Nothing here trains by itself: it calls :func:`transferlm.protocol.compare.compare`
and :func:`transferlm.training.pretrain.pretrain`, whose caches make a rerun compute only what is
missing or changed (per run: its config and seed), and whose checkpoints let an interrupted run resume.
``--quick`` shrinks every suite to a smoke-sized version (one seed, one task, few steps, a fixed subset
of the test set, a small model for the prompt suite) that takes minutes on two CPU cores.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_SEEDS, CompareConfig, RunConfig, parse_shots, set_dotted
from ..errors import ConfigError
from ..io import as_json, output_lock, write_json
from .collect import ReportError
from .report import ReportFiles, build_report

SUITES = ("lmbff", "peft", "dapt")
SEEDS = list(DEFAULT_SEEDS)
QUICK_SEEDS = [13]

# --- the lecture's published numbers (shown beside ours in the report) ---------------------------------

# Slide 25: LM-BFF (Gao et al. 2021), RoBERTa-large, K=16, mean (std) over 5 seeds.
_LMBFF_REF = {
    "Majority": {"SST-2": 50.9, "sst-5": 23.1, "mr": 50.0, "cr": 50.0, "trec": 18.8, "CoLA": 0.0, "QNLI": 49.5,
                 "RTE": 52.7, "MRPC": 81.2},
    "Prompt-based zero-shot": {"SST-2": 83.6, "sst-5": 35.0, "mr": 80.8, "cr": 79.5, "trec": 32.0, "CoLA": 2.0,
                               "QNLI": 50.8, "RTE": 51.3, "MRPC": 61.9},
    '"GPT-3" in-context learning': {"SST-2": (84.8, 1.3), "sst-5": (30.6, 0.9), "mr": (80.5, 1.7),
                                    "cr": (87.4, 0.8), "trec": (26.2, 2.4), "CoLA": (-1.5, 2.4),
                                    "QNLI": (53.8, 0.4), "RTE": (60.4, 1.4), "MRPC": (45.7, 6.0)},
    "Fine-tuning": {"SST-2": (81.4, 3.8), "sst-5": (43.9, 2.0), "mr": (76.9, 5.9), "cr": (75.8, 3.2),
                    "trec": (88.8, 2.1), "CoLA": (33.9, 14.3), "QNLI": (60.2, 6.5), "RTE": (54.4, 3.9),
                    "MRPC": (76.6, 2.5)},
    "Prompt-based FT (man) + demonstrations": {"SST-2": (92.7, 0.9), "sst-5": (47.4, 2.5), "mr": (87.0, 1.2),
                                               "cr": (90.3, 1.0), "trec": (84.8, 5.1), "CoLA": (9.3, 7.3),
                                               "QNLI": (64.5, 4.2), "RTE": (69.1, 3.6), "MRPC": (74.5, 5.3)},
    "Prompt-based FT (auto) + demonstrations": {"SST-2": (92.3, 1.0), "sst-5": (49.2, 1.6), "mr": (85.5, 2.8),
                                                "cr": (89.0, 1.4), "trec": (88.2, 2.0), "CoLA": (14.0, 14.1),
                                                "QNLI": (69.2, 1.9), "RTE": (68.7, 2.3), "MRPC": (77.8, 2.0)},
    "Fine-tuning (full data)": {"SST-2": 95.0, "sst-5": 58.7, "mr": 90.8, "cr": 89.4, "trec": 97.4, "CoLA": 62.6,
                                "QNLI": 93.3, "RTE": 80.9, "MRPC": 91.4},
}
# Slide 33: LoRA paper (Hu et al. 2021), RoBERTa-base, full training sets; (value, std) where printed.
_PEFT_REF = {
    "RoB-base (FT)": ("125.0M", {"SST-2": 94.8, "MRPC": 90.2, "CoLA": 63.6, "QNLI": 92.8, "RTE": 78.7,
                                 "STS-B": 91.2}),
    "RoB-base (BitFit)": ("0.1M", {"SST-2": 93.7, "MRPC": 92.7, "CoLA": 62.0, "QNLI": 91.8, "RTE": 81.5,
                                   "STS-B": 90.8}),
    "RoB-base (Adapter-D)": ("0.3M", {"SST-2": (94.2, 0.1), "MRPC": (88.5, 1.1), "CoLA": (60.8, 0.4),
                                      "QNLI": (93.1, 0.1), "RTE": (71.5, 2.7), "STS-B": (89.7, 0.3)}),
    "RoB-base (Adapter-D, 0.9M)": ("0.9M", {"SST-2": (94.7, 0.3), "MRPC": (88.4, 0.1), "CoLA": (62.6, 0.9),
                                            "QNLI": (93.0, 0.2), "RTE": (75.9, 2.2), "STS-B": (90.3, 0.1)}),
    "RoB-base (LoRA)": ("0.3M", {"SST-2": (95.1, 0.2), "MRPC": (89.7, 0.7), "CoLA": (63.4, 1.2),
                                 "QNLI": (93.3, 0.3), "RTE": (86.6, 0.7), "STS-B": (91.5, 0.2)}),
}
# Slide 8: Don't Stop Pretraining (Gururangan et al. 2020), RoBERTa, full training sets.
_DAPT_REF = {
    "Base": {"chemprot": (81.9, 1.0), "acl-arc": (63.0, 5.8), "sciie": (77.3, 1.9), "imdb": (95.0, 0.2)},
    "DAPT": {"chemprot": (84.2, 0.2), "acl-arc": (75.4, 2.5), "sciie": (80.8, 1.5), "imdb": (95.4, 0.1)},
    "TAPT": {"chemprot": (82.6, 0.4), "acl-arc": (67.4, 1.8), "sciie": (79.3, 1.5), "imdb": (95.5, 0.1)},
    "DAPT + TAPT": {"chemprot": (84.4, 0.4), "acl-arc": (75.6, 3.8), "sciie": (81.3, 1.8), "imdb": (95.6, 0.1)},
}


def _ref_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for method, spec in table.items():
        params, values = spec if isinstance(spec, tuple) else (None, spec)
        for task, v in values.items():
            value, std = v if isinstance(v, tuple) else (v, None)
            rows.append({"method": method, "task": task, "value": value, "std": std,
                         **({"params": params} if params else {})})
    return rows


def lecture_reference(suite: str) -> dict[str, Any]:
    """The lecture's published numbers behind ``suite``'s table, as a report's reference: ``source``, ``note``
    and ``rows`` ({"method", "task", "value", "std", ["params"]})."""
    return {"source": f"Published numbers, lecture {SPECS[suite].slide}",
            "rows": _ref_rows({"lmbff": _LMBFF_REF, "peft": _PEFT_REF, "dapt": _DAPT_REF}[suite]),
            "note": "Different model and data sizes from ours: a reference point, not a target to match."}


# --- suite definitions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One row of a suite's table: a label, the registered method and its options."""

    label: str
    method: str
    method_args: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    quick_method_args: dict[str, Any] = field(default_factory=dict)


LMBFF_VARIANTS = [
    Variant("Prompt-based zero-shot", "prompt-zero-shot"),
    Variant('"GPT-3" in-context learning', "icl", {"k": 4, "selection": "random"}, {"max_length": 256}),
    Variant("Fine-tuning", "finetune"),
    Variant("Prompt-based FT (man)", "prompt-finetune"),
    Variant("Prompt-based FT (man) + demonstrations", "prompt-finetune", {"demonstrations": True},
            {"max_length": 256}, {"demo_eval_samples": 2}),
    Variant("Prompt-based FT (auto) + demonstrations", "prompt-finetune", {"demonstrations": True, "auto": "templates"},
            {"max_length": 256}, {"demo_eval_samples": 2}),
]
# Each method's usual learning rate: PEFT methods want far more than full fine-tuning
# (benchmarks/peft_full.py uses the same table).
PEFT_LEARNING_RATES: dict[str, float] = {"finetune": 5e-5, "bitfit": 1e-3, "adapter": 1e-3, "lora": 1e-3,
                                         "prefix": 5e-4, "prompt-tuning": 1e-2, "ia3": 3e-3}
PEFT_VARIANTS = [
    Variant(label, method, train={"learning_rate": PEFT_LEARNING_RATES[method]})
    for label, method in (("Fine-tuning", "finetune"), ("BitFit", "bitfit"), ("Adapter (Houlsby, m=64)", "adapter"),
                          ("LoRA (r=8, q/v)", "lora"), ("Prefix-tuning (10)", "prefix"),
                          ("Prompt-tuning (20)", "prompt-tuning"))
]
DAPT_VARIANTS = ["Base", "DAPT", "TAPT", "DAPT + TAPT"]
# Domain text for DAPT, relative to the data root, and its text field (benchmarks/dapt.py uses it too).
DOMAIN_TEXT: dict[str, tuple[list[str], str]] = {
    "acl-arc": (["unlabeled/scibert/sci-cite/train.txt"], "text"),
    "sciie": (["unlabeled/scibert/sci-cite/train.txt"], "text"),
    "chemprot": (["unlabeled/scibert/mag/test.txt"], "text"),
    "imdb": (["unlabeled/usb_subsets/amazon_review/dev.json", "unlabeled/usb_subsets/yelp_review/dev.json"], "ori"),
    "SST-2": (["unlabeled/usb_subsets/amazon_review/dev.json", "unlabeled/usb_subsets/yelp_review/dev.json"], "ori"),
    "cr": (["unlabeled/usb_subsets/amazon_review/dev.json"], "ori"),
}


@dataclass(frozen=True)
class SuiteSpec:
    title: str
    slide: str
    model: str
    tasks: list[str]
    quick_tasks: list[str]
    quick_model: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    quick_train: dict[str, Any] = field(default_factory=dict)
    max_test_quick: int = 200
    notes: list[str] = field(default_factory=list)


SPECS: dict[str, SuiteSpec] = {
    "lmbff": SuiteSpec(
        title="LM-BFF few-shot table (lecture slide 25)", slide="slide 25: Gao et al. 2021 (LM-BFF), RoBERTa-large",
        model="smollm2-135m", tasks=["SST-2", "sst-5", "mr", "cr", "trec", "RTE", "MRPC", "QNLI"],
        quick_tasks=["SST-2"], quick_model="splade-tiny",
        quick_train={"max_steps": 16, "eval_every": 8, "learning_rate": 1e-4},
        notes=["LM-BFF: RoBERTa-large (355M), 1,000 steps, a learning-rate grid and T5-generated templates. Here: "
               "the suite's model, transferlm's default training (100 steps, lr 5e-5, batch 8, dev selection "
               "every 25 steps), no grid; 'auto' = the best template on dev from the built-in pool "
               "(method_args.auto=templates) with the manual label words."]),
    "peft": SuiteSpec(
        title="Parameter-efficient fine-tuning (lecture slide 33)",
        slide="slide 33: Hu et al. 2021 (LoRA), RoBERTa-base, full training sets",
        model="minilm-l6", tasks=["SST-2", "MRPC", "CoLA", "QNLI", "RTE", "STS-B"], quick_tasks=["SST-2"],
        quick_train={"max_steps": 20, "eval_every": 10},
        notes=["The lecture's numbers use the full training sets with RoBERTa-base; this suite runs the K=16 "
               "protocol (pass --shots full for whole training sets)."]),
    "dapt": SuiteSpec(
        title="Domain- and task-adaptive pretraining (lecture slide 8)",
        slide="slide 8: Gururangan et al. 2020 (Don't Stop Pretraining), RoBERTa-base, full training sets",
        model="minilm-l6", tasks=["acl-arc", "sciie", "imdb"], quick_tasks=["acl-arc"],
        quick_train={"max_steps": 20, "eval_every": 10},
        notes=["DAPT+TAPT continues from the DAPT model with a TAPT phase. TAPT reads the task's training text "
               "less the dev texts of the suite's fine-tuning runs (their K and seeds), which select on them. "
               "ChemProt is left out by default: a class has fewer than 16 training examples, so K=16 cannot be "
               "sampled (use --tasks chemprot --shots 8)."]),
}
PRETRAIN_STEPS, QUICK_PRETRAIN_STEPS = 200, 10


# --- the plan --------------------------------------------------------------------------------------------

@dataclass
class PretrainStep:
    """One continued-pretraining job; its output folder is a model for later entries."""

    name: str
    dir: str  # relative to the suite output
    config: dict[str, Any]  # PretrainConfig keys (its output is filled in when run)


@dataclass
class Entry:
    """One ``compare`` of one method variant on one task, in its own folder."""

    label: str
    task: str
    method: str
    dir: str  # relative to the suite output
    seeds: list[int]
    run: dict[str, Any]  # RunConfig keys (no method/seed/output: compare sets them)
    grid: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Plan:
    suite: str
    quick: bool
    output: str
    title: str
    entries: list[Entry]
    pretrains: list[PretrainStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reference: dict[str, Any] | None = None

    def runs(self) -> list[dict[str, Any]]:
        """Every (entry, seed) the plan trains or evaluates, in order."""
        return [{"label": e.label, "task": e.task, "method": e.method, "seed": s, "dir": e.dir,
                 "model": e.run["model"]} for e in self.entries for s in e.seeds]

    def manifest(self) -> dict[str, Any]:
        """suite.json: what the report needs to label and order the folders."""
        return {"suite": self.suite, "quick": self.quick, "title": self.title, "notes": self.notes,
                "reference": self.reference,
                # "run": the report shows a compare folder only while its summary is of these settings.
                "entries": [{"label": e.label, "task": e.task, "method": e.method, "dir": e.dir, "seeds": e.seeds,
                             "model": e.run["model"], "run": e.run} for e in self.entries],
                "pretrains": [asdict(p) for p in self.pretrains]}


def _slug(text: str) -> str:
    out = "".join(ch.lower() if ch.isalnum() else "-" for ch in text)
    return "-".join(p for p in out.split("-") if p)


def build_plan(suite: str, *, quick: bool = False, output: str | None = None, model: str | None = None,
               data_dir: str | None = None, tasks: list[str] | None = None, seeds: list[int] | None = None,
               shots: int | None | str = "default", max_test: int | None | str = "default",
               overrides: dict[str, Any] | None = None, pretrain_overrides: dict[str, Any] | None = None) -> Plan:
    """The runs behind ``suite`` (no I/O: the plan can be inspected, tested and printed before anything runs).

    ``overrides`` are dotted RunConfig keys applied to every run (``{"train.max_steps": 50}``);
    ``pretrain_overrides`` are PretrainConfig fields applied to every pretraining step of the dapt suite
    (``{"steps": 80, "max_length": 64}``: the pretraining budget, which dominates that suite's cost).
    """
    if suite not in SPECS:
        raise ConfigError(f"unknown suite '{suite}'; choose one of {', '.join(SUITES)}")
    spec = SPECS[suite]
    data_dir = data_dir or os.environ.get("TRANSFERLM_DATA")
    output = output or f"runs/reproduce-{suite}{'-quick' if quick else ''}"
    data_root = os.path.abspath(data_dir) if data_dir else None
    tasks = list(tasks or (spec.quick_tasks if quick else spec.tasks))
    seeds = list(seeds or (QUICK_SEEDS if quick else SEEDS))
    model = model or (spec.quick_model if quick and spec.quick_model else spec.model)
    shots_value = 16 if shots == "default" else shots
    test_cap = (spec.max_test_quick if quick else None) if max_test == "default" else max_test
    train = dict(spec.quick_train if quick else spec.train)
    notes = list(spec.notes)
    if quick:
        notes.insert(0, f"--quick: {len(seeds)} seed(s), tasks {', '.join(tasks)}, model {model}, "
                        f"training {', '.join(f'{k}={v}' for k, v in train.items())}, {f'test subset of at most {test_cap} examples' if test_cap is not None else 'the whole test split'}; a smoke test of the "
                        "pipeline, not a reproduction.")
    # What the command line changed is said in the report: its tables and notes otherwise describe the
    # suite's defaults (e.g. "100 steps") and "the test split" for scores on a subset of it.
    if test_cap is not None and not quick:
        notes.append(f"Test scores on a fixed random subset of at most {test_cap} test examples (--max-test).")
    if overrides:
        notes.append("Settings for every run (--set): " + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ".")

    def run_dict(variant: Variant | None, task: str, run_model: str) -> dict[str, Any]:
        d: dict[str, Any] = {"task": task, "model": run_model, "quiet": True,
                             "data": {"data_dir": data_root, "shots": shots_value},
                             "train": {**train, **(variant.train if variant else {})},
                             "method_args": dict(variant.method_args) if variant else {}}
        if variant and quick:
            d["method_args"].update(variant.quick_method_args)
        if test_cap is not None:
            d["data"]["max_test"] = test_cap
        for key, value in (overrides or {}).items():
            set_dotted(d, key, copy.deepcopy(value))
        return d

    entries: list[Entry] = []
    pretrains: list[PretrainStep] = []
    if suite in ("lmbff", "peft"):
        variants = LMBFF_VARIANTS if suite == "lmbff" else PEFT_VARIANTS
        for task in tasks:
            for v in variants:
                entries.append(Entry(v.label, task, v.method, f"{task}/{_slug(v.label)}", seeds,
                                     run_dict(v, task, model)))
    else:
        steps = QUICK_PRETRAIN_STEPS if quick else PRETRAIN_STEPS
        base_pre = {"steps": steps, "data_dir": data_root, "seed": 13}
        if quick:
            base_pre.update(head_warmup_steps=steps // 2, max_eval_texts=32, eval_every=0, batch_size=8)
        base_pre.update(_pretrain_settings(pretrain_overrides or {}))
        if pretrain_overrides:
            notes.append("Pretraining settings for every DAPT/TAPT step (--pretrain-set): "
                         + ", ".join(f"{k}={v}" for k, v in pretrain_overrides.items()) + ".")
        for task in tasks:
            if task not in DOMAIN_TEXT:
                raise ConfigError(f"the dapt suite has no domain text for task '{task}'; "
                                  f"choose from {', '.join(DOMAIN_TEXT)}")
            files, text_field = DOMAIN_TEXT[task]
            domain = [os.path.join(data_root, f) if data_root else f for f in files]
            # Tasks of one domain share its DAPT model (acl-arc and sciie: the same science text).
            corpus = "+".join(Path(f).parent.name for f in files)
            dapt_dir = f"models/dapt-{_slug(corpus)}"
            tapt_dir, both_dir = f"models/{task}/tapt", f"models/{task}/dapt-tapt"
            if not any(p.dir == dapt_dir for p in pretrains):
                pretrains.append(PretrainStep(f"DAPT on {corpus}", dapt_dir,
                                              {**base_pre, "model": model, "texts": domain, "text_field": text_field}))
            # TAPT leaves out the dev texts of this task's fine-tuning runs: their K (after --set) and seeds.
            tapt = {"texts": [f"task:{task}"], "tapt_seeds": list(seeds),
                    "tapt_shots": parse_shots(run_dict(None, task, model)["data"].get("shots"), "data.shots")}
            pretrains += [
                PretrainStep(f"{task} TAPT", tapt_dir, {**base_pre, "model": model, **tapt}),
                PretrainStep(f"{task} DAPT + TAPT", both_dir, {**base_pre, "model": _abs(output, dapt_dir), **tapt}),
            ]
            models = {"Base": model, "DAPT": _abs(output, dapt_dir), "TAPT": _abs(output, tapt_dir),
                      "DAPT + TAPT": _abs(output, both_dir)}
            for label in DAPT_VARIANTS:
                entries.append(Entry(label, task, "finetune", f"{task}/{_slug(label)}", seeds,
                                     run_dict(None, task, models[label])))
    reference = lecture_reference(suite)
    title = spec.title + (" — quick" if quick else "")
    return Plan(suite=suite, quick=quick, output=output, title=title, entries=entries, pretrains=pretrains,
                notes=notes, reference=reference)


def _pretrain_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """Checked PretrainConfig overrides: a misspelt key fails here, before hours of work start."""
    from dataclasses import fields

    from ..training.pretrain import PretrainConfig

    allowed = {f.name for f in fields(PretrainConfig)} - {"model", "output", "texts", "text_field", "data_dir",
                                                         "quiet", "tapt_shots", "tapt_seeds"}
    for key in overrides:
        if key not in allowed:
            raise ConfigError(f"--pretrain-set: unknown pretraining setting '{key}'; "
                              f"choose from {', '.join(sorted(allowed))}")
    return dict(overrides)


def _abs(output: str, sub: str) -> str:
    return os.path.abspath(os.path.join(output, sub))


# --- running it -----------------------------------------------------------------------------------------

def _pretrain_done(folder: Path, config: dict[str, Any]) -> bool:
    """A finished pretraining with the same settings: reused, as compare reuses finished runs.

    Both sides are compared with PretrainConfig's defaults filled in: a setting the plan leaves out runs at
    its default, so a pretraining recorded with ``--pretrain-set max_length=64`` is not reused once that
    override is dropped (and a record from before a setting existed ran at its default). A base model folder
    rewritten since (the DAPT folder under DAPT + TAPT, trained again for another --model) is another base.
    A TAPT record without ``tapt_seeds`` is from before TAPT left out the downstream dev texts: it is redone.
    """
    from ..models.zoo import model_digest
    from ..training.pretrain import PretrainConfig

    done = folder / "pretrain.json"
    if not done.is_file():
        return False
    try:
        record = json.loads(done.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    if any(str(t).startswith("task:") for t in config.get("texts") or []) \
            and "tapt_seeds" not in record.get("config", {}):
        return False  # TAPT from before it left out the downstream dev texts: it pretrained on them
    defaults = as_json(asdict(PretrainConfig()))
    mine, theirs = {**defaults, **as_json(config)}, {**defaults, **record.get("config", {})}
    if any(theirs.get(k) != v for k, v in mine.items() if k not in ("quiet", "output")):
        return False
    base = record.get("model_digest")  # absent in records from before it: the settings decide, as then
    return base is None or model_digest(mine["model"]) == base


def validate(plan: Plan, *, check_data: bool = True) -> None:
    """Fail on a bad name or a missing data folder (``check_data``) before anything is trained or written."""
    from ..data.loading import find_task_dir, resolve_data_dir
    from ..methods import get_method

    roots = {e.run["data"]["data_dir"] for e in plan.entries} if check_data else set()
    for root in roots:
        path = resolve_data_dir(root)
        for task in dict.fromkeys(e.task for e in plan.entries if e.run["data"]["data_dir"] == root):
            find_task_dir(task, path)
    for e in plan.entries:
        RunConfig.from_dict(e.run, source=f"{plan.suite} suite ({e.label})").train.validate()
        get_method(e.method).parse_config(e.run.get("method_args") or {})


# The lock message of a step another invocation is running (io.output_lock): nothing of it is lost by stopping.
STEP_IN_USE = "wait for it to finish, then run this command again: it reuses the finished step"


def execute(plan: Plan, *, log: Callable[[str], None] = print, report: bool = True) -> ReportFiles | None:
    """Run every pretraining step and compare of the plan (reusing finished work), then write the report."""
    from ..protocol.compare import compare
    from ..training.pretrain import PretrainConfig, pretrain, pretrain_lock

    validate(plan)
    out = Path(plan.output)
    manifest = as_json(plan.manifest())  # as suite.json holds it; the report at the end reads this one
    write_json(out / "suite.json", manifest)
    for i, step in enumerate(plan.pretrains, start=1):
        folder = out / step.dir
        # Each step is locked on its own, not the suite folder: invocations for other tasks share the folder and
        # run beside this one; one reaching a step this one is running fails fast (see STEP_IN_USE).
        with pretrain_lock(folder, advice=STEP_IN_USE):
            if _pretrain_done(folder, step.config):  # in the lock: the other invocation may just have finished it
                log(f"[pretrain {i}/{len(plan.pretrains)}] {step.name}: done before, reused ({folder})")
                continue
            log(f"[pretrain {i}/{len(plan.pretrains)}] {step.name} -> {folder}")
            t0 = time.perf_counter()
            done = pretrain(PretrainConfig(**{**step.config, "output": str(folder), "quiet": True}))
        phases = "; ".join(f"{p['phase']}: perplexity {p['perplexity_before']:.1f} -> {p['perplexity_after']:.1f}, "
                           f"{p['tokens_per_second']:.0f} tokens/s" for p in done["phases"])
        log(f"  {time.perf_counter() - t0:.0f}s ({phases})")
    try:
        for i, e in enumerate(plan.entries, start=1):
            folder = out / e.dir
            t0 = time.perf_counter()
            run = RunConfig.from_dict({**e.run, "output": str(folder)}, source=f"{plan.suite} suite ({e.label})")
            with output_lock(folder, advice=STEP_IN_USE):
                summary = compare(CompareConfig(run=run, methods=[e.method], seeds=e.seeds, grid=e.grid,
                                                output=str(folder)))
            row = summary["rows"][0]
            log(f"[{i}/{len(plan.entries)}] {e.task:8s} {e.label}: {100 * row['mean']:.1f} ({100 * row['std']:.1f}) "
                f"{summary['primary_metric']} over {len(e.seeds)} seed(s), {time.perf_counter() - t0:.0f}s"
                + (f" ({row['reused_runs']} run(s) reused from the cache)" if row["reused_runs"] else ""))
    finally:
        # Also when interrupted: the report then shows what has finished so far, under this plan's settings.
        files = _report_current(out, log, manifest) if report else None
    return files


def _report_current(out: Path, log: Callable[[str], None], manifest: dict[str, Any]) -> ReportFiles | None:
    """The report of the suite's current results under this invocation's plan (``manifest``, not suite.json:
    another invocation on the folder, for other tasks, may have written its own since); where none is current
    yet (a rerun with changed settings stopped before its first entry finished), an earlier report is removed
    rather than left showing the old settings' numbers as the suite's."""
    try:
        return build_report([out], out, suites={out: manifest})
    except ReportError as e:  # never mask the exception (an interruption) that may be propagating
        stale = [f for f in (out / "report.html", out / "report.md", out / "results.csv") if f.is_file()]
        for f in stale:
            f.unlink()
        log(f"no report: {e}" + (" (the earlier report, of other settings, was removed)" if stale else ""))
        return None
