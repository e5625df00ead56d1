#!/usr/bin/env bash
# The one prepared GPU check (issues 13 and 24): the GPU-only tests, a short CUDA training run through the CLI
# (which runs the start-up self-checks of varlen attention and torch.compile: its "paths used" line goes to
# the summary), and bench/gpu_bench.py: the varlen self-check on a real batch, base and large at 512 (eager
# and compiled), and the sequence-length phases row (128 vs 512). Every table is written to $OUT.
#
# Made here, with ../shared (no GPU needed):   make gpu-shards
#   -> build/gpu-shards  (3 MB: 1,209 real 512-token blocks of the Wikipedia sample, no annotation)
#   -> build/gpu-pydeps  (pytest copied from .venv, for a GPU image that lacks it; pure Python)
# On the GPU machine (torch >= 2.11 with CUDA; no Beam, spaCy, transformers or network), from the repo root:
#   OUT=/some/dir bash bench/gpu_check.sh          # device tool: carry ["build/gpu-shards", "build/gpu-pydeps"]
# Budget: under 10 minutes on an H100/H200 (one device command is at most 600 s): the parts' timeouts add up
# to 560 s, compilation is most of it, and gpu_bench.py rewrites its tables after every configuration, so a
# part cut short still leaves what it measured. A failing part does not stop the next; the exit status is
# non-zero if any failed. $OUT gets 7 files (the device tool brings back at most 8): summary.txt,
# gpu_tests.txt, run-tiny.log, run-tiny-metrics.jsonl, bench.log, gpu_bench.md, gpu_bench.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-check}
SHARDS=${SHARDS:-build/gpu-shards}
PY=${PYTHON:-python3}
RUN=${RUN_DIR:-/tmp/spanbert-gpu-run-tiny}  # the run directory stays outside $OUT (checkpoints, tb/)
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" SPANBERT_GPU_SHARDS="$SHARDS" PYTHONUNBUFFERED=1
$PY -c "import pytest" 2>/dev/null || export PYTHONPATH="$PYTHONPATH:$PWD/build/gpu-pydeps"
status=0
part() { echo "== $1 ($(date -u +%H:%M:%S))" | tee -a "$OUT/summary.txt"; }

part "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))"
  $PY -c "import torch; print(torch.ops.aten._flash_attention_forward.default._schema)"
} 2>&1 | tee -a "$OUT/summary.txt"

part "GPU tests (pytest -m gpu): varlen flash = padded SDPA, compiled bf16 = eager, on-device non-finite skip, the self-check on this torch"
# --noconftest: the suite's conftest wants ../shared; the gpu tests read $SHARDS only.
timeout 120 $PY -m pytest tests/trainer/test_trainer_speed.py tests/trainer/test_selfcheck.py -m gpu -q -rs -p no:cacheprovider --noconftest \
  2>&1 | tee "$OUT/gpu_tests.txt" | tail -5 | tee -a "$OUT/summary.txt" || status=1

part "the CLI on CUDA: tiny preset, 40 steps, compile auto (on), attention auto (varlen, self-checked), bf16"
rm -rf "$RUN"
timeout 110 $PY -m trainer --config tiny --data "$SHARDS" --out "$RUN" --max-steps 40 \
  --set train.log_every=10 --set data.num_workers=2 > "$OUT/run-tiny.log" 2>&1 || status=1
grep -E "warning: |paths used|model.attention|error" "$OUT/run-tiny.log" | tee -a "$OUT/summary.txt"
cp "$RUN/metrics.jsonl" "$OUT/run-tiny-metrics.jsonl" 2>/dev/null
tail -2 "$OUT/run-tiny-metrics.jsonl" 2>/dev/null | tee -a "$OUT/summary.txt"

part "bench: varlen self-check; base and large at 512, eager and compiled, 3 repeats; phases 128 vs 512"
timeout 330 $PY bench/gpu_bench.py --data "$SHARDS" --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -24 \
  | tee -a "$OUT/summary.txt" || status=1

part "done, status $status"
exit $status
