"""NSP pairing for the bi-sequence baselines (2seq+NSP), from the same shards as every other run.

A is a prefix of the block cut at a random word start; B is its true continuation (IS_NEXT) or, half the
time, the start of a block from another document (NOT_NEXT), truncated so [CLS] A [SEP] B [SEP] fits;
all decided by (seed, epoch, row). Annotation spans wholly inside A or B are kept (B's moved with it),
spans across the cut are dropped, so every Table 6 scheme also runs with NSP.
"""

from __future__ import annotations

import numpy as np

from masking import Scheme
from trainer.config import Objective
from trainer.data.collate import BareBlock, num_specials
from trainer.data.shards import ShardSet

IS_NEXT, NOT_NEXT = 0, 1  # HF's next_sentence_label convention


def pair_block(shards: ShardSet, pool: np.ndarray, row: int, *, scheme: Scheme, seed: int, epoch: int,
               max_len: int) -> BareBlock:
    """A + B as one bare block (`a_len`, `nsp` set) for `row`; B never comes from outside `pool` (the
    training rows: a held-out document must not be borrowed)."""
    rng = np.random.default_rng([seed, epoch, row, 0x5E9])
    ids, word_start = shards.ids(row)
    budget = min(len(ids), max_len - num_specials(Objective.MLM_NSP))
    cuts = np.flatnonzero(word_start[1:budget]) + 1
    a = int(rng.choice(cuts)) if len(cuts) else max(1, budget // 2)
    if rng.random() < 0.5 or len(pool) == 1:
        b_ids, b_ws, nsp = ids[a:budget], word_start[a:budget], IS_NEXT
        b_spans = shards.scheme_spans(row, scheme, a, budget)  # B continues A: block coordinates already match
    else:
        doc, other = shards.doc_id(row), int(pool[rng.integers(len(pool))])
        for _ in range(10):  # a block of another document; give up after a few tries (tiny corpora)
            if shards.doc_id(other) != doc:
                break
            other = int(pool[rng.integers(len(pool))])
        o_ids, o_ws = shards.ids(other)
        take = max(1, budget - a)
        b_ids, b_ws, nsp = o_ids[:take], o_ws[:take], NOT_NEXT
        b_spans = shards.scheme_spans(other, scheme, 0, take, shift=a)
    b_ws = b_ws.copy()
    b_ws[:1] = True  # B starts a word
    a_spans = shards.scheme_spans(row, scheme, 0, a)  # spans across the A/B cut are dropped
    return BareBlock(
        np.concatenate([ids[:a], b_ids]).astype(np.int32), np.concatenate([word_start[:a], b_ws]),
        a_spans.then(b_spans), a_len=a, nsp=nsp,
    )
