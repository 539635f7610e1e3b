"""compare's per-run cache: a finished run is reused only when it did what the requested run would do.

The run config is compared as written, except ``method_args``: those are compared as the settings they
parse to, defaults included. A user who writes a default out still reuses the run that left it implicit,
and a run recorded under an older default is not reused for the new one (see ``changed_default``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..io import as_json
from ..methods import get_method
from ..methods.base import WAS, MethodConfig
from .run import RESULTS

# Run options that do not change what a run computes.
IGNORED = ("quiet", "resume", "output")


def cached_result(out: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The results.json in ``out`` if that run matches ``cfg``, else None."""
    path = out / RESULTS
    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    mine, theirs = cfg.to_dict(), dict(res.get("config", {}))
    for key in (*IGNORED, "method_args"):
        mine.pop(key, None)
        theirs.pop(key, None)
    if theirs != mine:
        return None
    options = get_method(cfg.method).parse_config(cfg.method_args)
    # Runs recorded before "method_settings" existed have only the config after resolve() (auto search).
    recorded = res.get("method_settings", res.get("method_config", {}))
    return res if same_settings(options, recorded) else None


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
