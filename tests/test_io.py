"""Atomic writes: all or nothing, with ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from transferlm.io import atomic_dir, write_json


def test_write_json_is_atomic_and_readable_by_others(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json(target, {"a": 1})
    mode = stat.S_IMODE(target.stat().st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_failed_directory_write_leaves_nothing_and_keeps_the_old(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "w").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "w").write_text("new")
        raise RuntimeError("killed mid-write")
    assert (target / "w").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
