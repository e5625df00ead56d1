"""The batch plan: each epoch's global micro-batches (arrays of row ids), a pure function of (seed, epoch).

Shuffle the rows, sort windows of rows by length (bucketing: little padding), cut them into batches by
sequence count or by a padded-token budget, shuffle the batch order. Global batch j of the endless stream
(epoch 0's batches, then epoch 1's, ...) is `BatchPlan.rows(j)`.
"""

from __future__ import annotations

import functools

import numpy as np

from trainer.config import DataConfig


def round_up(x: int, m: int) -> int:
    """`x` rounded up to a multiple of `m`: a padded sequence width."""
    return -(-x // m) * m


class BatchPlan:
    """The global micro-batches of each epoch (lists of row ids), a pure function of (seed, epoch)."""

    def __init__(self, seq_lengths: np.ndarray, rows: np.ndarray, cfg: DataConfig, seed: int, batch_tokens: int = 0):
        if len(rows) == 0:
            raise ValueError("no rows to train on (is data.holdout_fraction too large for this corpus?)")
        self.seq_lengths = seq_lengths  # per global row id, with the special tokens
        self.pool = rows  # the global row ids this plan draws from (the training split)
        self.cfg, self.seed = cfg, seed
        self.batch_tokens = batch_tokens  # padded-token budget per micro-batch; 0: cfg.batch_size sequences
        widest = round_up(int(seq_lengths.max()), cfg.pad_to_multiple)
        if 0 < batch_tokens < widest:
            raise ValueError(
                f"a micro-batch's token budget {batch_tokens} (data.step_tokens / (world x grad_accum), or "
                f"data.batch_tokens) is smaller than one {widest}-token sequence; raise it or lower train.grad_accum"
            )

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a few epochs per process, freed with the plan
    def epoch(self, epoch: int) -> tuple[np.ndarray, ...]:
        cfg, lengths = self.cfg, self.seq_lengths
        rng = np.random.default_rng([self.seed, epoch, 0xB47C])
        order = self.pool[rng.permutation(len(self.pool))]
        if self.batch_tokens > 0:
            window = max(1, cfg.bucket_window * self.batch_tokens // int(lengths.max()))
        else:
            window = cfg.bucket_window * cfg.batch_size
        batches: list[np.ndarray] = []
        for w in range(0, len(order), window):
            rows = order[w : w + window]
            rows = rows[np.argsort(-lengths[rows], kind="stable")]  # longest first: bucket by length
            batches.extend(self._cut(rows))
        perm = rng.permutation(len(batches))  # mix buckets across the epoch
        return tuple(batches[i] for i in perm)

    def _cut(self, rows: np.ndarray) -> list[np.ndarray]:
        cfg = self.cfg
        if self.batch_tokens <= 0:
            return [rows[i : i + cfg.batch_size] for i in range(0, len(rows), cfg.batch_size)]
        out, start = [], 0
        while start < len(rows):  # rows are sorted longest first, so the first row fixes the padded length
            width = round_up(int(self.seq_lengths[rows[start]]), cfg.pad_to_multiple)
            count = self.batch_tokens // width
            out.append(rows[start : start + count])
            start += count
        return out

    def locate(self, j: int) -> tuple[int, int]:
        """Global batch j -> (epoch, index within the epoch)."""
        epoch = 0
        while j >= len(self.epoch(epoch)):
            j -= len(self.epoch(epoch))
            epoch += 1
        return epoch, j

    def rows(self, j: int) -> tuple[int, np.ndarray]:
        epoch, i = self.locate(j)
        return epoch, self.epoch(epoch)[i]
