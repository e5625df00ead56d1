"""A batch of ragged blocks, flattened once: pieces, words and the per-block budget.

Everything downstream is vectorised over this layout, so per-block Python work stays O(1).
Words: a piece begins a word where the caller says so, at the block's first piece, and at and after
every special piece — a special id ([PAD], [UNK], ...) is a word of its own that is never masked.
Words are numbered across the whole batch ("global" word numbers), block after block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from masking.block import Block


@dataclass
class Layout:
    ids: np.ndarray  # int32[N]   all pieces, block after block
    offsets: np.ndarray  # int64[B+1] block b is ids[offsets[b]:offsets[b+1]]
    word_first_piece: np.ndarray  # int64[W+1] flat index of each word's first piece, then N
    word_len: np.ndarray  # int64[W]   pieces per word
    word_block: np.ndarray  # int64[W]
    word_maskable: np.ndarray  # bool[W]    False for a special piece
    block_words: np.ndarray  # int64[B+1] block b's words are [block_words[b], block_words[b+1])
    candidates: np.ndarray  # int64[C]   the maskable words, ascending
    cand_first: (
        np.ndarray
    )  # int64[B]   block b's maskable words are candidates[cand_first[b]:][:n_candidates[b]]
    n_candidates: np.ndarray  # int64[B]
    budget: np.ndarray  # int64[B]   pieces to mask

    @property
    def n_blocks(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_words(self) -> int:
        return len(self.word_len)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def word_end(self) -> np.ndarray:
        return self.block_words[1:]

    def word_of(self, flat_piece: np.ndarray) -> np.ndarray:
        """Global word number of some flat piece positions."""
        return np.searchsorted(self.word_first_piece, flat_piece, side="right") - 1


def build_layout(
    blocks: Sequence[Block],
    is_special: np.ndarray,
    mask_ratio: float,
    every_piece_a_word: bool = False,
) -> Layout:
    """`is_special`: bool[vocab_size] lookup. `every_piece_a_word`: the subword scheme's units. Each
    block's own shape was checked when it was built (`masking.block`); the ids' range is checked here."""
    B = len(blocks)
    input_ids = [b.input_ids for b in blocks]
    lengths = np.fromiter(map(len, input_ids), dtype=np.int64, count=B)
    offsets = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    N = int(offsets[-1])
    ids = np.concatenate(input_ids).astype(np.int32, copy=False) if B else np.zeros(0, np.int32)
    if N and (int(ids.min()) < 0 or int(ids.max()) >= len(is_special)):
        raise ValueError(f"input_ids must lie in [0, {len(is_special)}): got {ids.min()}..{ids.max()}")
    special = is_special[ids]

    if every_piece_a_word:
        starts = np.ones(N, dtype=bool)
    else:
        starts = np.concatenate([b.word_start for b in blocks]).astype(bool) if B else np.zeros(0, bool)
        starts[offsets[:-1][lengths > 0]] = True
        starts |= special
        starts[1:] |= special[:-1]
    first_piece = np.flatnonzero(starts)
    word_first_piece = np.append(first_piece, N)
    block_words = np.searchsorted(first_piece, offsets)  # a non-empty block starts with a word
    word_block = np.repeat(np.arange(B, dtype=np.int64), np.diff(block_words))
    word_maskable = ~special[first_piece]
    candidates = np.flatnonzero(word_maskable)
    n_candidates = np.diff(np.searchsorted(candidates, block_words))
    special_at = np.flatnonzero(special)
    maskable_pieces = lengths - np.bincount(
        np.searchsorted(offsets, special_at, side="right") - 1, minlength=B
    )
    # Round half up, and at least one piece: a short block still trains something.
    budget = np.where(maskable_pieces > 0, np.maximum(1, np.floor(mask_ratio * maskable_pieces + 0.5)), 0)
    return Layout(
        ids=ids,
        offsets=offsets,
        word_first_piece=word_first_piece,
        word_len=np.diff(word_first_piece),
        word_block=word_block,
        word_maskable=word_maskable,
        block_words=block_words,
        candidates=candidates,
        cand_first=np.cumsum(n_candidates) - n_candidates,
        n_candidates=n_candidates,
        budget=budget.astype(np.int64),
    )
