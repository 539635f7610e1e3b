"""compare's per-run cache: reuse a finished run only when it did what the requested run would do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transferlm.config import RunConfig
from transferlm.errors import ConfigError
from transferlm.io import write_json
from transferlm.methods import get_method
from transferlm.methods.efficient.prefix.config import PrefixOptions
from transferlm.protocol.run import RESULTS, run
from transferlm.protocol.run_cache import cached_result, same_settings

PF = "prompt-finetune"
# (method, requested method_args, what the finished run recorded, reused?)
CASES = [
    # A default written out is the run that left it implicit.
    ("lora", {"r": 8}, {}, True),
    ("lora", {"r": 4}, {}, False),
    ("lora", {"target": ["qv"]}, {"target": ["qv"]}, True),  # a list field against its JSON form
    # prefix's init default changed from random to vocab: runs from before must not stand for the new default.
    ("prefix", {}, {}, False),
    ("prefix", {"init": "random"}, {}, True),
    ("prefix", {}, {"init": "random"}, False),
    ("prefix", {}, {"init": "vocab"}, True),
    # Nested options (prompt-finetune's peft) are compared as settings too, defaults included.
    (PF, {"peft": {"name": "prefix", "init": "random"}}, {"peft": {"name": "prefix"}}, True),
    (PF, {"peft": {"name": "prefix", "init": "random", "length": 11}}, {"peft": {"name": "prefix"}}, False),
    (PF, {"peft": {"name": "prefix"}}, {"peft": {"name": "prefix"}}, False),
    (PF, {"peft": {"name": "lora"}}, {"peft": {"name": "prefix"}}, False),
    (PF, {"peft": {"name": "lora"}}, {"peft": None}, False),
    (PF, {}, {"peft": {"name": "lora"}}, False),
    (PF, {"peft": {"name": "lora", "train_lm_head": True}}, {"peft": {"name": "lora", "train_lm_head": False}}, False),
    (PF, {"peft": {"name": "lora", "train_lm_head": True}}, {"peft": {"name": "lora"}}, False),
    (PF, {"peft": {"name": "lora", "train_lm_head": False}}, {"peft": {"name": "lora"}}, True),
    # Options left unset are the ones resolve() fills from the data (auto search): what it found is not a mismatch.
    (PF, {"auto": "labels"}, {"auto": "labels", "label_words": {"0": ["bad"], "1": ["good"]}}, True),
    (PF, {"auto": "labels", "template": "{sentence} It was {answer} ."},
     {"auto": "labels", "template": "{sentence} Really {answer} ."}, False),
]


@pytest.mark.parametrize("method,args,recorded,reused", CASES)
def test_a_finished_run_matches_on_its_settings_defaults_included(method, args, recorded, reused) -> None:
    options = get_method(method).parse_config(args)
    assert same_settings(options, recorded) is reused


def test_settings_spell_out_the_nested_peft_options() -> None:
    settings = get_method(PF).parse_config({"peft": {"name": "prefix", "length": 4}}).settings()
    assert settings["peft"] == {"name": "prefix", "train_lm_head": False, **PrefixOptions(length=4).settings()}
    assert settings["peft"]["init"] == "vocab"
    # A bad nested option fails when the options are read, before any model loads.
    with pytest.raises(Exception, match="length"):
        get_method(PF).parse_config({"peft": {"name": "prefix", "length": 0}}).settings()


@pytest.mark.parametrize("peft,message", [
    ({"name": "prefix", "init": "words"}, r"^method_args\.peft\.init must be one of random, vocab, got 'words'$"),
    ({"name": "adapter", "bottleneck": 0}, r"^method_args\.peft\.bottleneck must be > 0"),
    ({"name": "lora", "colour": 1}, r"^method_args\.peft \(lora\): unknown key\(s\) colour"),
])
def test_a_bad_nested_peft_option_is_named_where_it_sits(peft, message) -> None:
    with pytest.raises(ConfigError, match=message):
        get_method(PF).parse_config({"peft": peft}).settings()


def test_a_peft_method_on_its_own_names_its_options_from_method_args() -> None:
    with pytest.raises(ConfigError, match=r"^method_args\.init must be one of"):
        get_method("prefix").parse_config({"init": "words"})


def _cfg(model: Path, data: Path, **args) -> RunConfig:
    return RunConfig.from_dict({
        "task": "toy", "model": str(model), "method": "prefix", "quiet": True,
        "data": {"data_dir": str(data), "shots": 4}, "method_args": {"length": 2, "mlp_hidden": 8, **args},
        "train": {"max_steps": 2, "learning_rate": 1e-3, "eval_every": 2, "checkpoint_every": 0, "max_length": 32}})


def test_a_run_records_its_settings_and_is_reused_only_for_them(tiny_bert: Path, toy_data: Path,
                                                               tmp_path: Path) -> None:
    cfg = _cfg(tiny_bert, toy_data)
    cfg.output = str(tmp_path / "run")
    res = run(cfg).results
    assert res["method_settings"]["init"] == "vocab" and res["method_settings"]["length"] == 2
    out = Path(cfg.output)
    assert cached_result(out, cfg) == json.loads((out / RESULTS).read_text())
    assert cached_result(out, _cfg(tiny_bert, toy_data, init="vocab")) is not None  # the default, written out
    assert cached_result(out, _cfg(tiny_bert, toy_data, init="random")) is None
    other = _cfg(tiny_bert, toy_data)
    other.train.max_steps = 3
    assert cached_result(out, other) is None  # the rest of the config is compared as written
    # A record from before method_settings existed: its method_config stands in.
    old = json.loads((out / RESULTS).read_text())
    del old["method_settings"]
    old["method_config"]["init"] = "random"
    write_json(out / RESULTS, old)
    assert cached_result(out, cfg) is None
    (out / RESULTS).write_text("{not json", encoding="utf-8")
    assert cached_result(out, cfg) is None


def test_the_data_is_compared_by_what_the_run_read_not_by_how_its_folder_was_spelled(
        tiny_bert: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tiny_bert, toy_data)
    cfg.output = str(tmp_path / "run")
    res = run(cfg).results
    out = Path(cfg.output)
    assert set(res["data"]["digests"]) == {"train", "dev", "test"}
    # The same folder, spelled relative to the current folder, through a link, or taken from TRANSFERLM_DATA.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(toy_data, target_is_directory=True)
    for spelling in ("data", "./data/", "link"):
        assert cached_result(out, _cfg(tiny_bert, Path(spelling))) is not None, spelling
    env = _cfg(tiny_bert, toy_data)
    env.data.data_dir = None
    monkeypatch.setenv("TRANSFERLM_DATA", str(toy_data))
    assert cached_result(out, env) is not None
    # A copy of the same files elsewhere is the same data.
    import shutil

    shutil.copytree(toy_data, tmp_path / "copy")
    assert cached_result(out, _cfg(tiny_bert, tmp_path / "copy")) is not None
    # The same path whose test file has changed since is other data: the run is not reused.
    test_csv = toy_data / "toy" / "original" / "test.csv"
    test_csv.write_text(test_csv.read_text(encoding="utf-8").replace("good movie", "fine movie", 1), encoding="utf-8")
    assert cached_result(out, cfg) is None
    # Data that cannot be read is no match (the run itself then says why).
    assert cached_result(out, _cfg(tiny_bert, tmp_path / "missing")) is None


def test_a_record_from_before_the_digests_compares_the_resolved_folder(
        tiny_bert: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tiny_bert, toy_data)
    cfg.output = str(tmp_path / "run")
    run(cfg)
    out = Path(cfg.output)
    old = json.loads((out / RESULTS).read_text())
    del old["data"]["digests"]
    write_json(out / RESULTS, old)
    monkeypatch.chdir(tmp_path)
    assert cached_result(out, _cfg(tiny_bert, Path("data"))) is not None
    import shutil

    shutil.copytree(toy_data, tmp_path / "copy")
    assert cached_result(out, _cfg(tiny_bert, tmp_path / "copy")) is None  # no digest to tell it is the same data


def test_checkpoint_settings_do_not_stop_reuse(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_bert, toy_data)
    cfg.output = str(tmp_path / "run")
    run(cfg)
    other = _cfg(tiny_bert, toy_data)
    other.train.checkpoint_every, other.train.keep_checkpoint = 7, True  # what is written along the way only
    assert cached_result(Path(cfg.output), other) is not None


def test_save_model_reuses_only_a_run_that_saved_its_model(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    plain = _cfg(tiny_bert, toy_data)
    plain.output = str(tmp_path / "plain")
    run(plain)
    wants = _cfg(tiny_bert, toy_data)
    wants.save_model = True
    assert cached_result(Path(plain.output), wants) is None  # no model/ to serve from: train again
    wants.output = str(tmp_path / "saved")
    run(wants)
    assert (Path(wants.output) / "model").is_dir()
    assert cached_result(Path(wants.output), wants) is not None
    assert cached_result(Path(wants.output), _cfg(tiny_bert, toy_data)) is not None  # saved weights do no harm



def test_a_model_folder_rewritten_since_the_run_is_another_model(tiny_bert: Path, toy_data: Path,
                                                                 tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    cfg = _cfg(model, toy_data)
    cfg.output = str(tmp_path / "run")
    res = run(cfg).results
    assert res["model_digest"] and cached_result(Path(cfg.output), cfg) is not None
    # The same folder trained again (as a pretrain output can be): same name, other weights.
    original = (model / "model.safetensors").read_bytes()
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()},
              str(model / "model.safetensors"))
    assert cached_result(Path(cfg.output), cfg) is None
    # Identical bytes written again (a new mtime) are the same model.
    (model / "model.safetensors").write_bytes(original)
    assert cached_result(Path(cfg.output), cfg) is not None


def test_a_checkpoint_of_a_model_folder_rewritten_since_is_not_resumed(tiny_bert: Path, tmp_path: Path) -> None:
    # The checkpoint fingerprint left the model out: a killed run resumed its old weights after the folder
    # behind the model name was trained again (compare's cache already compared the model's files).
    import shutil

    from transferlm.protocol.run import training_fingerprint

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    cfg = RunConfig.from_dict({"task": "toy", "model": str(model)})
    before = training_fingerprint(cfg, {}, {"train": "x"})
    assert training_fingerprint(cfg, {}, {"train": "x"}) == before
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes() + b" ")
    assert training_fingerprint(cfg, {}, {"train": "x"}) != before
