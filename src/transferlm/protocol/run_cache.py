"""compare's per-run cache: a finished run is reused only when it did what the requested run would do.

The run config is compared as written, except for the options that do not change results (``IGNORED``,
``IGNORED_TRAIN``: output, logging, checkpoints) and two parts:
- ``method_args`` are compared as the settings they parse to, defaults included. A user who writes a
  default out still reuses the run that left it implicit, and a run recorded under an older default is
  not reused for the new one (see ``changed_default``).
- Where the data sits (``data.data_dir`` and the split files) is compared by what the run read: the
  digest of each split's examples, which runs record. ``../shared/data`` and ``/work/shared/data`` are
  one folder; a folder whose files changed since is not. Records from before the digests compare the
  resolved paths (a relative path resolved against the current folder).

A request with ``save_model`` reuses only a run that left its weights in ``model/``. A local model folder is
compared by its files' digest (``model_digest``): one rewritten since the run is another model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..data.loading import DATA_ENV
from ..errors import TransferLMError
from ..io import as_json
from ..methods import get_method
from ..methods.base import WAS, MethodConfig
from ..models.zoo import model_digest

# IGNORED, IGNORED_TRAIN, LOCATION: the options that do not change what a run computes, shared with the checkpoint
# fingerprint (run.py). save_model is checked on its own (`_has_model`).
from .run import IGNORED, IGNORED_TRAIN, LOCATION, RESULTS, load_run_data
from .transfer import intermediate_config


def cached_result(out: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The results.json in ``out`` if that run matches ``cfg``, else None."""
    path = out / RESULTS
    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if cfg.save_model and not _has_model(out):
        return None  # the requested run must leave its weights in out/model/; this one did not
    mine, theirs = _comparable(cfg.to_dict()), _comparable(dict(res.get("config", {})))
    mine_where, theirs_where = _split_location(mine), _split_location(theirs)
    if theirs != mine:
        return None
    recorded_model = res.get("model_digest")  # absent in records from before it: the name decides, as then
    if recorded_model is not None and model_digest(cfg.model) != recorded_model:
        return None  # the folder behind the model name was rewritten since (e.g. a pretrain output)
    digests = res.get("data", {}).get("digests")
    if digests is not None:
        if _digests(cfg) != digests:
            return None
    elif _resolved(mine_where) != _resolved(theirs_where):
        return None
    inter_digests = (res.get("intermediate") or {}).get("digests")  # absent before it was recorded
    if cfg.intermediate is not None and inter_digests is not None:
        if _digests(intermediate_config(cfg)) != inter_digests:
            return None  # the intermediate task's files changed since
    options = get_method(cfg.method).parse_config(cfg.method_args)
    # Runs recorded before "method_settings" existed have only the config after resolve() (auto search).
    recorded = res.get("method_settings", res.get("method_config", {}))
    return res if same_settings(options, recorded) else None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the keys that do not change a run's results."""
    for key in (*IGNORED, "method_args"):
        config.pop(key, None)
    train = dict(config.get("train") or {})
    for key in IGNORED_TRAIN:
        train.pop(key, None)
    config["train"] = train
    return config


def _has_model(out: Path) -> bool:
    return (out / "model").is_dir()


def _split_location(config: dict[str, Any]) -> dict[str, Any]:
    """Take the location keys out of ``config``'s data section (in place) and return them."""
    data = dict(config.get("data") or {})
    where = {k: data.pop(k, None) for k in LOCATION}
    config["data"] = data
    return where


def _resolved(where: dict[str, Any]) -> dict[str, str | None]:
    raw = {**where, "data_dir": where.get("data_dir") or os.environ.get(DATA_ENV)}
    return {k: str(Path(v).expanduser().resolve()) if v else None for k, v in raw.items()}


def _digests(cfg: RunConfig) -> dict[str, str] | None:
    """The split digests of the data ``cfg`` would read; None where it cannot be read (the run will say why)."""
    try:
        _, data = load_run_data(cfg)
    except (TransferLMError, OSError):
        return None
    return data.digests()


def same_settings(options: MethodConfig, recorded: dict[str, Any]) -> bool:
    """Whether a run recorded with ``recorded`` option values ran with ``options``.

    An option the record lacks (added since, or left implicit in a nested mapping) ran at its ``was``
    value where it has one (a default that changed), else at its default (which has not changed). Options
    that ``resolve`` fills from the data when unset are not compared while unset: records from before
    ``method_settings`` hold what resolve found.
    """
    subs = options.sub_configs()
    for f in dataclasses.fields(options):
        mine = as_json(getattr(options, f.name))
        if mine is None and f.name in options.resolved_from_data:
            continue
        if f.name in recorded:
            theirs = recorded[f.name]
        elif WAS in f.metadata:
            theirs = f.metadata[WAS]
        else:  # the record left it at its default, which has not changed since (else it would have WAS)
            theirs = as_json(_default(f))
        if f.name in subs:  # a mapping: each config that parses part of it compares its own keys
            if not isinstance(theirs, dict) or not all(same_settings(sub, theirs) for sub in subs[f.name]):
                return False
        elif theirs != mine:
            return False
    return True


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default
