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


# --- column indices for files without a header, and bools where numbers belong -------------------------------


def test_yaml_column_indices_stay_integers(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("data: {header: false, text_columns: [1, 2], label_column: 0}\n")
    cfg = RunConfig.from_dict(load_yaml(p), source=str(p))
    assert cfg.data.text_columns == [1, 2] and cfg.data.label_column == 0
    # Names stay names, a digit string quoted in YAML included (it may be a header cell).
    named = RunConfig.from_dict({"data": {"text_columns": ["review"], "label_column": "0"}})
    assert named.data.text_columns == ["review"] and named.data.label_column == "0"
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_cli_column_indices_read_a_file_without_a_header(tmp_path: Path) -> None:
    from transferlm.cli import build_parser, build_run_dict
    from transferlm.protocol.run import load_run_data

    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text("0,bad movie\n1,good movie\n0,awful film\n1,great film\n")
    argv = ["run", "--task", "mine", "--train-file", str(tmp_path / "train.csv"), "--test-file",
            str(tmp_path / "test.csv"), "--shots", "full", "--text-columns", "1", "--label-column", "0",
            "--set", "data.header=false"]
    cfg = RunConfig.from_dict(build_run_dict(build_parser().parse_args(argv))["run"])
    assert cfg.data.text_columns == [1] and cfg.data.label_column == 0
    spec, data = load_run_data(cfg)
    assert spec.labels == ("0", "1") and len(data.train) + len(data.dev) == 4 and len(data.test) == 4


def test_set_column_indices_as_a_comma_list() -> None:
    # `--set data.text_columns=1,2` gives the string "1,2": indices, as `--text-columns 1,2` gives; labels stay text.
    cfg = RunConfig.from_dict({"data": {"text_columns": "1,2", "labels": "0,1"}})
    assert cfg.data.text_columns == [1, 2] and cfg.data.labels == ["0", "1"]


@pytest.mark.parametrize("key,value", [("train.max_steps", True), ("train.batch_size", False),
                                       ("seed", True), ("data.shots", True), ("train.learning_rate", True)])
def test_a_bool_is_not_a_number(key: str, value: bool) -> None:
    section, _, name = key.rpartition(".")
    d = {section: {name: value}} if section else {name: value}
    with pytest.raises(ConfigError, match=rf"^config\.{key} must be .*got {value}"):
        RunConfig.from_dict(d)


def test_negative_max_grad_norm_is_rejected() -> None:
    TrainConfig(max_grad_norm=0).validate()  # 0: no clipping
    with pytest.raises(ConfigError, match=r"^train\.max_grad_norm must be >= 0 \(0: no clipping\), got -1"):
        TrainConfig(max_grad_norm=-1).validate()


def test_null_is_only_for_optional_fields() -> None:
    # An empty YAML value used to pass for any field and fail later with a raw TypeError.
    with pytest.raises(ConfigError, match=r"^config\.train\.max_steps is empty \(null\) but takes int; give a value"):
        RunConfig.from_dict({"train": {"max_steps": None}})
    assert RunConfig.from_dict({"train": {"epochs": None}, "output": None}).train.epochs is None  # optional ones do


@pytest.mark.parametrize("method, options, field", [("prefix", {"mlp_hidden": None}, "mlp_hidden"),
                                                    ("finetune", {"freeze_layers": None}, "freeze_layers"),
                                                    ("prefix", {"reparam": None}, "reparam")])
def test_null_method_options_are_one_line_errors(method: str, options: dict, field: str) -> None:
    from transferlm.methods import get_method

    with pytest.raises(ConfigError, match=f"{field} is empty \\(null\\)") as e:
        get_method(method).parse_config(options)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv", [["--set", "data.shots=full"], ["--set", "data.shots=0"], ["--shots", "full"]])
def test_full_shots_from_set_as_from_the_flag(argv: list[str]) -> None:
    # `--set data.shots=full` was "must be int, got 'full'" though the flag and the YAML take it.
    from transferlm.cli import build_parser, build_run_dict

    args = build_parser().parse_args(["run", "--task", "SST-2", "--output", "x", *argv])
    assert RunConfig.from_dict(build_run_dict(args)["run"]).data.shots is None


def test_full_shots_in_every_config_that_has_shots() -> None:
    from transferlm.config import from_dict as build
    from transferlm.protocol.compare import _apply
    from transferlm.protocol.multitask import MultitaskConfig

    from_dict = RunConfig.from_dict
    assert from_dict({"intermediate": {"task": "MNLI", "shots": "full"}}).intermediate.shots is None
    assert from_dict({"data": {"shots": "8"}}).data.shots == 8
    # a grid over K, and multitask's YAML (which does not go through run's flag parsing)
    assert _apply(RunConfig(), {"data.shots": "full"}).data.shots is None
    assert build(MultitaskConfig, {"tasks": ["cr", "mr"], "data": {"shots": "full"}}).data.shots is None
    for bad in ("lots", -2, 2.5):
        with pytest.raises(ConfigError, match=r"^config\.data\.shots must be a positive integer, 0 or 'full'"):
            from_dict({"data": {"shots": bad}})


def test_set_into_a_null_or_scalar_section() -> None:
    from transferlm.config import set_dotted

    d: dict = {"intermediate": None, "seed": 13}
    set_dotted(d, "intermediate.task", "MNLI")  # `intermediate: null` in the YAML, then --intermediate-task
    assert d["intermediate"] == {"task": "MNLI"}
    with pytest.raises(ConfigError, match=r"^cannot set seed\.x: seed is 13, not a section"):
        set_dotted(d, "seed.x", 1)


def test_yaml_scalars_follow_yaml_1_2(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML's default) read Yes/No as booleans (RTE's label words), 013 as octal 11, 1e-5 as a string.
    p = tmp_path / "c.yaml"
    p.write_text("task: RTE\nseed: 013\nmethod: prompt-finetune\ntrain: {learning_rate: 1e-5}\n"
                 "method_args: {label_words: {entailment: Yes, not_entailment: No}, calibrate: on}\n")
    raw = load_yaml(p)
    assert raw["method_args"]["label_words"] == {"entailment": "Yes", "not_entailment": "No"}
    assert raw["seed"] == 13 and raw["train"]["learning_rate"] == 1e-5
    cfg = RunConfig.from_dict(raw, source=str(p))
    assert cfg.seed == 13 and cfg.train.learning_rate == 1e-5


def test_set_values_follow_yaml_1_2() -> None:
    from transferlm.cli import build_parser, build_run_dict

    args = build_parser().parse_args(["run", "--task", "RTE", "--method", "prompt-finetune", "--output", "o",
                                      "--set", "seed=013", "--set", "method_args.label_words.not_entailment=No",
                                      "--set", "method_args.label_words.entailment=Yes"])
    run = build_run_dict(args)["run"]
    assert run["seed"] == 13
    assert run["method_args"]["label_words"] == {"not_entailment": "No", "entailment": "Yes"}


@pytest.mark.parametrize("d, needle", [
    ({"output": {"a": 1}}, "x.yaml.output must be a single str"),  # was the folder "{'a': 1}"
    ({"task": ["SST-2", "cr"]}, "x.yaml.task must be a single str"),
    ({"method_args": 5}, "x.yaml.method_args must be a mapping"),  # was a TypeError in the method
    ({"data": {"labels": {"a": 1}}}, "x.yaml.data.labels must be a single str"),
])
def test_wrong_shapes_are_one_line_errors(d: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        RunConfig.from_dict(d, source="x.yaml")


@pytest.mark.parametrize("d, needle", [
    ({"data": 5}, "x.yaml.data must be a mapping"), ({"train": [1]}, "x.yaml.train must be a mapping"),
    ({"method_args": "lora"}, "x.yaml.method_args must be a mapping"),
    ({"intermediate": 3}, "x.yaml.intermediate must be a mapping"),
])
def test_sections_are_checked_before_flags_are_merged(d: dict, needle: str) -> None:
    from transferlm.config import check_sections

    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        check_sections(RunConfig, d, "x.yaml")
    check_sections(RunConfig, {"data": None, "intermediate": None, "train": {}, "seed": 3}, "x.yaml")  # fine


@pytest.mark.parametrize("key", ["", "train..x", ".seed", "train."])
def test_set_dotted_refuses_empty_key_parts(key: str) -> None:
    from transferlm.config import set_dotted

    with pytest.raises(ConfigError, match="bad key"):
        set_dotted({}, key, 1)
