"""The GPU benchmark cannot run here; its --cpu-smoke mode runs the same code path (real shard blocks through
the DataLoader, DDP wrapper, repeats, loader-alone) so it does not rot."""

from __future__ import annotations

import json
import os
import subprocess

from tests.trainer.conftest import PY, REPO


def test_gpu_bench_cpu_smoke(shard_dir, tmp_path):
    done = subprocess.run([PY, "bench/gpu_bench.py", "--cpu-smoke", "--data", str(shard_dir), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    row = [line for line in done.stdout.splitlines() if line.startswith("| tiny | eager |")]
    assert len(row) == 1 and "| 256 |" in row[0]
    result = json.loads((tmp_path / "gpu_bench.json").read_text())["results"][0]
    assert result["tokens_per_s"] > 0 and 0 <= result["padded_share"] < 0.5
    assert 2 < result["mean_len"] <= 64  # real blocks of <= 62 pieces + [CLS]/[SEP]
    assert result["step_ms_min"] <= result["step_ms_median"]
    assert json.loads((tmp_path / "gpu_bench.json").read_text())["loader_blocks_per_s_per_worker"]["1"] > 0
    record = json.loads((tmp_path / "gpu_bench.json").read_text())
    short, long = record["phases"]  # the phases row: sub-blocks of 16 against the 64-token blocks, same budget
    assert (short["seq_len"], long["seq_len"]) == (16, 64) and short["mean_len"] <= 16 < long["mean_len"]
    assert short["batch_tokens"] == long["batch_tokens"] == 256 and short["steps_per_s"] > 0
    # The self-check ran; on CPU the flash kernel does not exist, and the record says why.
    assert record["selfcheck_varlen"]["passed"] is False and "raised" in record["selfcheck_varlen"]["problem"]
    missing = subprocess.run([PY, "bench/gpu_bench.py", "--cpu-smoke", "--data", str(tmp_path / "nowhere")], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error:") and "Traceback" not in missing.stderr
