#!/usr/bin/env bash
# Prepare the GPU serving kit HERE (with the package index and the data), once, before the device call:
#   .whl/         wheels for Python 3.12 / manylinux x86_64 of what `transferlm serve` needs and the GPU image lacks
#                 (or has in another version), at the versions of constraints.txt
#   .gpu/models/  minilm-l6 and smollm2-135m as config + tokenizer folders, no weights (run_serve.sh makes seeded
#                 random ones there: throughput does not depend on weight values)
#   .gpu/inputs.json  the test inputs serve_load.py picks from the data (up to 300 per task, 8 tasks)
# Both folders are git-ignored (.git/info/exclude) and travel with the device call's carry [".whl", ".gpu"].
# Then: one device call, command `bash benchmarks/gpu/run_serve.sh` (see README, Serving, "On a GPU").
#
#   bash benchmarks/gpu/prepare.sh            # PYTHON=... to use another interpreter (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in "$REPO/.venv/bin/python" "$(git rev-parse --path-format=absolute --git-common-dir)/../.venv/bin/python"; do
    if [ -x "$cand" ]; then PY=$cand; break; fi
  done
fi
PY=${PY:-python3}
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. both folders git-ignored (they must never be committed; the device call carries them)
exclude="$(git rev-parse --path-format=absolute --git-common-dir)/info/exclude"
for d in .whl .gpu; do
  if ! git check-ignore -q "$d/x"; then mkdir -p "$(dirname "$exclude")"; echo "/$d/" >> "$exclude"; echo "ignored /$d/ in $exclude"; fi
done

# 2. wheels, at the versions constraints.txt pins. transformers is carried (the image has 5.17.0, we pin 5.24.0;
# its needs: huggingface-hub>=1.31 (image 1.33.0), tokenizers>=0.23.1,<0.24 (0.23.2), safetensors>=0.8 (0.8.0),
# regex>=2025.10.22 (image version unknown: carried)); peft and accelerate at our tested versions with it.
WHEELS="fastapi starlette uvicorn pydantic pydantic_core annotated-types typing-inspection annotated-doc
opentelemetry-api typing_extensions transformers regex peft accelerate"
pins=()
for name in $WHEELS; do
  norm=$(echo "$name" | tr '_A-Z' '-a-z')
  line=$(tr '_A-Z' '-a-z' < constraints.txt | grep -E "^$norm==" || true)
  [ -n "$line" ] || { echo "prepare: $name is not pinned in constraints.txt" >&2; exit 1; }
  pins+=("$line")
done
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}" 2>&1 | grep -v "is ignored" || true
n=$(ls .whl/*.whl 2>/dev/null | wc -l)
[ "$n" -eq "$(echo $WHEELS | wc -w)" ] || { echo "prepare: got $n wheels for $(echo $WHEELS | wc -w) names" >&2; ls .whl >&2; exit 1; }
"$PY" benchmarks/gpu/check_wheels.py .whl

# 3. model shape folders (smollm2-135m is converted from its GGUF package into the transferlm cache first, ~30 s once)
rm -rf .gpu/models
"$PY" benchmarks/gpu/model_shapes.py write minilm-l6 smollm2-135m --out .gpu/models 2>&1 | grep -v "it/s\]" || true
for m in minilm-l6 smollm2-135m; do
  [ -f ".gpu/models/$m/config.json" ] || { echo "prepare: .gpu/models/$m has no config.json" >&2; exit 1; }
done

# 4. the inputs (from ../shared/data or $TRANSFERLM_DATA; the device has no data)
"$PY" benchmarks/serve_load.py --write-inputs .gpu/inputs.json

# 5. what will travel: the working tree (tracked + untracked-not-ignored) plus the carried folders; limit 64 MiB
echo
echo "wheels:"
ls -l .whl | awk 'NR>1 {printf "  %8.2f MB  %s\n", $5/1e6, $9}'
tree=$(git ls-files -co --exclude-standard -z | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
whl=$(du -sb .whl | cut -f1); gpu=$(du -sb .gpu | cut -f1)
total=$((tree + whl + gpu))
printf "travels: tree %.1f MB + .whl %.1f MB + .gpu %.1f MB = %.1f MiB (limit 64 MiB)\n" \
  "$(echo "$tree/1000000" | bc -l)" "$(echo "$whl/1000000" | bc -l)" "$(echo "$gpu/1000000" | bc -l)" \
  "$(echo "$total/1048576" | bc -l)"
[ "$total" -lt $((60 * 1048576)) ] || { echo "prepare: over 60 MiB: too close to the 64 MiB limit" >&2; exit 1; }
echo "ready: device call with carry [\".whl\", \".gpu\"] and command: bash benchmarks/gpu/run_serve.sh"
