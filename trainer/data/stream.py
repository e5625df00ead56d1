"""The stream: this rank's share of the endless sequence of global micro-batches, masked and collated in
the DataLoader workers.

The stream is epoch 0's batches, then epoch 1's, ... (trainer/data/plan.py). Global batch j goes to rank
j % world; within a rank, local batches go round-robin to the DataLoader workers, which is exactly the order
the DataLoader hands them back in. So:

- every row appears exactly once per epoch across all ranks and workers (nothing dropped at the epoch
  end: ranks simply cross into the next epoch at slightly different micro-batches);
- the data position is one integer, the number of global batches consumed; it does not depend on the
  world size or the number of workers, and resuming at it is exact;
- masks are a pure function of (seed, epoch, global row id) (masking/), so no RNG state lives in the
  workers.

With sequence-length phases (data.phases) the stream is phase 0's batches up to the data position where
phase 1 starts (its first step x world x grad_accum), then phase 1's, ...; each phase has its own plan (epochs
counted within the phase) over whole blocks or, for a short phase, their sub-blocks (trainer/data/phases.py).
The position still fixes everything, so a resume on either side of a switch is exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from contract.tokenizer import Vocabulary
from masking import Block, Masker, MaskingConfig
from trainer.config import DataConfig, Objective, Phase
from trainer.data.collate import Batch, collate_blocks, num_specials
from trainer.data.pairs import pair_block
from trainer.data.phases import SubBlocks
from trainer.data.plan import BatchPlan
from trainer.data.shards import ShardSet, split_rows


@dataclass(frozen=True)
class PhaseData:
    """One phase of the stream: from global micro-batch `start` on, batches of `plan`, whose row ids are
    global block rows (`sub_blocks` None) or ids into `sub_blocks`."""

    start: int
    max_len: int
    plan: BatchPlan
    sub_blocks: SubBlocks | None


class BlockStream(IterableDataset):
    """This rank's share of the global batch stream, starting at global batch `start` (a multiple of world):
    single blocks, or A + B pairs for objective mlm+nsp, with the targets of `objective`'s heads.

    `masking` is the run's effective MaskingConfig, built once by the caller (`Config.masking`; evaluation's
    with its fixed seed); its seed is the stream's one seed (shuffling, pairing, masks: train.seed).
    `cfg` gives the batching and the held-out split; its partial `cfg.masking` is never read here.
    `phases` (Config.phase_schedule()): sequence-length phases; default one phase of whole blocks at max_len."""

    def __init__(
        self, data_dir: str | Path, cfg: DataConfig, masking: MaskingConfig, *, max_len: int,
        rank: int = 0, world: int = 1, start: int = 0, objective: Objective = Objective.MLM_SBO, grad_accum: int = 1,
        phases: tuple[Phase, ...] = (),
    ):
        super().__init__()
        if start % world:
            raise ValueError(f"data position {start} is not a multiple of the world size {world}")
        self.data_dir, self.cfg, self.masking, self.seed = Path(data_dir), cfg, masking, masking.seed
        self.rank, self.world, self.start = rank, world, start
        self.max_len = max_len
        self.objective = Objective(objective)
        self.shards = ShardSet(data_dir, cfg.vocab_sha256)
        column = masking.scheme.span_column
        if column and (why := self.shards.manifest.spans_unavailable(column)):  # never a silent fall-back to random words
            raise ValueError(f"{data_dir}: masking scheme {masking.scheme} reads {column}, but {why}; "
                             "choose another scheme or re-run the pipeline with a spaCy model that gives them")
        self.vocab = self.shards.manifest.vocabulary()
        specials = num_specials(self.objective)
        if not self.objective.nsp and int(self.shards.lengths.max()) + specials > max_len:
            raise ValueError(
                f"{data_dir}: blocks up to {int(self.shards.lengths.max())} pieces + [CLS]/[SEP] exceed "
                f"model.max_position {max_len}; re-cut the shards with a smaller block size"
            )
        seq_lengths = np.minimum(self.shards.lengths + specials, max_len)
        self.train_rows, self.heldout_rows = split_rows(self.shards, cfg.holdout_fraction)
        # world x grad_accum fixes the micro-batch budget of data.step_tokens (not the plan's rank split).
        budget = cfg.micro_batch_tokens(world, grad_accum)
        self.phases: list[PhaseData] = []
        for p, phase in enumerate(phases or (Phase(0, max_len),)):
            first = phase.start_step * world * grad_accum
            if phase.max_len >= max_len:  # whole blocks
                self.phases.append(PhaseData(first, max_len, BatchPlan(seq_lengths, self.train_rows, cfg, self.seed, budget), None))
                continue
            subs = SubBlocks.of(self.shards, self.train_rows, phase.max_len, p)
            # The same token budget per step: a token budget cuts more rows; a sequence count scales up.
            short = replace(cfg, batch_size=max(1, cfg.batch_size * max_len // phase.max_len))
            plan = BatchPlan(subs.lengths + specials, np.arange(len(subs)), short, self.seed, budget)
            self.phases.append(PhaseData(first, phase.max_len, plan, subs))
        self.plan = self.phases[-1].plan  # the whole-block plan (evaluation, tests)
        self._masker: Masker | None = None  # built lazily in each worker

    @property
    def masker(self) -> Masker:
        if self._masker is None:  # built lazily, in the worker that uses it
            self._masker = build_masker(self.masking, self.vocab, self.shards.manifest.unigram_counts())
        return self._masker

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        local = worker
        while True:
            j = self.start + self.rank + self.world * local
            phase = self.phase_at(j)
            epoch, rows = phase.plan.rows(j - phase.start)
            yield self.collate(epoch, rows, phase)
            local += workers

    def phase_at(self, j: int) -> PhaseData:
        """The phase global micro-batch j belongs to."""
        return next(p for p in reversed(self.phases) if p.start <= j)

    # -- one batch -------------------------------------------------------------------------------
    def collate(self, epoch: int, rows: np.ndarray, phase: PhaseData | None = None) -> Batch:
        """Batch of plan rows `rows` (whole blocks by default); `row_ids` holds their mask keys: the global
        row ids of whole blocks, the sub-block keys of a short phase."""
        subs = None if phase is None else phase.sub_blocks
        if subs is None:
            blocks, keys, max_len = [self.bare_block(epoch, int(r)) for r in rows], rows, self.max_len
        else:
            blocks, keys, max_len = [self.sub_block(subs, int(i)) for i in rows], subs.keys(rows), phase.max_len
        batch = collate_blocks(blocks, self.masker, self.vocab, self.cfg, max_len, epoch, self.objective)
        batch["row_ids"] = torch.from_numpy(keys.astype(np.int64))
        batch["epoch"] = torch.full((len(rows),), epoch, dtype=torch.int64)
        return batch

    def bare_block(self, epoch: int, row: int) -> Block:
        """Row `row` as the masker sees it: the block, or A + B (a PairBlock) for the NSP objective (pairs.py)."""
        if self.objective.nsp:
            return pair_block(self.shards, self.train_rows, row, scheme=self.masking.scheme, seed=self.seed, epoch=epoch,
                              max_len=self.max_len)
        return self.shards.block(row, self.masking.scheme)

    def sub_block(self, subs: SubBlocks, i: int) -> Block:
        """Sub-block i of a short phase, keyed by its sub-block key: its pieces, a word start at its first piece
        (trainer/data/phases.py)."""
        block = self.shards.block(int(subs.row[i]), self.masking.scheme, int(subs.lo[i]), int(subs.hi[i]))
        word_start = block.word_start.copy()
        word_start[0] = True  # already so, unless a word longer than the phase was cut inside
        return replace(block, word_start=word_start, block_index=int(subs.keys(np.array([i]))[0]))


def build_masker(masking: MaskingConfig, vocab: Vocabulary, unigram_counts: np.ndarray | None) -> Masker:
    return Masker(masking, vocab_size=vocab.size, mask_id=vocab.mask, special_ids=vocab.specials, unigram_counts=unigram_counts)


def build_loader(stream: BlockStream, num_workers: int, pin_memory: bool) -> DataLoader:
    # batch_size=None: the stream yields whole batches. The generator keeps DataLoader's worker seeding
    # off the global torch RNG, so building a loader never shifts the dropout RNG (exact resume).
    return DataLoader(
        stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
        generator=torch.Generator().manual_seed(stream.seed), worker_init_fn=_own_process_group if num_workers else None,
    )


def _own_process_group(_worker_id: int) -> None:
    # Schedulers (Slurm, Kubernetes, `kill -- -PGID`) SIGTERM the whole process group. A worker killed
    # by that makes the DataLoader raise in the main process before it can save; in their own group the
    # workers live on until the main process shuts them down (or exits: they watch their parent).
    os.setpgrp()
