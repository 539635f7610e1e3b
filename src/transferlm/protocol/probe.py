"""Which layer suits the task? Train a head on each layer in turn (Sun et al. 2019).

The backbone is frozen and only a linear head is trained on layer k's pooled states, so
the comparison measures what each layer already encodes. The best layer is picked on dev.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import RunConfig
from ..errors import ConfigError
from ..io import check_output_dir, output_lock, write_json
from ..models.loading import load_backbone
from ..training.layers import num_layers
from .run import run


def probe(cfg: RunConfig, layers: list[int] | None = None) -> dict[str, Any]:
    depth = num_layers(load_backbone(cfg.model).model)
    layers = list(range(depth + 1)) if layers is None else layers
    bad = [k for k in layers if not 0 <= k <= depth]
    if not layers or bad:
        raise ConfigError(f"--layers {','.join(map(str, layers)) or '(empty)'}: name layers between 0 (embeddings) "
                          f"and {depth} for {cfg.model}, or omit --layers to probe them all")
    if cfg.output:
        check_output_dir(cfg.output)
    # Like run's: the output folder is locked from the end of the checks to the report (io.output_lock), so a
    # second probe into it fails fast instead of training every layer and overwriting probe.json.
    with output_lock(cfg.output or None):
        return _probe(cfg, layers, depth)


def _probe(cfg: RunConfig, layers: list[int], depth: int) -> dict[str, Any]:
    rows = []
    for k in tqdm(layers, desc="probe layers", disable=cfg.quiet):
        rc = copy.deepcopy(cfg)
        rc.method, rc.output = "finetune", None
        rc.method_args = {**cfg.method_args, "layers": [k], "freeze_layers": depth}
        res = run(rc).results
        metric = res["primary_metric"]
        rows.append({"layer": k, "dev": res["dev_metrics"].get(metric), "test": res["metrics"].get(metric),
                     "trainable_params": res["trainable_params"], "train_seconds": res["train_seconds"]})
    scored = [r for r in rows if r["dev"] is not None]
    # Without dev scores nothing can be selected: say so rather than crown an arbitrary layer.
    best = max(scored, key=lambda r: r["dev"])["layer"] if scored else None
    report = {"task": cfg.task, "model": cfg.model, "seed": cfg.seed, "layers": rows, "best_layer": best,
              "primary_metric": metric, "selection": "dev" if scored else "none (no dev metric)"}
    if cfg.output:
        write_json(Path(cfg.output) / "probe.json", report)
    return report


def format_probe(report: dict[str, Any]) -> str:
    lines = [f"layer  dev {report['primary_metric']}  test {report['primary_metric']}"]
    for r in report["layers"]:
        mark = "  <- best on dev" if r["layer"] == report["best_layer"] else ""
        dev, test = (f"{100 * r[s]:.1f}" if r[s] is not None else "-" for s in ("dev", "test"))
        lines.append(f"{r['layer']:>5}  {dev:>7}  {test:>8}{mark}")
    return "\n".join(lines)
