"""The per-objective sums that training and evaluation both report: summed loss, correct predictions and
target count of each objective (MLM, SBO, NSP), and the step's global target counts with the stop flag.

Metrics are token-level averages: the summed loss / correct count of an objective divided by its target
count, over a log window (training) or the whole evaluation set. Each record is a few float64 vectors in
OBJECTIVES order; what crosses an all-reduce is one flat tensor, packed and unpacked here only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.data.collate import IGNORE
from trainer.model import OBJECTIVES


def target_counts(batch: dict[str, torch.Tensor]) -> list[float]:
    """Number of MLM / SBO / NSP targets in one batch, in OBJECTIVES order (0 for a head the batch does not feed)."""
    return [
        float((batch["mlm_labels"] != IGNORE).sum()),
        float((batch["sbo_labels"] != IGNORE).sum()) if "sbo_labels" in batch else 0.0,
        float(len(batch["nsp_labels"])) if "nsp_labels" in batch else 0.0,
    ]


@dataclass
class StepCounts:
    """One optimizer step's global target counts (every rank, every micro-batch) and the stop flag
    (0: go on, 1: SIGTERM, 2: train.max_minutes), all-reduced together as one tensor."""

    targets: torch.Tensor  # [len(OBJECTIVES)] float64: exact past 2**24 targets
    stop: torch.Tensor  # [] float64: > 0 when some rank asked to stop

    def pack(self) -> torch.Tensor:
        return torch.cat([self.targets, self.stop[None]])

    @classmethod
    def unpack(cls, flat: torch.Tensor) -> StepCounts:
        n = len(OBJECTIVES)
        return cls(targets=flat[:n], stop=flat[n])


@dataclass
class ObjectiveSums:
    """Per objective (vectors in OBJECTIVES order): summed loss, correct predictions, number of targets."""

    loss: torch.Tensor
    correct: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device | str) -> ObjectiveSums:
        def z() -> torch.Tensor:
            return torch.zeros(len(OBJECTIVES), dtype=torch.float64, device=device)

        return cls(z(), z(), z())

    def add_output(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor] | None = None) -> None:
        """Add one forward's summed losses and correct counts (`<objective>_loss` / `_correct`), detached;
        with `batch`, also its targets of the objectives the model scored (training sets the global ones)."""
        counts = target_counts(batch) if batch is not None else None
        for k, o in enumerate(OBJECTIVES):
            if f"{o}_loss" in out:
                self.loss[k] += out[f"{o}_loss"].detach()
                self.correct[k] += out[f"{o}_correct"]
                if counts is not None:
                    self.targets[k] += counts[k]

    def __add__(self, other: ObjectiveSums) -> ObjectiveSums:
        return ObjectiveSums(self.loss + other.loss, self.correct + other.correct, self.targets + other.targets)

    def all_reduce_local(self) -> ObjectiveSums:
        """Losses and correct counts summed over ranks (one all-reduce); the targets are global already."""
        import torch.distributed as dist

        n = len(OBJECTIVES)
        flat = torch.cat([self.loss, self.correct])
        dist.all_reduce(flat)
        return ObjectiveSums(flat[:n], flat[n:], self.targets)

    def means(self, with_targets: bool = False) -> dict[str, float]:
        """`<objective>_loss` / `_acc` (/ `_targets`) of each objective that had targets."""
        loss, correct, targets = (x.cpu().numpy() for x in (self.loss, self.correct, self.targets))
        out: dict[str, float] = {}
        for k, o in enumerate(OBJECTIVES):
            if (n := targets[k]) > 0:
                out[f"{o}_loss"] = float(loss[k] / n)
                out[f"{o}_acc"] = float(correct[k] / n)
                if with_targets:
                    out[f"{o}_targets"] = int(n)
        return out

    def total_loss(self) -> float:
        """The training loss: the sum of the per-objective means (objectives without targets add nothing)."""
        loss, targets = self.loss.cpu().numpy(), self.targets.cpu().numpy()
        total = 0.0
        for k in range(len(OBJECTIVES)):
            if targets[k] > 0:
                total += loss[k] / targets[k]
        return float(total)
