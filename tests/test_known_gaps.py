"""The maintained libraries we would have used but cannot, each pinned by a test that fails once it is fixed.

- ``adapters`` (AdapterHub) requires transformers 4.x; we pin 5.24: our adapters are our own (methods/efficient/adapter).
- OpenPrompt's last release pins a sentencepiece with no wheel for this Python: our own Template/Verbalizer (prompts/).
- ``evaluate.load`` fetches every metric's script from the Hub: our metrics are scikit-learn/scipy (evaluation/).
- peft's prefix-tuning on BERT: tests/test_efficient.py::test_peft_prefix_tuning_gap_on_bert (offline, default suite).

These ask the package index (the one network service this project may use), so they are slow tests: CI runs them
with ``-m slow``. When one fails, upstream changed: try the library again before keeping our replacement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow


def _pip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                          capture_output=True, text=True, timeout=timeout)


def _resolve(*reqs: str, deps: bool = True) -> list[dict]:
    """What ``pip install reqs`` would install into this environment (nothing is installed)."""
    out = _pip("install", "--dry-run", "--quiet", "--report", "-", *([] if deps else ["--no-deps"]), *reqs)
    assert out.returncode == 0, f"pip could not resolve {reqs}: {out.stderr[-600:]}"
    return json.loads(out.stdout)["install"]


def _requirement(package: dict, name: str) -> Requirement:
    reqs = [Requirement(r) for r in package["metadata"].get("requires_dist", [])]
    found = [r for r in reqs if r.name.lower() == name and not r.marker]
    assert found, f"{package['metadata']['name']} no longer requires {name}: {reqs}"
    return found[0]


def test_adapters_requires_a_transformers_we_do_not_run() -> None:
    import transformers

    (latest,) = _resolve("adapters", deps=False)
    req = _requirement(latest, "transformers")
    assert not req.specifier.contains(transformers.__version__), \
        f"adapters {latest['metadata']['version']} now takes transformers {transformers.__version__} ({req})"
    both = _pip("install", "--dry-run", "--quiet", "adapters", f"transformers=={transformers.__version__}")
    assert both.returncode != 0 and "ResolutionImpossible" in both.stderr


def test_openprompt_pins_a_sentencepiece_without_a_wheel_for_this_python(tmp_path: Path) -> None:
    (latest,) = _resolve("openprompt", deps=False)
    pinned = _requirement(latest, "sentencepiece")
    assert str(pinned.specifier).startswith("=="), f"OpenPrompt no longer pins sentencepiece: {pinned}"
    # Only a source build would remain (it needs cmake and a C++ toolchain; here it fails to configure).
    wheel = _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(tmp_path), str(pinned))
    assert wheel.returncode != 0 and "No matching distribution" in wheel.stderr, \
        f"{pinned} now has a wheel for Python {sys.version_info[:2]}: OpenPrompt may install again"


def test_evaluate_load_needs_the_hub(tmp_path: Path) -> None:
    # Install evaluate and what it adds to this environment into a side folder, then load a metric offline.
    wanted = [f"{p['metadata']['name']}=={p['metadata']['version']}" for p in _resolve("evaluate")]
    side = tmp_path / "site"
    done = _pip("install", "--quiet", "--no-deps", "--target", str(side), *wanted)
    assert done.returncode == 0, done.stderr[-600:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(side), "HF_HOME": str(tmp_path / "hf")}
    probe = ("import evaluate\n"
             "try:\n    evaluate.load('accuracy')\n"
             "except Exception as e:\n    print('FAILED', type(e).__name__, e)\n"
             "else:\n    print('LOADED')\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=env)
    assert out.stdout.startswith("FAILED") and "Hub" in out.stdout, (out.stdout + out.stderr)[-600:]
    # ... while ours needs nothing but scikit-learn.
    from transferlm.evaluation.metrics import compute_metrics

    assert compute_metrics([0, 1, 1], [0, 1, 0], regression=False, primary="accuracy", num_labels=2)["accuracy"] == pytest.approx(2 / 3)
