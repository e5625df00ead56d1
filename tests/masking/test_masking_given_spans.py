"""Given (entity / noun-phrase) spans through the public API, hand-worked on synthetic blocks: no spaCy.

The spaCy-annotated tests (test_masking_statistics / _properties / _realised) check the share statistically
on real text; here every number is worked out by hand from docs/masking.md, so a span that is dropped,
not widened to whole words, kept although numeric, or handed to the wrong block shows.

Block A: 30 pieces, every piece a word except piece 11 (a "##" continuation of piece 10). Its budget is
round(0.15 · 30) = 5 pieces; the linguistic share is round(0.5 · 5) = 3. Its spans: [11, 13) PERSON —
widened to the whole word at 10, so pieces 10, 11, 12 (3 pieces: 2 · 0 + 3 <= 2 · 3, taken) — and
[20, 22) DATE (numeric: never a given span). The rest of the budget, 2 pieces, goes to random single words.
"""

from __future__ import annotations

import numpy as np
import pytest

from masking.sampler import GIVEN_SPAN_ID

IDS_A = np.arange(1000, 1030, dtype=np.int32)
WS_A = np.ones(30, bool)
WS_A[11] = False
SPANS_A, LABELS_A = np.array([[11, 13], [20, 22]]), ["PERSON", "DATE"]
# Block B: 20 one-piece words, budget round(3.0) = 3, share round(2.0) = 2: [0, 2) ORG is taken whole
# (2 <= 2); [1, 3) GPE overlaps it and starts later, so it is dropped before the shuffle.
IDS_B = np.arange(2000, 2020, dtype=np.int32)
WS_B = np.ones(20, bool)
SPANS_B, LABELS_B = np.array([[1, 3], [0, 2]]), ["GPE", "ORG"]


def given_positions(mb) -> dict[int, int]:
    """position -> span id, for the pieces masked by a given span."""
    return {int(p): int(s) for p, s in zip(mb.mlm_positions, mb.mlm_span, strict=True) if s >= GIVEN_SPAN_ID}


def check_a(mb) -> None:
    assert given_positions(mb) == {10: GIVEN_SPAN_ID + 10, 11: GIVEN_SPAN_ID + 10, 12: GIVEN_SPAN_ID + 10}
    assert len(mb.mlm_positions) == 5  # the whole budget: 3 given + 2 random words
    assert (mb.mlm_labels == IDS_A[mb.mlm_positions]).all()


def check_b(mb) -> None:
    assert given_positions(mb) == {0: GIVEN_SPAN_ID + 0, 1: GIVEN_SPAN_ID + 0}
    assert len(mb.mlm_positions) == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entity_span_is_widened_to_whole_words_and_numeric_ones_are_skipped(make_masker, seed):
    masker = make_masker("named_entity", seed=seed)
    mb = masker.mask_block(IDS_A, WS_A, epoch=0, block_index=4, entity_spans=SPANS_A, entity_labels=LABELS_A)
    check_a(mb)
    # With only the numeric mention, nothing is given: the budget goes to random words alone.
    only_date = masker.mask_block(IDS_A, WS_A, epoch=0, block_index=4, entity_spans=SPANS_A[1:], entity_labels=["DATE"])
    assert given_positions(only_date) == {} and len(only_date.mlm_positions) == 5
    none = masker.mask_block(IDS_A, WS_A, epoch=0, block_index=4)
    assert given_positions(none) == {} and len(none.mlm_positions) == 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noun_phrase_spans_need_no_labels(make_masker, seed):
    masker = make_masker("noun_phrase", seed=seed)
    # Entity spans are ignored by the noun-phrase scheme, and noun phrases carry no labels.
    mb = masker.mask_block(IDS_A, WS_A, epoch=0, block_index=4, noun_phrase_spans=SPANS_A[:1],
                           entity_spans=SPANS_A[1:], entity_labels=["PERSON"])
    check_a(mb)
    b = masker.mask_block(IDS_B, WS_B, epoch=0, block_index=9, noun_phrase_spans=SPANS_B)
    check_b(b)


@pytest.mark.parametrize("scheme", ["named_entity", "noun_phrase"])
def test_batch_hands_each_block_its_own_spans(make_masker, scheme):
    """mask_batch / mask_flat over [A, nothing, B] equal the three blocks masked one at a time."""
    masker = make_masker(scheme, seed=5)
    ne = scheme == "named_entity"
    spans = [SPANS_A, None, SPANS_B]
    kw = {"entity_spans": spans, "entity_labels": [LABELS_A, None, LABELS_B]} if ne else {"noun_phrase_spans": spans}
    ids, ws = [IDS_A, IDS_A, IDS_B], [WS_A, WS_A, WS_B]
    batch = masker.mask_batch(ids, ws, epoch=1, block_indices=[4, 6, 9], **kw)
    check_a(batch[0])
    assert given_positions(batch[1]) == {} and len(batch[1].mlm_positions) == 5
    check_b(batch[2])
    for b, (block_index, mb) in enumerate(zip([4, 6, 9], batch, strict=True)):
        one = {k: v[b] for k, v in kw.items()}
        alone = masker.mask_block(ids[b], ws[b], epoch=1, block_index=block_index, **one)
        assert alone.mlm_positions.tolist() == mb.mlm_positions.tolist()
        assert alone.mlm_span.tolist() == mb.mlm_span.tolist()
        assert alone.input_ids.tolist() == mb.input_ids.tolist()
    flat = masker.mask_flat(ids, ws, epoch=1, block_indices=[4, 6, 9], **kw)
    assert flat.mlm_positions.tolist() == np.concatenate([mb.mlm_positions for mb in batch]).tolist()


def test_spans_in_list_form_and_empty_span_arrays(make_masker):
    """Spans as plain lists are accepted; an empty array is no spans (not an error)."""
    masker = make_masker("named_entity", seed=3)
    mb = masker.mask_block(IDS_A, WS_A, epoch=0, block_index=4, entity_spans=[[11, 13]], entity_labels=["PERSON"])
    check_a(mb)
    empty = masker.mask_block(IDS_A, WS_A, epoch=0, block_index=4, entity_spans=np.zeros((0, 2), np.int64),
                              entity_labels=[])
    assert given_positions(empty) == {} and len(empty.mlm_positions) == 5
    with pytest.raises(ValueError, match="1 blocks but spans for 2"):
        masker.mask_flat([IDS_A], [WS_A], epoch=0, block_indices=[0], entity_spans=[SPANS_A, SPANS_A],
                         entity_labels=[LABELS_A, LABELS_A])
