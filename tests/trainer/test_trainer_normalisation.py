"""`train_step` / `global_counts` / `target_counts`, hand-worked on stand-in models (no data, no processes).

test_trainer_evaluate.py checks the gradient against autograd on real batches and test_trainer_ddp.py
against 2 gloo ranks; what neither can see is *when* DDP synchronises: with one micro-batch per rank
there is no `no_sync` to get wrong, and syncing on every micro-batch gives the same gradient (only more
communication). Here a DDP stand-in (an instance of DDP, so `train_step` treats it as one) records, at
each backward, whether gradient synchronisation was off.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer.model import IGNORE
from trainer.train import global_counts, target_counts, train_step


class _Linear(torch.nn.Module):
    """Summed losses w · value · scale per objective, so d loss / d w is known by hand."""

    def __init__(self, losses: dict[str, float], correct: float = 1.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.losses, self.correct = losses, correct

    def forward(self, batch):
        out = {}
        for name, value in self.losses.items():
            out[f"{name}_loss"] = self.w * value * batch["scale"]
            out[f"{name}_correct"] = torch.tensor(self.correct) * batch["scale"]
        return out


class _RecordingDDP(DDP):
    """DDP without a process group: `no_sync` only flips a flag, and each backward logs whether it was on."""

    def __init__(self, module: torch.nn.Module):
        torch.nn.Module.__init__(self)  # not DDP.__init__: no process group here
        self.module = module
        self.syncing = True
        self.synced_backwards: list[bool] = []

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def forward(self, batch):
        out = self.module(batch)
        loss = next(v for k, v in out.items() if k.endswith("_loss"))
        loss.register_hook(lambda g: self.synced_backwards.append(self.syncing) or g)  # runs inside backward
        return out


class _Compiled(torch.nn.Module):
    """What torch.compile returns: a wrapper whose `_orig_mod` is the module it compiled (here the DDP)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self._orig_mod = inner

    def forward(self, batch):
        return self._orig_mod(batch)


def _micro(*scales: float) -> list[dict[str, torch.Tensor]]:
    return [{"scale": torch.tensor(s)} for s in scales]


COUNTS = torch.tensor([4.0, 0.0, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("wrap", ["ddp", "compiled-ddp"])
def test_ddp_synchronises_on_the_last_micro_batch_only(wrap):
    """Three micro-batches: the first two backwards run under no_sync, the last one all-reduces."""
    ddp = _RecordingDDP(_Linear({"mlm": 2.0, "nsp": 5.0}))
    model = ddp if wrap == "ddp" else _Compiled(ddp)
    sums = train_step(model, _micro(1.0, 3.0, 0.5), COUNTS, 2, contextlib.nullcontext())
    assert ddp.synced_backwards == [False, False, True]
    # The gradient is that of sum_k (summed loss_k / N_k) * world over the micro-batches (scales 1 + 3 + 0.5).
    assert ddp.module.w.grad.item() == pytest.approx(2 * 4.5 * (2 / 4 + 5 / 1))
    assert sums.tolist() == [2 * 4.5, 4.5, 0.0, 0.0, 5 * 4.5, 4.5]


def test_one_micro_batch_synchronises():
    ddp = _RecordingDDP(_Linear({"mlm": 2.0}))
    train_step(ddp, _micro(1.0), torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64), 1, contextlib.nullcontext())
    assert ddp.synced_backwards == [True]
    assert ddp.module.w.grad.item() == pytest.approx(2.0 / 2.0)


def test_an_objective_without_targets_adds_nothing_and_divides_by_one():
    """N_sbo = 0: an SBO loss that is present (0 here, no targets) is divided by 1, never by 0 (NaN)."""
    model = _Linear({"mlm": 3.0, "sbo": 0.0})
    counts = torch.tensor([6.0, 0.0, 0.0], dtype=torch.float64)
    sums = train_step(model, _micro(1.0, 1.0), counts, 1, contextlib.nullcontext())
    assert model.w.grad.item() == pytest.approx(2 * 3.0 / 6.0)
    assert sums.tolist() == [6.0, 2.0, 0.0, 2.0, 0.0, 0.0]


def test_sums_accumulate_losses_and_correct_counts_separately():
    """Each objective's summed loss lands in slot 2k and its correct count in 2k + 1, over all micro-batches."""
    model = _Linear({"mlm": 1.5, "sbo": 2.5, "nsp": 4.0}, correct=7.0)
    counts = torch.tensor([3.0, 5.0, 2.0], dtype=torch.float64)
    sums = train_step(model, _micro(2.0, 1.0), counts, 1, contextlib.nullcontext())
    assert sums.dtype == torch.float64 and sums.device == counts.device
    assert sums.tolist() == [1.5 * 3, 7.0 * 3, 2.5 * 3, 7.0 * 3, 4.0 * 3, 7.0 * 3]
    assert model.w.grad.item() == pytest.approx(3 * (1.5 / 3 + 2.5 / 5 + 4.0 / 2))
    assert not sums.requires_grad  # metrics, detached from the graph


def _batch(mlm: list[list[int]], sbo: list[list[int]] | None = None, nsp: list[int] | None = None) -> dict:
    b = {"mlm_labels": torch.tensor(mlm)}
    if sbo is not None:
        b["sbo_labels"] = torch.tensor(sbo)
    if nsp is not None:
        b["nsp_labels"] = torch.tensor(nsp)
    return b


def test_target_counts_count_labels_that_are_not_ignored():
    x = IGNORE
    assert target_counts(_batch([[5, x, 7], [x, x, 9]])) == [3.0, 0.0, 0.0]
    assert target_counts(_batch([[5, x], [x, x]], sbo=[[x, 4], [x, x]], nsp=[0, 1])) == [1.0, 1.0, 2.0]
    assert target_counts(_batch([[x, x]], sbo=[[x, x]], nsp=[1])) == [0.0, 0.0, 1.0]


def test_global_counts_sum_micro_batches_and_carry_the_flag():
    x = IGNORE
    micro = [_batch([[5, x, 7]], sbo=[[5, x, 7]], nsp=[1]), _batch([[x, 3, 3], [2, 2, 2]], sbo=[[x, x, 3], [x, x, x]], nsp=[0, 0])]
    got = global_counts(micro, 1, torch.device("cpu"), flag=1.0)
    assert got.dtype == torch.float64 and got.tolist() == [7.0, 3.0, 3.0, 1.0]
    assert global_counts(micro[:1], 1, "cpu").tolist() == [2.0, 2.0, 1.0, 0.0]


def test_counts_and_sums_live_on_the_training_device():
    """The counts go to the device the step runs on, and the sums are made there (no host round trip).
    The meta device stands in for an accelerator on a CPU-only machine: same code path, no data."""
    meta = torch.device("meta")
    counts = global_counts([_batch([[5, IGNORE]])], 1, meta)
    assert counts.device == meta and counts.dtype == torch.float64 and counts.shape == (4,)
    model = _Linear({"mlm": 2.0}).to(meta)
    sums = train_step(model, [{"scale": torch.ones((), device=meta)}], counts[:3], 1, contextlib.nullcontext())
    assert sums.device == meta and sums.dtype == torch.float64 and sums.shape == (6,)
    assert model.w.grad is not None and model.w.grad.device == meta
