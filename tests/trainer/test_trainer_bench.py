"""The GPU benchmark cannot run here; its --cpu-smoke mode runs the same code path so it does not rot."""

from __future__ import annotations

import os
import subprocess

from tests.trainer.conftest import PY, REPO


def test_gpu_bench_cpu_smoke():
    done = subprocess.run([PY, "bench/gpu_bench.py", "--cpu-smoke"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    row = [line for line in done.stdout.splitlines() if line.startswith("| tiny |")]
    assert len(row) == 1 and "2 x 64" in row[0]
    tokens_per_s = float(row[0].split("|")[5].replace(",", ""))
    assert tokens_per_s > 0
