"""Turn a GGUF file (possibly shipped in parts) into a plain transformers folder, once.

Loading a GGUF with transformers dequantizes it on every load (tens of seconds);
the saved folder loads in a fraction of a second. Conversion is atomic (a killed
run leaves no half folder) and locked (two processes starting together convert
once). Every transformers/gguf version-sensitive call lives in the small
``_``-functions below, so a transformers upgrade touches only them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transferlm.errors import ModelError
from transferlm.io import atomic_dir

log = logging.getLogger(__name__)

SOURCE_FILE = "transferlm_source.json"
_CHUNK = 8 * 1024 * 1024


def is_converted(out_dir: Path, parts: list[Path] | None = None, sha256: str | None = None) -> bool:
    """Whether ``out_dir`` is a complete conversion (of ``parts`` / the GGUF with ``sha256``, where given).

    A folder renamed into place by :func:`convert_gguf` is complete by construction. The cache is named
    after the model only, so a package upgrade (or a zoo entry pinning another file) would otherwise keep
    serving the old conversion: the source recorded in the folder must match the one asked for.
    """
    out_dir = Path(out_dir)
    if not ((out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors"))):
        return False
    if parts is None and sha256 is None:
        return True
    return _source_matches(out_dir, parts, sha256)


def _source_matches(out_dir: Path, parts: list[Path] | None, sha256: str | None) -> bool:
    try:
        info = json.loads((out_dir / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict):
        return False
    if sha256 is not None and str(info.get("sha256") or "").lower() != sha256.lower():
        return False
    if parts is None:
        return True
    if info.get("gguf_parts") != [p.name for p in parts]:
        return False
    try:
        current = _part_stats(parts)
    except OSError:
        return False
    # Folders written before sizes were recorded are checked by name and sha256 only.
    if "sizes" in info and info["sizes"] != current["sizes"]:
        return False
    # Without a sha256 the file content is unknown: a rewritten file (same size) must convert again.
    return sha256 is not None or info.get("mtimes_ns") == current["mtimes_ns"]


def _part_stats(parts: list[Path]) -> dict[str, list[int]]:
    stats = [p.stat() for p in parts]
    return {"sizes": [st.st_size for st in stats], "mtimes_ns": [st.st_mtime_ns for st in stats]}


def convert_gguf(
    gguf_parts: list[Path],
    out_dir: Path,
    *,
    sha256: str | None = None,
    label: str | None = None,
) -> Path:
    """Convert ``gguf_parts`` (concatenated in order) into a transformers folder at ``out_dir``.

    Returns ``out_dir``. A complete ``out_dir`` is reused without converting again.
    ``sha256`` (of the whole GGUF) catches a corrupt or mismatched install before the
    slow load. ``label`` names the model in the log line.
    """
    out_dir = Path(out_dir)
    parts = [Path(p) for p in gguf_parts]
    if is_converted(out_dir, parts, sha256):
        return out_dir
    if not parts:
        raise ModelError(f"no GGUF file given to convert into {out_dir}")
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelError(f"GGUF file not found: {', '.join(missing)}")
    # Before joining and hashing hundreds of MB: transformers would fail late, with a multi-line ImportError.
    _require_gguf_package(label or parts[0].name)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir.with_name(out_dir.name + ".lock"), out_dir):
        # Another process may have finished the conversion while we waited.
        if is_converted(out_dir, parts, sha256):
            return out_dir
        _remove_stale_temps(out_dir)
        log.info(
            "converting %s from GGUF to a transformers folder in %s (once; may take a minute)",
            label or parts[0].name,
            out_dir,
        )
        with _joined(parts, out_dir) as gguf_file:
            if sha256 is not None:
                _check_sha256(gguf_file, sha256, label or parts[0].name)
            model, tokenizer = load_gguf(gguf_file)
            with atomic_dir(out_dir) as tmp:
                save_converted(model, tokenizer, tmp)
                _write_source(tmp, parts, sha256)
    return out_dir


# --- locking and temp files -------------------------------------------------------------


@contextlib.contextmanager
def _locked(lock_path: Path, out_dir: Path) -> Iterator[None]:
    # flock is released by the kernel when the holder dies, so a killed run never
    # leaves a stuck lock. The lock file itself is left in place on purpose:
    # deleting it would let a third process lock a different inode.
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is converting %s", out_dir)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_stale_temps(out_dir: Path) -> None:
    """Delete leftovers of a killed conversion (only safe while holding the lock)."""
    # Names made for this exact out_dir by tempfile.mkdtemp (".<name>.<8 random chars>.tmp")
    # and by atomic_dir when it replaces a folder (".<name>.old").
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(old|[A-Za-z0-9_]{{8}}\.tmp)$")
    for path in out_dir.parent.iterdir():
        if pattern.match(path.name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def _joined(parts: list[Path], out_dir: Path) -> Iterator[Path]:
    """Yield one GGUF file: the only part itself, or the parts concatenated into the cache."""
    if len(parts) == 1 and parts[0].suffix == ".gguf":
        yield parts[0]
        return
    # transformers recognises a GGUF by its ".gguf" suffix, so the joined file gets
    # that name inside a temp folder (which a later run cleans up if this one is killed).
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    joined = tmp_dir / "model.gguf"
    try:
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, _CHUNK)
        yield joined
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _check_sha256(path: Path, expected: str, label: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise ModelError(
            f"the GGUF file of {label} is corrupt or not the expected one (sha256 mismatch); reinstall its package"
        )


def _write_source(folder: Path, parts: list[Path], sha256: str | None) -> None:
    info = {
        "gguf_parts": [p.name for p in parts],
        **_part_stats(parts),
        "sha256": sha256,
        "transformers": _transformers_version(),
    }
    (folder / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


# --- transformers / gguf version-sensitive calls ----------------------------------------

GGUF_REQUIREMENT = "gguf>=0.10"  # what transformers needs to read GGUF files


def _require_gguf_package(label: str) -> None:
    try:
        version = importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is None or importlib.util.find_spec("gguf") is None:
        raise ModelError(f"converting {label} from GGUF needs the package gguf: pip install '{GGUF_REQUIREMENT}'")
    from packaging.version import InvalidVersion, Version

    with contextlib.suppress(InvalidVersion):
        if Version(version) < Version(GGUF_REQUIREMENT.split(">=")[1]):
            raise ModelError(f"converting {label} from GGUF needs {GGUF_REQUIREMENT} (installed: gguf {version}): "
                             f"pip install -U '{GGUF_REQUIREMENT}'")


def load_gguf(gguf_file: Path) -> tuple[Any, Any]:
    """Load (model, tokenizer) from one GGUF file, dense and with no quantizer attached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **_dequantize_kwargs(name))
    _clear_quantization(model)
    return model, tokenizer


def _dequantize_kwargs(name: str) -> dict[str, Any]:
    # transformers >= 5.x can keep GGUF weights packed (when `kernels` is installed);
    # a folder we save must hold plain dense weights, so ask for dequantization.
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers: GGUF always dequantizes
        return {}
    if "dequantize" not in inspect.signature(GgufConfig.__init__).parameters:
        return {}
    return {"quantization_config": GgufConfig(gguf_file=name, dequantize=True)}


def _clear_quantization(model: Any) -> None:
    """Mark the dequantized model as a plain one, so save_pretrained and training accept it."""
    model.hf_quantizer = None
    with contextlib.suppress(AttributeError):  # a read-only property in some versions
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        with contextlib.suppress(AttributeError):
            del model.config.quantization_config


def save_converted(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _transformers_version() -> str | None:
    # From metadata: importing transformers just for this costs seconds.
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None
