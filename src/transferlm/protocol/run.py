"""One run of the protocol: load data and model, transfer with a method, evaluate, write results.json."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import RunConfig
from ..data.loading import DataOptions, load_task, spec_with_overrides
from ..data.tasks import TaskSpec
from ..errors import ConfigError
from ..io import atomic_dir, check_output_dir, output_lock, write_json
from ..methods import get_method
from ..methods.base import count_parameters, freeze_unused_parameters
from ..models.loading import load_backbone
from ..models.zoo import model_digest
from ..training.engine import Engine, effective_precision
from .transfer import check_intermediate_method, train_intermediate

log = logging.getLogger(__name__)
RESULTS = "results.json"


@dataclass
class RunResult:
    results: dict[str, Any]
    engine: Engine | None = None
    # With run(defer_test=True): evaluates the test split with the trained model still in memory, completes
    # results (and results.json) and returns them. Dropping it frees the model.
    finish_test: Callable[[], dict[str, Any]] | None = None


# Run options that do not change what a run computes (where it writes, what it logs, how often it
# checkpoints): the checkpoint fingerprint and compare's run cache both leave them out.
IGNORED = ("quiet", "resume", "output", "save_model")
IGNORED_TRAIN = ("checkpoint_every", "keep_checkpoint")
# Keys of the data section that say where the data sits, not what it is (the split digests say that).
LOCATION = ("data_dir", "train_file", "dev_file", "test_file")


def training_fingerprint(cfg: RunConfig, method_settings: dict[str, Any], digests: dict[str, Any]) -> str:
    """A digest of what a run's training depends on: its config, the method's settings after ``resolve``
    (an automatic search's choice included), the digests of the data it reads and the model's files (a
    checkpoint of a model folder rewritten since, e.g. a pretrain output, is not resumed)."""
    return config_fingerprint(cfg.to_dict(), cfg.model, method=method_settings, data=digests)


def config_fingerprint(config: dict[str, Any], model: str, **parts: Any) -> str:
    """A digest of a config (less ``IGNORED``, ``IGNORED_TRAIN`` and ``LOCATION``), the model's files and
    ``parts``: what a checkpoint of ``run`` or ``multitask`` must match to be resumed."""
    config = {k: v for k, v in config.items() if k not in IGNORED}
    config["train"] = {k: v for k, v in (config.get("train") or {}).items() if k not in IGNORED_TRAIN}
    config["data"] = {k: v for k, v in (config.get("data") or {}).items() if k not in LOCATION}
    payload = json.dumps({"config": config, **parts, "model": model_digest(model)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def task_overrides(cfg: RunConfig) -> dict[str, Any]:
    d = cfg.data
    return {"text_columns": d.text_columns, "label_column": d.label_column, "labels": d.labels,
            "label_names": d.labels, "format": d.format, "header": d.header}


def load_run_data(cfg: RunConfig):
    d = cfg.data
    options = DataOptions(shots=d.shots, seed=cfg.seed, empty_text=d.empty_text, train_file=d.train_file,
                          dev_file=d.dev_file, test_file=d.test_file, max_test=d.max_test)
    overrides = {k: v for k, v in task_overrides(cfg).items() if v is not None}
    task: str | TaskSpec = cfg.task
    if overrides:
        task = spec_with_overrides(cfg.task, d.data_dir, options, overrides)
    return load_task(task, d.data_dir, options)


def run(cfg: RunConfig, *, keep_engine: bool = False, eval_memo: str | Path | None = None,
        defer_test: bool = False) -> RunResult:
    """Run one (task, model, method, seed). Validates everything before writing anything.

    ``eval_memo``: a folder where a seed-free method (``Method.seed_free``) keeps its test metrics, so
    the other seeds of a comparison reuse them instead of evaluating the same test set again.
    ``defer_test``: train and score dev only (a grid candidate); results.json says ``test_deferred`` until
    ``RunResult.finish_test`` evaluates the test split, which compare does for the selected candidate only.

    The output folder is locked (``io.output_lock``) from the end of the checks to the end of the run: another
    process working in it fails fast instead of training, checkpointing and resuming alongside.
    """
    with contextlib.ExitStack() as held:
        return _run(cfg, held, keep_engine=keep_engine, eval_memo=eval_memo, defer_test=defer_test)


def _run(cfg: RunConfig, held: contextlib.ExitStack, *, keep_engine: bool, eval_memo: str | Path | None,
         defer_test: bool) -> RunResult:
    cfg.train.validate()
    if cfg.output:
        check_output_dir(cfg.output)
    method = get_method(cfg.method)
    method_cfg = method.parse_config(cfg.method_args)
    settings = method_cfg.settings()  # before resolve(): what the user asked, defaults included
    if cfg.intermediate is not None:
        check_intermediate_method(method)
    spec, data = load_run_data(cfg)
    if not data.train and method.trains:
        raise ConfigError(f"task {spec.name}: empty training split")
    # Weights the checkpoint lacks are initialised as it loads: from the run's seed, not from the RNG state a
    # previous run in this process (compare's other seeds) left.
    torch.manual_seed(cfg.seed)
    backbone = load_backbone(cfg.model, head=method.head_for(cfg.model))
    intermediate = None
    out_dir = Path(cfg.output) if cfg.output else None
    # After the checks that need no training (bad input writes nothing), before the first write or resume.
    held.enter_context(output_lock(out_dir))
    if cfg.intermediate is not None:
        torch.manual_seed(cfg.seed)
        intermediate = train_intermediate(cfg, method, method_cfg, backbone)
    method_cfg = method.resolve(method_cfg, backbone, spec, data.train, data.dev, max_length=cfg.train.max_length)
    torch.manual_seed(cfg.seed)  # the head's initialisation depends on the seed
    prepared = method.prepare(backbone, spec, method_cfg, max_length=cfg.train.max_length, train=data.train)
    if cfg.save_model and prepared.save is None:
        raise ConfigError(f"method {cfg.method} has no weights of its own to save; drop save_model")
    if prepared.trains and data.train:
        unused = freeze_unused_parameters(prepared.model, prepared.collate(data.train[:2]))
        if unused:
            log.info("not trained (unused by the forward pass): %s", ", ".join(unused))
    trainable, total = count_parameters(prepared.model)
    digests = data.digests()  # hashes every split's examples: once per run
    engine = Engine(prepared, spec, cfg.train, seed=cfg.seed, out_dir=out_dir, quiet=cfg.quiet, resume=cfg.resume,
                    fingerprint=training_fingerprint(cfg, method_cfg.to_dict(), {
                        **digests, **({"intermediate": intermediate["digests"]} if intermediate else {})}))
    fit = None
    if prepared.trains:
        fit = engine.fit(data.train, data.dev)
    dev_eval = engine.evaluate(data.dev, desc="dev") if data.dev else None
    deferred = defer_test and bool(data.test)
    test_metrics, test_seconds, reused = ({}, 0.0, None) if deferred else _evaluate_test(
        cfg, method, method_cfg, prepared, engine, data.test, eval_memo)
    results: dict[str, Any] = {
        "task": spec.name, "method": cfg.method, "model": cfg.model, "seed": cfg.seed,
        "shots": cfg.data.shots if cfg.data.shots is not None else "full",
        "metrics": test_metrics,
        "dev_metrics": dev_eval.metrics if dev_eval else {},
        "primary_metric": spec.metric,
        "split": "test" if data.test else "dev",
        "trainable_params": trainable, "total_params": total,
        "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
        "train_seconds": round(fit.train_seconds, 3) if fit else 0.0,
        "eval_seconds": round(test_seconds + (dev_eval.seconds if dev_eval else 0.0), 3),
        # The test metrics came from another seed's identical evaluation (eval_memo): no test time spent here.
        **({"test_reused_from_seed": reused} if reused is not None else {}),
        "steps": fit.steps if fit else 0, "best_step": fit.best_step if fit else None,
        "resumed_from_step": fit.resumed_from if fit else None,
        "history": fit.history if fit else [],
        "intermediate": intermediate,
        "data": {"sizes": data.sizes(), "notes": data.notes, "labels": list(spec.labels), "digests": digests},
        "model_digest": model_digest(cfg.model),  # the files behind cfg.model: the run cache compares them
        "config": cfg.to_dict(),
        "method_config": method_cfg.to_dict(),
        "method_settings": settings,
        **({"prompt": prepared.extras["prompt"]} if "prompt" in prepared.extras else {}),
        **({"test_deferred": True} if deferred else {}),
        "environment": {"transferlm": __version__, "torch": torch.__version__, "python": platform.python_version(),
                        "processes": engine.acc.num_processes, "device": str(engine.acc.device),
                        "precision": effective_precision(engine.acc),
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    if out_dir is not None and engine.acc.is_main_process:
        if cfg.save_model and prepared.save is not None:
            with atomic_dir(out_dir / "model") as tmp:
                prepared.save(tmp)
            results["model_dir"] = str(out_dir / "model")
        write_json(out_dir / RESULTS, results)
    # Recorded: the checkpoint (kept through the evaluations, so a kill there did not mean training again) goes.
    # A deferred test runs later from memory; a candidate that is not selected never comes back for it.
    engine.finish()

    def finish_test() -> dict[str, Any]:
        with output_lock(out_dir):
            return _finish_test()

    def _finish_test() -> dict[str, Any]:
        metrics, seconds, memo_seed = _evaluate_test(cfg, method, method_cfg, prepared, engine, data.test, eval_memo)
        results.pop("test_deferred", None)
        results.update(metrics=metrics, eval_seconds=round(results["eval_seconds"] + seconds, 3))
        if memo_seed is not None:
            results["test_reused_from_seed"] = memo_seed
        if out_dir is not None and engine.acc.is_main_process:
            write_json(out_dir / RESULTS, results)
        return results

    return RunResult(results=results, engine=engine if keep_engine else None,
                     finish_test=finish_test if deferred else None)


def _evaluate_test(cfg: RunConfig, method: Any, method_cfg: Any, prepared: Any, engine: Engine,
                   test: list[Any], memo_folder: str | Path | None) -> tuple[dict[str, float], float, int | None]:
    """(metrics, seconds, seed the metrics were computed under if reused) on the test split."""
    if not test:
        return {}, 0.0, None
    memo = None
    if memo_folder is not None and not prepared.trains and method.seed_free(method_cfg):
        from .eval_memo import EvalMemo

        memo = EvalMemo.for_run(memo_folder, model=prepared.model, method=cfg.method,
                                method_config=method_cfg.to_dict(), train_settings=dataclasses.asdict(cfg.train),
                                device=str(engine.acc.device), test=test)
        entry = memo.load()
        if entry is not None:
            log.info("test metrics reused from seed %s (same model, options and test set)", entry["seed"])
            return entry["metrics"], 0.0, int(entry["seed"])
    ev = engine.evaluate(test, desc="test")
    if memo is not None and engine.acc.is_main_process:
        memo.store(ev.metrics, ev.seconds, cfg.seed)
    return ev.metrics, ev.seconds, None
