"""Sequence-length phases (data.phases): the same shards serve a short phase by cutting every block into
sub-blocks at word boundaries.

How a block is cut for sequences of `max_len` (capacity c = max_len - 2 pieces, [CLS] and [SEP] aside):
greedily from the left, each sub-block is the longest run of whole words that fits in c pieces; the next
starts at the following word. So the sub-blocks re-join to the block and no piece is dropped. A single
word longer than c pieces (rare: a long number or URL) is the one case cut inside a word; its tail then
starts a sub-block and counts as a word start there (the masker sees whole words only). Annotation spans
(named_entity / noun_phrase schemes) that straddle a cut are not offered to the masker.

Mask keys: a sub-block's masks are keyed by (seed, epoch, sub-block key), the key packing (phase, row, the
sub-block's ordinal within its row), so they are a pure function of (seed, epoch, block, phase) and never
collide with whole blocks' keys (their row ids, unchanged by phases).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.data.shards import ShardSet

ROW_BITS, SUB_BITS = 38, 12  # key = (phase + 1) << 50 | row << 12 | ordinal: fits int64 for 2^38 rows


def cut_at_words(word_start: np.ndarray, capacity: int) -> np.ndarray:
    """Cut points [0, ..., n] of one block of len(word_start) pieces into runs of at most `capacity` pieces,
    each ending where a word ends (greedy: each run as long as it can be); a word longer than `capacity`
    is cut inside."""
    n = len(word_start)
    if n == 0:
        return np.zeros(1, dtype=np.int64)  # an empty block has no sub-blocks
    starts = np.flatnonzero(word_start)
    cuts, pos = [0], 0
    while n - pos > capacity:
        i = int(np.searchsorted(starts, pos + capacity, side="right")) - 1  # the last word start <= pos + c
        b = int(starts[i]) if i >= 0 else pos
        if b <= pos:  # one word longer than the capacity
            b = pos + capacity
        cuts.append(b)
        pos = b
    cuts.append(n)
    return np.asarray(cuts, dtype=np.int64)


@dataclass(frozen=True)
class SubBlocks:
    """The sub-blocks of one short phase: sub-block i is pieces [lo[i], hi[i]) of block row[i], the
    ordinal[i]-th of that block."""

    phase: int
    row: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    ordinal: np.ndarray

    @classmethod
    def of(cls, shards: ShardSet, rows: np.ndarray, max_len: int, phase: int) -> SubBlocks:
        """Cut each of `rows` (global row ids) for sequences of `max_len`."""
        capacity = max_len - 2
        parts: list[tuple[int, np.ndarray]] = []
        for r in rows:
            parts.append((int(r), cut_at_words(shards.ids(int(r))[1], capacity)))
        counts = np.array([len(c) - 1 for _, c in parts], dtype=np.int64)
        if len(parts) and (int(max(r for r, _ in parts)) >= 1 << ROW_BITS or int(counts.max()) > 1 << SUB_BITS):
            raise ValueError(f"data.phases: {len(shards)} blocks or {int(counts.max())} sub-blocks per block is too many to key")
        row = np.repeat(np.array([r for r, _ in parts], dtype=np.int64), counts)
        lo = np.concatenate([c[:-1] for _, c in parts]) if parts else np.zeros(0, np.int64)
        hi = np.concatenate([c[1:] for _, c in parts]) if parts else np.zeros(0, np.int64)
        ordinal = np.concatenate([np.arange(k) for k in counts]) if parts else np.zeros(0, np.int64)
        return cls(phase, row, lo, hi, ordinal.astype(np.int64))

    def __len__(self) -> int:
        return len(self.row)

    @property
    def lengths(self) -> np.ndarray:
        return self.hi - self.lo

    def keys(self, ids: np.ndarray) -> np.ndarray:
        """The mask keys of sub-blocks `ids`."""
        return ((self.phase + 1) << (ROW_BITS + SUB_BITS)) | (self.row[ids] << SUB_BITS) | self.ordinal[ids]
