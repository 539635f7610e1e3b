"""Supervised intermediate-task transfer (slide 8, "sequential"): train the same backbone on a
related labelled task first (e.g. MNLI → RTE, sst-5 → SST-2), then on the target.

The method's head for the intermediate task is discarded; the backbone module, updated in
place, carries what was learned into the target run.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError
from ..methods.base import Method, MethodConfig, freeze_unused_parameters
from ..training.engine import Engine

log = logging.getLogger(__name__)


def intermediate_config(cfg: RunConfig) -> RunConfig:
    """The run config of ``cfg``'s intermediate stage (its task, shots, data folder and training budget)."""
    inter = cfg.intermediate
    assert inter is not None
    icfg = copy.deepcopy(cfg)
    icfg.task, icfg.intermediate = inter.task, None
    icfg.data.shots = inter.shots
    icfg.data.data_dir = inter.data_dir or cfg.data.data_dir
    # Everything that describes the target's own files: the intermediate task is read as its registry says.
    for key in ("train_file", "dev_file", "test_file", "text_columns", "label_column", "labels", "format", "header",
                "empty_text"):
        setattr(icfg.data, key, None)
    if inter.max_steps is not None:  # epochs would win over max_steps (Engine.total_steps)
        icfg.train.max_steps, icfg.train.epochs = inter.max_steps, None
    if inter.learning_rate is not None:
        icfg.train.learning_rate = inter.learning_rate
    return icfg


def check_intermediate_method(method: Method) -> None:
    """Refuse, before anything trains, a method whose intermediate stage cannot carry into the target run: a PEFT
    method's intermediate adapter stays attached to the backbone, so the target's own adapter cannot be added
    (and its weights would not carry over anyway); a method that does not train has nothing to carry."""
    from ..methods.efficient.method import EfficientMethod

    if isinstance(method, EfficientMethod) or not method.trains:
        why = "it trains no weights" if not method.trains else "its adapter is not carried into the target run"
        raise ConfigError(f"intermediate-task transfer is not supported by method {method.name} ({why}); use "
                          "finetune or prompt-finetune, or drop intermediate")


def train_intermediate(cfg: RunConfig, method: Method, method_cfg: MethodConfig, backbone: Any) -> dict[str, Any]:
    from .run import load_run_data  # run imports this module

    icfg = intermediate_config(cfg)
    spec, data = load_run_data(icfg)
    prepared = method.prepare(backbone, spec, method_cfg, max_length=icfg.train.max_length, train=data.train)
    freeze_unused_parameters(prepared.model, prepared.collate(data.train[:2]))
    # No checkpoints for the intermediate stage: it is short, and the target run owns the output folder.
    engine = Engine(prepared, spec, icfg.train, seed=cfg.seed, out_dir=None, quiet=cfg.quiet)
    fit = engine.fit(data.train, data.dev)
    for p in backbone.model.parameters():  # the target method decides what trains next
        p.requires_grad_(True)
    log.info("intermediate task %s: dev %s = %.4f", spec.name, spec.metric, fit.best_dev.get(spec.metric, float("nan")))
    # The data's digests: the run cache and the checkpoint fingerprint tell an edited intermediate task apart.
    return {"task": spec.name, "shots": icfg.data.shots, "steps": fit.steps, "dev_metrics": fit.best_dev,
            "train_seconds": round(fit.train_seconds, 3), "digests": data.digests()}
