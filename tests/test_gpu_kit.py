"""The GPU serving kit (benchmarks/gpu/): weightless model shape folders, their seeded random weights, the
serving load test's inputs file, and the wheel-requirements check."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
from safetensors.torch import load_file

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH / "gpu"))
sys.path.insert(0, str(BENCH))
import check_wheels  # noqa: E402
import model_shapes  # noqa: E402
import serve_load  # noqa: E402
import serve_tasks  # noqa: E402


def test_shape_folder_keeps_config_and_tokenizer_but_no_weights(tiny_bert: Path, tmp_path: Path) -> None:
    out = model_shapes.write_shape(str(tiny_bert), tmp_path / "shape")
    names = {p.name for p in out.iterdir()}
    assert "config.json" in names and "tokenizer.json" in names and model_shapes.SHAPE in names
    assert not list(out.glob("*.safetensors"))
    assert json.loads((out / model_shapes.SHAPE).read_text())["from"] == str(tiny_bert)


@pytest.mark.parametrize("fixture, cls", [("tiny_bert", "BertModel"), ("tiny_llama", "LlamaForCausalLM")])
def test_random_weights_are_seeded_and_load_as_a_model_folder(fixture: str, cls: str, tmp_path: Path,
                                                              request: pytest.FixtureRequest) -> None:
    from transferlm.models.loading import load_backbone

    source = request.getfixturevalue(fixture)
    folders = [model_shapes.write_shape(str(source), tmp_path / name) for name in ("a", "b", "c")]
    made = [model_shapes.materialize(f, seed) for f, seed in zip(folders, (0, 0, 1), strict=True)]
    assert made[0]["class"] == cls and made[0]["seed"] == 0
    a, b, c = (load_file(str(f / "model.safetensors")) for f in folders)
    assert a.keys() == b.keys() == c.keys()
    assert all((a[k] == b[k]).all() for k in a)  # same seed: the same weights, bit for bit
    assert any(not (a[k] == c[k]).all() for k in a)
    mtime = (folders[0] / "model.safetensors").stat().st_mtime_ns
    assert model_shapes.materialize(folders[0], 0) == made[0]  # made already: not made again
    assert (folders[0] / "model.safetensors").stat().st_mtime_ns == mtime
    backbone = load_backbone(str(folders[0]))
    assert backbone.hidden_size == 32 and backbone.is_decoder == (fixture == "tiny_llama")


def test_materialize_refuses_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no config.json"):
        model_shapes.materialize(tmp_path)


def test_inputs_file_round_trip_and_errors(tmp_path: Path) -> None:
    inputs = serve_tasks.load_inputs(str(tmp_path / "no-data"))  # no data: every task gets the synthetic inputs
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps(inputs))
    assert serve_tasks.read_inputs(path) == inputs
    assert set(inputs) == {serve_tasks.served_name(t) for t in serve_tasks.TASKS}
    assert isinstance(inputs["rte"][0], dict) and isinstance(inputs["sst-2"][0], str)
    path.write_text(json.dumps({k: v for k, v in inputs.items() if k != "trec"}))
    with pytest.raises(SystemExit, match="no inputs for task 'trec'"):
        serve_tasks.read_inputs(path)
    path.write_text(json.dumps({**inputs, "cr": [{"text": "no sentence1"}]}))
    with pytest.raises(SystemExit, match="task 'cr': an input must be"):
        serve_tasks.read_inputs(path)
    with pytest.raises(SystemExit, match="cannot read it"):
        serve_tasks.read_inputs(tmp_path / "missing.json")


def _wheel(folder: Path, name: str, version: str, *requires: str) -> None:
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                   + "".join(f"Requires-Dist: {r}\n" for r in requires))


def test_wheel_check_finds_what_neither_the_wheels_nor_the_device_have(tmp_path: Path) -> None:
    _wheel(tmp_path, "fastapi", "1.0", "starlette>=1.6", "pydantic>=2.9", "anyio>=4",
           "uvloop; sys_platform == 'win32'", "httpx; extra == 'all'")
    _wheel(tmp_path, "starlette", "1.10.0", "typing-extensions>=4.10.0; python_version < '3.13'")
    assert check_wheels.check(tmp_path) == ["fastapi-1.0-py3-none-any.whl: needs pydantic>=2.9: neither carried "
                                            "nor on the device"]
    _wheel(tmp_path, "pydantic", "2.14.4", "tokenizers>=0.30")  # the device's tokenizers is 0.23.2
    assert check_wheels.check(tmp_path) == ["pydantic-2.14.4-py3-none-any.whl: needs tokenizers>=0.30, the device "
                                            "has 0.23.2: carry a wheel of it"]
    _wheel(tmp_path, "starlette", "0.9")
    problems = check_wheels.check(tmp_path)
    assert "two versions of starlette: 0.9 and 1.10.0" in problems
    assert check_wheels.check(tmp_path / "none") == [f"no wheels in {tmp_path / 'none'}"]


def test_write_inputs_refuses_synthetic_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "inputs.json"
    monkeypatch.setattr(sys, "argv", ["serve_load.py", "--write-inputs", str(out), "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--write-inputs: no data for SST-2"):
        serve_load.main()
    assert not out.exists()
