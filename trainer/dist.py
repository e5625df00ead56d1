"""Distributed set-up and teardown shared by pre-training (`trainer.train.run`) and fine-tuning
(`finetune`): one process without torchrun, one rank per process under it (NCCL on GPU, gloo on CPU)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_dist() -> Dist:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*; a plain `python -m ...` is one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, device)


def teardown_dist() -> None:
    # barrier first: gloo can abort a peer that is still talking when another rank tears down.
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed() -> Iterator[Dist]:
    """`with distributed() as d:` set up, run, tear down; on an error the group is destroyed without the
    barrier (a peer may be gone or stuck) and the error propagates."""
    d = setup_dist()
    try:
        yield d
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    teardown_dist()


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to the peak, then linear decay to 0 at `total` (paper §4.2); pre-training and
    fine-tuning share it."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))
