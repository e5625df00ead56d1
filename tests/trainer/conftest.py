"""Fixtures for the trainer tests: tiny configs and the CLI runner (`shard_dir`, real pipeline output,
comes from tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.config import Config, DataConfig
from trainer.data import BlockStream

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture(autouse=True)
def one_torch_thread():
    # The CI box has 2 cores shared with other jobs: OpenMP barriers across oversubscribed threads turn
    # microsecond ops into millisecond ones. One intra-op thread keeps the in-process runs fast and stable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**sections) -> Config:
    """A 2-layer, 32-wide model; `sections` updates fields, e.g. train={"max_steps": 4}."""
    raw = {
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position": 64},
        "data": {"batch_size": 4, "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"max_steps": 6, "log_every": 1, "ckpt_every": 2, "keep_last": 5},
    }
    for name, fields in sections.items():
        raw.setdefault(name, {}).update(fields)
    return Config.from_dict(raw)


def stream_of(data_dir: str | Path, data: DataConfig, *, seed: int, max_sbo_targets: int = 15, **kw) -> BlockStream:
    """A BlockStream over `data` with its masking made effective by `seed` / `max_sbo_targets` (as Config.masking
    does from train.seed and model.max_sbo_targets)."""
    return BlockStream(data_dir, data, data.masking_for(seed=seed, max_sbo_targets=max_sbo_targets), **kw)


def set_args(cfg: Config) -> list[str]:
    """The CLI --set arguments that reproduce `cfg` on top of any preset."""
    args = []
    for section, fields in cfg.to_dict().items():
        for k, v in fields.items():
            args += ["--set", f"{section}.{k}={json.dumps(v)}"]
    return args


def cli(args: list[str], *, torchrun: int = 0, timeout: float = 120, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run `python -m trainer ARGS` (or under torchrun with N processes) from the repo root."""
    head = [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else [PY]
    cmd = head + ["-m", "trainer", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if popen.pop("background", False):
        # Own session: a test can signal the whole process group (trainer + DataLoader workers), as a scheduler does.
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (the last line for a step, after a resume re-logs it)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        out[m["step"]] = m["loss"]
    return out
