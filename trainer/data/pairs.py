"""NSP pairing for the bi-sequence baselines (2seq+NSP), from the same shards as every other run.

A is a prefix of the block cut at a random word start; B is its true continuation (IS_NEXT) or, half the
time, the start of a block from another document (NOT_NEXT), truncated so [CLS] A [SEP] B [SEP] fits;
all decided by (seed, epoch, row). Annotation spans wholly inside A or B are kept (B's moved with it),
spans across the cut are dropped, so every Table 6 scheme also runs with NSP.
"""

from __future__ import annotations

import numpy as np

from masking import Block, Scheme
from trainer.config import Objective
from trainer.data.collate import PairBlock, num_specials
from trainer.data.shards import ShardSet

IS_NEXT, NOT_NEXT = 0, 1  # HF's next_sentence_label convention


def pair_block(shards: ShardSet, pool: np.ndarray, row: int, *, scheme: Scheme, seed: int, epoch: int,
               max_len: int) -> PairBlock:
    """A + B as one bare block for `row` (keyed by it); B never comes from outside `pool` (the training
    rows: a held-out document must not be borrowed)."""
    rng = np.random.default_rng([seed, epoch, row, 0x5E9])
    ids, word_start = shards.ids(row)
    budget = min(len(ids), max_len - num_specials(Objective.MLM_NSP))
    cuts = np.flatnonzero(word_start[1:budget]) + 1
    a = int(rng.choice(cuts)) if len(cuts) else max(1, budget // 2)
    if rng.random() < 0.5 or len(pool) == 1:
        b, nsp = shards.block(row, scheme, a, budget), IS_NEXT  # B continues A
    else:
        doc, other = shards.doc_id(row), int(pool[rng.integers(len(pool))])
        for _ in range(10):  # a block of another document; give up after a few tries (tiny corpora)
            if shards.doc_id(other) != doc:
                break
            other = int(pool[rng.integers(len(pool))])
        b, nsp = shards.block(other, scheme, 0, max(1, budget - a)), NOT_NEXT
    return _join(shards.block(row, scheme, 0, a), b, nsp)  # spans across the A/B cut are dropped


def _join(a: Block, b: Block, nsp: int) -> PairBlock:
    """A then B as one block keyed by A's row: B's spans moved behind A, B starting a word."""
    n = len(a.input_ids)
    word_start = np.concatenate([a.word_start, b.word_start])
    word_start[n : n + 1] = True
    return PairBlock(
        np.concatenate([a.input_ids, b.input_ids]).astype(np.int32), word_start, a.block_index,
        entity_spans=np.concatenate([a.entity_spans, b.entity_spans + n]),
        entity_labels=a.entity_labels + b.entity_labels,
        noun_phrase_spans=np.concatenate([a.noun_phrase_spans, b.noun_phrase_spans + n]),
        a_len=n, nsp=nsp,
    )
