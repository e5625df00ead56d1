#!/usr/bin/env bash
# The one prepared GPU check (issue 13): the GPU-only tests, a short CUDA training run through the CLI,
# and bench/gpu_bench.py for base and large at 512 (eager and compiled), every table written to $OUT.
#
# Made here, with ../shared (no GPU needed):   make gpu-shards
#   -> build/gpu-shards  (3 MB: 1,209 real 512-token blocks of the Wikipedia sample, no annotation)
#   -> build/gpu-pydeps  (pytest copied from .venv, for a GPU image that lacks it; pure Python)
# On the GPU machine (torch >= 2.11 with CUDA; no Beam, spaCy, transformers or network), from the repo root:
#   OUT=/some/dir bash bench/gpu_check.sh          # device tool: carry ["build/gpu-shards", "build/gpu-pydeps"]
# Budget: ~10 minutes on an H100/H200 (compilation is most of it). Each part has its own timeout and a
# failing part does not stop the next; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-check}
SHARDS=${SHARDS:-build/gpu-shards}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" SPANBERT_GPU_SHARDS="$SHARDS"
$PY -c "import pytest" 2>/dev/null || export PYTHONPATH="$PYTHONPATH:$PWD/build/gpu-pydeps"
status=0
part() { echo "== $1 ($(date -u +%H:%M:%S))" | tee -a "$OUT/summary.txt"; }

part "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/env.txt" | tee -a "$OUT/summary.txt"

part "GPU tests (pytest -m gpu): varlen flash = padded SDPA, compiled bf16 = eager, on-device non-finite skip"
# --noconftest: the suite's conftest wants ../shared; the gpu tests read $SHARDS only.
timeout 300 $PY -m pytest tests/trainer/test_trainer_speed.py -m gpu -q -rs -p no:cacheprovider --noconftest \
  2>&1 | tee "$OUT/gpu_tests.txt" | tail -5 | tee -a "$OUT/summary.txt" || status=1

part "the CLI on CUDA: tiny preset, 40 steps, compile auto (on), varlen attention, bf16"
rm -rf "$OUT/run-tiny"
timeout 300 $PY -m trainer --config tiny --data "$SHARDS" --out "$OUT/run-tiny" --max-steps 40 \
  --set train.log_every=10 --set data.num_workers=2 > "$OUT/run-tiny.log" 2>&1 || status=1
tail -2 "$OUT/run-tiny/metrics.jsonl" 2>/dev/null | tee -a "$OUT/summary.txt"

part "bench: base and large at 512, eager and compiled, 3 repeats"
timeout 600 $PY bench/gpu_bench.py --data "$SHARDS" --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -20 \
  | tee -a "$OUT/summary.txt" || status=1

part "done, status $status"
exit $status
