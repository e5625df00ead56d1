"""What every masked block must satisfy, whatever the scheme: checked by the property tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from masking import KEEP, MASK, RANDOM, Block, MaskedBlock


def keyed(blocks: Sequence[Block], indices: Iterable[int] | None = None) -> list[Block]:
    """The blocks as the masker takes them, keyed by `indices` (default 0, 1, ...: their place in the list)."""
    indices = range(len(blocks)) if indices is None else indices
    return [replace(b, block_index=int(i)) for b, i in zip(blocks, indices, strict=True)]


def words_of(input_ids: np.ndarray, word_start: np.ndarray, special: np.ndarray) -> np.ndarray:
    """Word starts as the masking library defines them: a special piece is a word of its own."""
    starts = np.asarray(word_start, bool).copy()
    if len(starts):
        starts[0] = True
    sp = special[input_ids]
    starts |= sp
    starts[1:] |= sp[:-1]
    return starts


def expected_budget(input_ids: np.ndarray, special: np.ndarray, ratio: float) -> int:
    maskable = int((~special[input_ids]).sum())
    return 0 if maskable == 0 else max(1, int(np.floor(ratio * maskable + 0.5)))

# Every MaskedBlock array (docs/masking.md "Output"): all int32.
MASKED_BLOCK_FIELDS = (
    "input_ids", "mlm_positions", "mlm_labels", "sbo_positions", "sbo_left", "sbo_right", "sbo_rel",
    "sbo_labels", "spans", "mlm_replacement", "mlm_span",
)


def check_block(
    mb: MaskedBlock,
    input_ids: np.ndarray,
    word_start: np.ndarray,
    special: np.ndarray,
    *,
    mask_id: int,
    ratio: float,
    max_sbo_targets: int,
    whole_words: bool,
    edge_spans: bool = True,
) -> None:
    n = len(input_ids)
    pos = mb.mlm_positions
    for name in MASKED_BLOCK_FIELDS:
        assert getattr(mb, name).dtype == np.int32, name
    assert mb.input_ids.shape == (n,)
    # positions: ascending, unique, inside, never a special piece; labels are the originals
    assert np.all(np.diff(pos) > 0) and (len(pos) == 0 or (pos[0] >= 0 and pos[-1] < n))
    assert not special[input_ids[pos]].any()
    np.testing.assert_array_equal(mb.mlm_labels, input_ids[pos])
    masked = np.zeros(n, bool)
    masked[pos] = True
    np.testing.assert_array_equal(mb.input_ids[~masked], input_ids[~masked])

    # budget: never more; whole words stop short by less than one word
    budget = expected_budget(input_ids, special, ratio)
    assert len(pos) <= budget
    starts = words_of(input_ids, word_start, special) if whole_words else np.ones(n, bool)
    word_len = np.diff(np.append(np.flatnonzero(starts), n))
    assert len(pos) > budget - (word_len.max() if n else 1)

    # merged spans: maximal runs of masked pieces, on word boundaries
    runs = mb.spans
    assert runs.shape[1:] == (2,)
    covered = np.zeros(n, bool)
    for s, e in runs:
        assert 0 <= s < e <= n and not covered[s:e].any()
        covered[s:e] = True
        assert s == 0 or not masked[s - 1]
        assert e == n or not masked[e]
        if whole_words:
            assert starts[s] and (e == n or starts[e])
    np.testing.assert_array_equal(covered, masked)

    # 80/10/10 per sampled span
    rep = mb.mlm_replacement
    assert np.isin(rep, (MASK, RANDOM, KEEP)).all()
    for sid in np.unique(mb.mlm_span):
        assert len(np.unique(rep[mb.mlm_span == sid])) == 1
    assert (mb.input_ids[pos[rep == MASK]] == mask_id).all()
    np.testing.assert_array_equal(mb.input_ids[pos[rep == KEEP]], input_ids[pos[rep == KEEP]])
    assert not special[mb.input_ids[pos[rep == RANDOM]]].any()

    # SBO: subset of the MLM positions; boundaries unmasked and bracketing exactly the merged span
    sp = mb.sbo_positions
    assert np.isin(sp, pos).all() and np.all(np.diff(sp) > 0)
    np.testing.assert_array_equal(mb.sbo_labels, input_ids[sp])
    left, right, rel = mb.sbo_left, mb.sbo_right, mb.sbo_rel
    assert np.all((left >= -1) & (left < sp) & (sp < right) & (right <= n))
    for lo, hi in zip(left, right, strict=True):
        assert lo == -1 or not masked[lo]
        assert hi == n or not masked[hi]
        assert masked[lo + 1 : hi].all()
    np.testing.assert_array_equal(rel, sp - left)
    assert np.all((rel >= 1) & (rel <= max_sbo_targets))
    # every masked piece within the cap of its span has a target (edge spans only if enabled)
    for s, e in runs:
        k = min(e - s, max_sbo_targets) if edge_spans or (s > 0 and e < n) else 0
        np.testing.assert_array_equal(sp[(sp >= s) & (sp < e)], np.arange(s, s + k))
