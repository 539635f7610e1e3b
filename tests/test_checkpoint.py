"""drop_stale_checkpoint: the one rule by which the engine and multitask drop a checkpoint of other settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from transferlm.training.checkpoint import (
    CHECKPOINT_DIR,
    REPLACED_DIR,
    checkpoint_state,
    drop_stale_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

WRITER = "a run with another config"


def _checkpoint(out_dir: Path, fingerprint: str, step: int = 8) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    save_checkpoint(out_dir, model, optimizer, scheduler, {"step": step, "fingerprint": fingerprint}, None)


def _loads(out_dir: Path) -> bool:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return load_checkpoint(out_dir, model, optimizer, scheduler) is not None


def test_a_checkpoint_of_another_fingerprint_is_removed_with_a_warning(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    _checkpoint(tmp_path, "old", step=8)
    with caplog.at_level(logging.WARNING, logger="transferlm.training.checkpoint"):
        assert drop_stale_checkpoint(tmp_path, "new", WRITER)
    assert not (tmp_path / CHECKPOINT_DIR).exists() and not _loads(tmp_path)
    assert caplog.messages == [f"checkpoint in {tmp_path} was written by {WRITER} (step 8); starting over"]


def test_the_warning_goes_to_the_callers_logger(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _checkpoint(tmp_path, "old")
    mine = logging.getLogger("transferlm.protocol.multitask")
    with caplog.at_level(logging.WARNING):
        assert drop_stale_checkpoint(tmp_path, "new", WRITER, logger=mine)
    assert [r.name for r in caplog.records] == ["transferlm.protocol.multitask"]


def test_a_checkpoint_of_the_same_fingerprint_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _checkpoint(tmp_path, "same")
    with caplog.at_level(logging.WARNING):
        assert not drop_stale_checkpoint(tmp_path, "same", WRITER)
    assert _loads(tmp_path) and not caplog.records


def test_no_checkpoint_is_nothing_to_drop(tmp_path: Path) -> None:
    assert not drop_stale_checkpoint(tmp_path / "never-written", "new", WRITER)
    assert not drop_stale_checkpoint(tmp_path, "new", WRITER)  # the folder exists, no checkpoint in it
    assert not (tmp_path / "never-written").exists()


def test_a_stale_replaced_checkpoint_is_removed_too(tmp_path: Path) -> None:
    # Killed between atomic_dir's renames, only the replaced folder is there: it is the checkpoint to judge.
    _checkpoint(tmp_path, "old")
    (tmp_path / CHECKPOINT_DIR).rename(tmp_path / REPLACED_DIR)
    assert drop_stale_checkpoint(tmp_path, "new", WRITER)
    assert not (tmp_path / REPLACED_DIR).exists() and checkpoint_state(tmp_path) is None


def test_other_processes_learn_it_is_stale_but_leave_it_to_the_main_one(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    _checkpoint(tmp_path, "old")
    with caplog.at_level(logging.WARNING):
        assert drop_stale_checkpoint(tmp_path, "new", WRITER, main_process=False)
    assert (tmp_path / CHECKPOINT_DIR).is_dir() and not caplog.records


def test_an_unreadable_checkpoint_is_left_for_load_checkpoint_to_report(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_DIR).mkdir()
    (tmp_path / CHECKPOINT_DIR / "state.json").write_text("{not json", encoding="utf-8")
    assert not drop_stale_checkpoint(tmp_path, "new", WRITER)
    assert (tmp_path / CHECKPOINT_DIR / "state.json").is_file()
