"""Global loss normalisation: the gradient does not depend on how the global batch is split.

1 process x batch 2B  ==  1 process x 2 accumulation steps x B  ==  2 gloo processes x batch B  (<= 1e-6),
and the whole CLI under torchrun with 2 processes reproduces the 1-process loss sequence.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.trainer.conftest import cli, losses, set_args, stream_of, tiny_config
from trainer.config import DataConfig, ModelConfig
from trainer.model import SpanBert
from trainer.train import global_counts, train_step

MODEL = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=64,
                    dropout=0.0, attention_dropout=0.0)  # no dropout: ranks draw different dropout masks


def _halves(shard_dir) -> tuple[dict, dict, dict]:
    """A global batch of 2B = 4 blocks of *different* lengths (so the halves have different target
    counts and per-rank normalisation would be wrong), and its two halves."""
    stream = stream_of(shard_dir, DataConfig(batch_size=4, num_workers=0), max_len=64, max_sbo_targets=15, seed=3)
    lengths = stream.shards.lengths
    short = np.flatnonzero(lengths < 40)[:2]
    longest = np.flatnonzero(lengths == lengths.max())[:2]
    rows = np.array([*longest, *short])  # two full blocks, then two short ones: ~18 vs <= 12 MLM targets
    full = stream.collate(0, rows)
    half = [{k: v[i * 2 : (i + 1) * 2] for k, v in full.items()} for i in range(2)]
    return full, half[0], half[1]


def _model() -> SpanBert:
    torch.manual_seed(0)
    return SpanBert(MODEL)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, world: int, halves_file: str, out_file: str, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        batch = torch.load(halves_file)[rank]
        model = _model()
        ddp = DDP(model)
        counts = global_counts([batch], world, torch.device("cpu"))
        sums = train_step(ddp, [batch], counts.targets, world, contextlib.nullcontext())
        sums = sums.all_reduce_local()
        if rank == 0:
            torch.save({"grads": _grads(model), "sums": torch.cat([sums.loss, sums.correct]), "counts": counts.pack()}, out_file)
    finally:
        dist.barrier()  # nobody tears gloo down while a peer still talks (its known shutdown race)
        dist.destroy_process_group()


def test_gradients_identical_for_1x2B_accumulation_and_2_gloo_ranks(shard_dir, tmp_path):
    full, h0, h1 = _halves(shard_dir)
    assert global_counts([h0], 1, "cpu").targets[1] != global_counts([h1], 1, "cpu").targets[1]  # the halves differ

    one = _model()
    counts = global_counts([full], 1, torch.device("cpu"))
    sums_one = train_step(one, [full], counts.targets, 1, contextlib.nullcontext())
    ref = _grads(one)

    accum = _model()
    train_step(accum, [h0, h1], global_counts([h0, h1], 1, "cpu").targets, 1, contextlib.nullcontext())
    for n, g in _grads(accum).items():
        torch.testing.assert_close(g, ref[n], rtol=0, atol=1e-6, msg=n)

    torch.save([h0, h1], tmp_path / "halves.pt")
    mp.start_processes(_worker, args=(2, str(tmp_path / "halves.pt"), str(tmp_path / "out.pt"), str(tmp_path / "init")),
                       nprocs=2, join=True, start_method="spawn")
    two = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(two["counts"], counts.pack())
    torch.testing.assert_close(two["sums"], torch.cat([sums_one.loss, sums_one.correct]), rtol=1e-6, atol=1e-6)
    for n, g in two["grads"].items():
        torch.testing.assert_close(g, ref[n], rtol=0, atol=1e-6, msg=n)

    # Control: averaging per rank (what a naive DDP loop does) gives a measurably different gradient.
    naive = _model()
    for h in (h0, h1):
        train_step(naive, [h], global_counts([h], 1, "cpu").targets, 2, contextlib.nullcontext())
    diff = max((p.grad / 2 - ref[n]).abs().max().item() for n, p in naive.named_parameters())
    assert diff > 1e-5


@pytest.mark.slow
def test_torchrun_2_processes_match_1_process(shard_dir, tmp_path):
    cfg = tiny_config(model={"dropout": 0.0, "attention_dropout": 0.0}, data={"batch_size": 3},
                      train={"max_steps": 4, "ckpt_every": 4})
    args = ["--config", "tiny", "--data", str(shard_dir), *set_args(cfg)]
    two = cli([*args, "--out", str(tmp_path / "two")], torchrun=2, timeout=180)
    assert two.returncode == 0, two.stdout + two.stderr
    one = cli([*args, "--set", "train.grad_accum=2", "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert list(a) == [1, 2, 3, 4] and list(b) == [1, 2, 3, 4]
    np.testing.assert_allclose(list(b.values()), list(a.values()), rtol=1e-5)
    assert a[4] < a[1]
    assert os.path.isfile(tmp_path / "two" / "checkpoints" / "step-00000004.pt")
