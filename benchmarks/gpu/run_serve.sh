#!/usr/bin/env bash
# The serving load test on a GPU machine, in one device call (about 5-6 minutes on an H100 with 16 cores; hard
# caps below keep it under 7). Needs what benchmarks/gpu/prepare.sh made here: carry [".whl", ".gpu"], command
#   bash benchmarks/gpu/run_serve.sh
# It installs the carried wheels into /tmp/site, makes seeded random weights for the model shape folders (in
# $WORK, never in .gpu/), checks CUDA and the imports, then runs benchmarks/serve_load.py for minilm-l6 and
# smollm2-135m (modes mixed, per-task, none; no faults, no soak) with the servers on the GPU. Into $OUT:
#   run.log, env.txt, gpu-util.csv (nvidia-smi every 2 s), serve-gpu-minilm.json, serve-gpu-smollm2.json,
#   server-logs.txt (the servers' logs, for a failure)
# Knobs (environment): DEVICE (cuda; cpu for a dry run), PYTHON (python3), INSTALL_WHEELS (1; 0 uses the
# interpreter's own packages), QUICK (0; 1: seconds-long rounds and few clients, to test the flow on a CPU),
# WORK (/tmp/gpu-serve), MODELS ("minilm-l6 smollm2-135m"), CLIENTS_MINILM (32,128), CLIENTS_SMOLLM2 (16,64).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${OUT:-/tmp/gpu-serve-out}
WORK=${WORK:-/tmp/gpu-serve}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
MODELS=${MODELS:-minilm-l6 smollm2-135m}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/run.log") 2>&1
T0=$(date +%s)
say() { echo "[run_serve +$(( $(date +%s) - T0 ))s] $*"; }
die() { say "FAILED: $*"; exit 2; }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       HF_HUB_DISABLE_TELEMETRY=1 TRANSFORMERS_VERBOSITY=error

# 0. what prepare.sh made must be here
for m in $MODELS; do
  [ -f ".gpu/models/$m/config.json" ] || die ".gpu/models/$m/config.json missing: run benchmarks/gpu/prepare.sh where the data and the index are, and carry .gpu"
done
[ -f .gpu/inputs.json ] || die ".gpu/inputs.json missing: run benchmarks/gpu/prepare.sh and carry .gpu"

# 1. the carried wheels (fastapi, uvicorn, pydantic, transformers 5.24.0, peft, ...) into /tmp/site
if [ "${INSTALL_WHEELS:-1}" = 1 ]; then
  ls .whl/*.whl > /dev/null 2>&1 || die "no .whl/*.whl: run benchmarks/gpu/prepare.sh and carry .whl"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || die "pip install of the carried wheels failed"
  export PYTHONPATH=/tmp/site
  say "installed $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"

# 2. imports, versions, the GPU (fails here, not in a server's log)
"$PY" - "$DEVICE" > "$OUT/env.txt" 2>&1 <<'EOF'
import importlib.metadata as md, os, platform, sys
import torch
device = sys.argv[1]
print("python", platform.python_version(), sys.executable, "| cpus", os.cpu_count())
for name in ("torch", "transformers", "peft", "accelerate", "tokenizers", "huggingface_hub", "safetensors", "fastapi",
             "starlette", "uvicorn", "pydantic", "pydantic_core", "h11", "httpx", "prometheus_client", "numpy", "uvloop"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
import fastapi, peft, pydantic, transformers, uvicorn  # noqa: E401,F401
import transferlm.serving.app, transferlm.serving.protocol, transferlm.serving.server  # noqa: E401,F401
from transferlm.methods.efficient import peftlib  # noqa: F401
print("imports ok; transformers loaded from", transformers.__file__)
print("cuda available", torch.cuda.is_available(), "| torch cuda", torch.version.cuda)
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("CUDA is not available to torch: nothing to benchmark on")
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", p.multi_processor_count, "SMs")
EOF
rc=$?
cat "$OUT/env.txt"
[ $rc -eq 0 ] || die "environment check (above)"
command -v nvidia-smi > /dev/null && nvidia-smi -L >> "$OUT/env.txt" 2>&1

# 3. seeded random weights, in $WORK (the carried .gpu/ stays weightless)
mkdir -p "$WORK/models"
folders=()
for m in $MODELS; do
  rm -rf "$WORK/models/$m" && cp -r ".gpu/models/$m" "$WORK/models/$m" && folders+=("$WORK/models/$m")
done
"$PY" benchmarks/gpu/model_shapes.py materialize "${folders[@]}" --seed 0 || die "random weights"
say "weights ready"

# 4. the load tests
if [ "$QUICK" = 1 ]; then
  common=(--rounds 1 --seconds 3 --warmup 1 --threads 1)
  CLIENTS_MINILM=${CLIENTS_MINILM:-4,16}; CLIENTS_SMOLLM2=${CLIENTS_SMOLLM2:-4}
else
  common=(--rounds 2 --seconds 5 --warmup 1)
  CLIENTS_MINILM=${CLIENTS_MINILM:-32,128}; CLIENTS_SMOLLM2=${CLIENTS_SMOLLM2:-16,64}
fi
common+=(--inputs .gpu/inputs.json --device "$DEVICE" --parallel-start --no-faults --max-batch-size 64
         --max-queue 256 --work "$WORK/runs")
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 2 > "$OUT/gpu-util.csv" 2>&1 &
  SMI=$!
fi
failed=0
for m in $MODELS; do
  case $m in
    minilm-l6) clients=$CLIENTS_MINILM; cap=${CAP_MINILM:-170}; out=serve-gpu-minilm.json ;;
    smollm2-135m) clients=$CLIENTS_SMOLLM2; cap=${CAP_SMOLLM2:-190}; out=serve-gpu-smollm2.json ;;
    *) clients=16; cap=180; out=serve-gpu-$m.json ;;
  esac
  say "$m: clients $clients, at most ${cap}s"
  # timeout signals the whole process group on expiry: the servers serve_load started stop with it
  timeout -k 10 "$cap" "$PY" benchmarks/serve_load.py --model "$WORK/models/$m" --clients "$clients" "${common[@]}" \
    --out "$OUT/$out"
  rc=$?
  if [ $rc -ne 0 ]; then
    failed=1
    say "$m: serve_load exited $rc$([ $rc -eq 124 ] && echo ' (time cap)'); the servers' log tails:"
    tail -n 25 "$WORK"/runs/*"$m"/server-*.log 2>/dev/null
  fi
done
[ -n "${SMI:-}" ] && kill "$SMI" 2>/dev/null
for f in "$WORK"/runs/*/server-*.log; do [ -f "$f" ] && { echo "== $f"; tail -n 200 "$f"; }; done > "$OUT/server-logs.txt"
say "done$([ $failed = 1 ] && echo ', WITH FAILURES (above)'); results:"
ls -l "$OUT"
exit $failed
