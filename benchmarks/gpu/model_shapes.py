"""Model "shape" folders for the GPU serving kit: a model's config and tokenizer without its weights, and seeded
random weights made from them where the benchmark runs.

Throughput does not depend on weight values (the load test's LoRA adapters are random already), so the GPU
machine, which has neither our model packages nor internet, gets each base model as a few MB of config and
tokenizer files and makes the weights itself:

    python benchmarks/gpu/model_shapes.py write minilm-l6 smollm2-135m --out .gpu/models   # here (prepare.sh)
    python benchmarks/gpu/model_shapes.py materialize .gpu/models/minilm-l6 --seed 0        # there (run_serve.sh)

after which ``transferlm serve --model .gpu/models/minilm-l6`` (and serve_load.py's ``--model``) loads the folder
like any local model folder. The same seed gives the same weights, bit for bit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# Files a model folder holds that a shape leaves out: weights (any format), and what nothing loads.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".ot")
SKIP_NAMES = {"README.md", ".gitattributes", "data_config.json", "transferlm_source.json"}
MARKER = "random_weights.json"  # written by materialize: the seed and what made the weights
SHAPE = "shape.json"  # written by write_shape: where the config and tokenizer came from


def write_shape(model: str, out: Path) -> Path:
    """Copy ``model``'s folder (a built-in name, converted first if it is a GGUF one, or a local folder) to
    ``out`` without its weights: config, tokenizer and sentence-transformers files. Returns ``out``."""
    from transferlm.models.zoo import resolve_model

    resolved = resolve_model(model)
    if resolved.source == "hub":
        raise SystemExit(f"{model}: a hub id; give a built-in name or a local model folder")
    source = Path(resolved.path)
    if out.exists():
        shutil.rmtree(out)
    kept: list[str] = []
    for f in sorted(source.rglob("*")):
        rel = f.relative_to(source)
        if not f.is_file() or f.name in SKIP_NAMES or f.suffix in WEIGHT_SUFFIXES or rel.parts[0].startswith("."):
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, out / rel)
        kept.append(str(rel))
    if "config.json" not in kept:
        raise SystemExit(f"{model}: {source} has no config.json")
    (out / SHAPE).write_text(json.dumps({"model": model, "from": str(source), "files": kept,
                                         "weights": "none: made by `model_shapes.py materialize`"}, indent=1))
    return out


def materialize(folder: Path, seed: int = 0) -> dict[str, Any]:
    """Seeded random weights for the shape folder ``folder``, saved into it as model.safetensors.

    A decoder (any config transferlm treats as one) gets its causal-LM class, as a converted built-in is saved;
    anything else the bare AutoModel. Skipped when the folder already holds weights made with this seed.
    """
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from transferlm.models.loading import is_decoder_config

    marker = folder / MARKER
    if marker.is_file() and any(folder.glob("*.safetensors")):
        made = json.loads(marker.read_text())
        if made.get("seed") == seed:
            return made
    if not (folder / "config.json").is_file():
        raise SystemExit(f"{folder}: no config.json (not a model shape folder; run prepare.sh)")
    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(folder)
    cls = AutoModelForCausalLM if is_decoder_config(config) else AutoModel
    torch.manual_seed(seed)
    model = cls.from_config(config).float()
    for f in folder.glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(folder)
    made = {"seed": seed, "class": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "transformers": transformers.__version__, "torch": torch.__version__,
            "seconds": round(time.perf_counter() - t0, 1)}
    marker.write_text(json.dumps(made, indent=1))
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="config + tokenizer folders of built-in models, no weights")
    w.add_argument("models", nargs="+")
    w.add_argument("--out", default=".gpu/models", help="one folder per model is written under it")
    m = sub.add_parser("materialize", help="seeded random weights into shape folders")
    m.add_argument("folders", nargs="+")
    m.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "write":
        for model in args.models:
            out = write_shape(model, Path(args.out) / model.replace("/", "_"))
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            print(f"{model}: {out} ({size / 1e6:.1f} MB, no weights)")
    else:
        for folder in args.folders:
            made = materialize(Path(folder), args.seed)
            print(f"{folder}: {made['class']}, {made['parameters'] / 1e6:.1f}M random parameters (seed {made['seed']})",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
