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


def test_a_directory_of_safetensors_files_is_readable_by_others(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    mask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as d:
            save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))  # safetensors 0.8 makes it 0600
            (d / "sub").mkdir()
            (d / "sub" / "config.json").write_text("{}")
    finally:
        os.umask(mask)
    for path in (tmp_path / "model" / "model.safetensors", tmp_path / "model" / "sub" / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    for folder in (tmp_path / "model", tmp_path / "model" / "sub"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder


def test_check_output_dir_refuses_what_cannot_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlm.errors import ConfigError
    from transferlm.io import check_output_dir

    f = tmp_path / "f.txt"
    f.write_text("keep me")
    with pytest.raises(ConfigError, match="is an existing file"):
        check_output_dir(f)
    with pytest.raises(ConfigError, match="is a file, so no folder can be made below it"):
        check_output_dir(f / "a" / "b")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists() and f.read_text() == "keep me"  # creates nothing
    # Not writable (root ignores chmod, so the refusal is simulated).
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.TemporaryFile", refuse)
    with pytest.raises(ConfigError, match=r"cannot write in .*Permission denied"):
        check_output_dir(tmp_path / "x")
