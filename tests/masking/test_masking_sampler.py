"""The span sampler's batching tricks never change what the plain sequential loop gives."""

from __future__ import annotations

import numpy as np
import pytest

from masking import rng
from masking.layout import build_layout
from masking.sampler import SampledLengths, Selection, pmf_to_cdf, sample_spans, span_length_pmf


@pytest.mark.parametrize("p, max_words", [(0.2, 10), (0.05, 30)])
def test_several_spans_per_round_equal_one_span_per_round(real_blocks, tokenizer, specials, p, max_words):
    special = np.zeros(tokenizer.get_vocab_size(), bool)
    special[list(specials.all)] = True
    blocks = real_blocks[:200]
    layout = build_layout([b.input_ids for b in blocks], [b.word_start for b in blocks], special, 0.15)
    keys = rng.block_keys(5, 1, np.arange(len(blocks)))
    cdf = pmf_to_cdf(span_length_pmf(p, max_words))
    results = []
    for per_round in (1, 3, 6, 16):
        sel, rec = Selection.empty(layout), SampledLengths.new()
        sample_spans(layout, sel, cdf, keys, rec, spans_per_round=per_round)
        results.append((sel, np.sort(rec.all_sampled())))
    one, _ = results[0]
    assert one.masked.any()
    for sel, lengths in results[1:]:
        np.testing.assert_array_equal(sel.masked, one.masked)
        np.testing.assert_array_equal(sel.span_id, one.span_id)
        np.testing.assert_array_equal(sel.remaining, one.remaining)
        np.testing.assert_array_equal(lengths, results[0][1])
