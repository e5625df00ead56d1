"""Given spans (spaCy entity mentions or noun chunks): the linguistic share of the budget.

Per block: widen each span to whole words; drop spans over special pieces and spans overlapping an
earlier one (by start); shuffle; take spans in that order while the running total stays nearest to
`share` of the budget — a span is taken while the running total before it plus half of it is within
the target, i.e. the last one is rounded to the nearer side — never past the whole budget. The
random whole words that fill the rest come from the span sampler.
"""

from __future__ import annotations

import numpy as np

from masking import rng
from masking.layout import Layout
from masking.sampler import GIVEN_SPAN_ID, Selection


def take_given_spans(
    layout: Layout,
    sel: Selection,
    block: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    share: float,
    keys: np.ndarray,
) -> None:
    """`block`, `start`, `end`: flat int arrays, piece offsets [start, end) within each block (non-empty and
    inside it: `masking.block.Block` checked them when it was built)."""
    base = layout.offsets[block]
    g0 = layout.word_of(base + start)
    g1 = layout.word_of(base + end - 1) + 1
    specials_before = np.concatenate([[0], np.cumsum(~layout.word_maskable)])
    ok = specials_before[g1] == specials_before[g0]
    g0, g1 = g0[ok], g1[ok]
    order = np.lexsort((-g1, g0))  # global word numbers already order blocks
    g0, g1 = g0[order], g1[order]
    reach = np.maximum.accumulate(g1)
    first = np.ones(len(g0), bool)
    first[1:] = g0[1:] >= reach[:-1]
    g0, g1 = g0[first], g1[first]
    if not len(g0):
        return

    b = layout.word_block[g0]
    local0 = g0 - layout.block_words[b]  # block-local word number: batch-free
    key = rng.uniform(rng.stream_keys(keys, rng.ORDER)[b], local0)  # counter: the span's first word
    shuffle = np.lexsort((key, b))
    g0, g1, b, local0 = g0[shuffle], g1[shuffle], b[shuffle], local0[shuffle]
    cost = layout.word_first_piece[g1] - layout.word_first_piece[g0]
    total = np.cumsum(cost)
    block_first = np.searchsorted(b, np.arange(layout.n_blocks))
    before = total - cost - np.concatenate([[0], total])[block_first[b]]
    target = np.floor(share * sel.remaining + 0.5).astype(np.int64)[b]
    fits = (2 * before + cost <= 2 * target) & (before + cost <= sel.remaining[b])
    misses = np.cumsum(~fits)
    misses_before_block = np.concatenate([[0], misses])[block_first[b]]
    take = misses - misses_before_block == 0  # a prefix of each block's shuffled list

    n_words = (g1 - g0)[take]
    words = np.repeat(g0[take] - np.cumsum(n_words) + n_words, n_words) + np.arange(n_words.sum())
    sel.masked[words] = True
    sel.span_id[words] = np.repeat(GIVEN_SPAN_ID + local0[take], n_words)
    sel.remaining -= np.bincount(b[take], weights=cost[take], minlength=layout.n_blocks).astype(np.int64)
