"""Configs load from YAML, round-trip through JSON and reject typos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transferlm.config import RunConfig, TrainConfig, load_yaml, parse_shots
from transferlm.errors import ConfigError


def test_yaml_to_json_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("task: cr\nmodel: minilm-l6\nseed: 21\ndata: {shots: 8}\ntrain:\n  learning_rate: 3.0e-5\n"
                 "  max_steps: 7\nmethod_args: {pooling: mean}\n")
    cfg = RunConfig.from_dict(load_yaml(p), source=str(p))
    assert cfg.train.learning_rate == 3e-5 and cfg.train.max_steps == 7 and cfg.data.shots == 8
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_unknown_key_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="learnig_rate"):
        RunConfig.from_dict({"train": {"learnig_rate": 1}}, source="c.yaml")


def test_bad_type_is_an_error() -> None:
    with pytest.raises(ConfigError, match="train.max_steps"):
        RunConfig.from_dict({"train": {"max_steps": "many"}})


@pytest.mark.parametrize("field,value", [("learning_rate", 0), ("batch_size", -1), ("warmup_ratio", 1.5)])
def test_train_validation(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value}).validate()


def test_parse_shots() -> None:
    assert parse_shots("16") == 16 and parse_shots("full") is None and parse_shots(0) is None
    with pytest.raises(ConfigError):
        parse_shots("lots")
