"""Atomic writes: all or nothing, with ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from helpers import hold_lock, hold_lock_fails
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


# --- output_lock: one process per output folder --------------------------------------------------------------

def _free(folder: Path, **kwargs) -> bool:
    from transferlm.errors import ConfigError
    from transferlm.io import output_lock

    try:
        with output_lock(folder, **kwargs):
            return True
    except ConfigError:
        return False


def test_a_folder_locked_by_another_process_fails_fast_naming_it_and_the_pid(tmp_path: Path) -> None:
    import signal

    from transferlm.errors import ConfigError
    from transferlm.io import LOCK_FILE, output_lock

    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(ConfigError) as e, output_lock(out):
            raise AssertionError("entered a folder another process holds")
        msg = str(e.value)
        assert "\n" not in msg and str(out) in msg and f"pid {holder.pid}" in msg
        assert "in use by another transferlm process" in msg and "give another --output" in msg
        assert (out / LOCK_FILE).read_text().startswith(f"{holder.pid} ")  # pid and command, for the message
    finally:
        holder.kill()  # SIGKILL: no cleanup of its own runs
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert _free(out), "the OS releases a killed holder's lock"
    holder = hold_lock(out)
    holder.stdin.close()  # an ordinary exit
    holder.wait()
    assert _free(out)


def test_the_lock_is_reentrant_in_one_process_and_held_to_the_outermost_exit(tmp_path: Path) -> None:
    from transferlm.io import output_lock

    out = tmp_path / "out"
    with output_lock(out):
        with output_lock(out), output_lock(out / "sub"):  # compare's folder, then its run's sub-folder
            pass
        (out / "results.json").write_text("{}")
        probe = hold_lock_fails(out)
        assert probe, "the inner exit released the outer hold"
    assert _free(out)


def test_a_lock_that_made_its_folder_leaves_nothing_unless_something_was_written(tmp_path: Path) -> None:
    from transferlm.io import LOCK_FILE, output_lock

    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError), output_lock(out):
        assert (out / LOCK_FILE).is_file()
        raise RuntimeError("bad input found after the lock")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the folders the lock made are gone again"
    with output_lock(out):
        (out / "results.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "results.json"]  # the file stays: see output_lock
    # beside=True (a folder replaced whole): the lock file sits next to it and goes on release.
    model = tmp_path / "model"
    with output_lock(model, beside=True):
        assert (tmp_path / ".model.lock").is_file()
        assert not hold_lock_fails(tmp_path / "other")
    assert not (tmp_path / ".model.lock").exists()


def test_a_lock_file_removed_by_its_releasing_holder_is_not_locked_twice(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A locker that opened the file just before its holder removed it (on release) locks the removed file: it
    must notice and lock the one under the name now, or two processes could each hold 'the' lock."""
    import transferlm.io as io

    out = tmp_path / "model"
    lock = io.lock_file_of(out, beside=True)
    real_flock = io.fcntl.flock
    calls = []

    def flock_after_removal(fd, op):
        if not calls:  # the first try: the holder releases and removes the file in between
            lock.unlink()
        calls.append(op)
        return real_flock(fd, op)

    monkeypatch.setattr(io.fcntl, "flock", flock_after_removal)
    with io.output_lock(out, beside=True):
        assert len(calls) == 2, "the removed file was noticed and the new one locked"
        st = lock.stat()
        assert (st.st_dev, st.st_ino) in io._HELD
    assert not lock.exists()


def test_folder_checks_ignore_the_lock_file(tmp_path: Path) -> None:
    from transferlm.io import LOCK_FILE, ignorable
    from transferlm.models.zoo import model_digest

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    before = model_digest(str(model))
    (model / LOCK_FILE).write_text("123 python -m transferlm run\n")
    assert model_digest(str(model)) == before, "a lock file is no file of the model"
    assert ignorable(model / LOCK_FILE) and not ignorable(model / "config.json")


def test_output_lock_of_no_folder_locks_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlm.io import output_lock

    # A run without --output has nothing to share: the lock is a no-op, not a lock file in the working directory.
    monkeypatch.chdir(tmp_path)
    with output_lock(None), output_lock(None):
        pass
    assert list(tmp_path.iterdir()) == []
