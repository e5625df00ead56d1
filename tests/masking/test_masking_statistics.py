"""Statistics on real text against the paper's numbers (GUIDE §1), not against our own output."""

from __future__ import annotations

import numpy as np
import pytest

from masking import KEEP, MASK, RANDOM, SampledLengths, span_length_pmf
from masking.sampler import GIVEN_SPAN_ID
from tests.masking.invariants import keyed

# The paper's P(ℓ) (p = 0.2 truncated to 1..10 and renormalised) as printed in GUIDE §1, and its mean.
PAPER_P = np.array([0.2241, 0.1792, 0.1434, 0.1147, 0.0918, 0.0734, 0.0587, 0.0470, 0.0376, 0.0301])
PAPER_MEAN = 3.797


def _mask_epochs(masker, tbs, epochs, **kw):
    out = []
    for e in range(epochs):
        out += masker.mask_batch(keyed(tbs), epoch=e, **kw)
    return out


def test_length_distribution_is_the_papers():
    pmf = span_length_pmf(0.2, 10)
    np.testing.assert_allclose(pmf, PAPER_P, atol=6e-5)
    assert abs((np.arange(1, 11) * pmf).sum() - PAPER_MEAN) < 5e-4
    # min-clipping (Megatron's "SpanBERT masking") would put 13% at 10 words: not this
    assert pmf[-1] < 0.05


def test_sampled_lengths_follow_p(wiki_blocks, make_masker):
    rec = SampledLengths.new()
    _mask_epochs(make_masker("geometric"), wiki_blocks, 20, sampled_lengths=rec)
    ell = rec.all_sampled()
    assert len(ell) > 80_000
    hist = np.bincount(ell, minlength=11)[1:] / len(ell)
    assert len(hist) == 10  # nothing longer than ℓmax
    tv = 0.5 * np.abs(hist - PAPER_P).sum()
    assert tv < 0.01, tv
    exact_mean = (np.arange(1, 11) * span_length_pmf(0.2, 10)).sum()
    assert abs(ell.mean() - exact_mean) < 0.03, ell.mean()
    # realised (before merging) can only be shorter: block ends, specials and the budget cut spans
    realised = rec.all_realised()
    assert (realised <= ell).all() and (realised >= 1).all()


@pytest.mark.parametrize("scheme", ["subword", "whole_word", "geometric"])
def test_masked_fraction_and_replacement(scheme, real_blocks, make_masker):
    out = _mask_epochs(make_masker(scheme), real_blocks, 3)
    pieces = 3 * sum(len(t.input_ids) for t in real_blocks)
    masked = sum(len(b.mlm_positions) for b in out)
    assert abs(masked / pieces - 0.15) < 0.005, masked / pieces
    rep = np.concatenate([b.mlm_replacement for b in out])
    frac = np.bincount(rep, minlength=3) / len(rep)
    assert (
        abs(frac[MASK] - 0.8) < 0.015 and abs(frac[RANDOM] - 0.1) < 0.015 and abs(frac[KEEP] - 0.1) < 0.015
    ), frac


@pytest.mark.parametrize("scheme", ["named_entity", "noun_phrase"])
def test_linguistic_schemes_take_half_from_given_spans(scheme, annotated_blocks, make_masker):
    tbs = annotated_blocks
    out = _mask_epochs(make_masker(scheme), tbs, 40)  # the blocks carry their entity and noun-phrase spans
    masked = sum(len(b.mlm_positions) for b in out)
    from_given = sum(int((b.mlm_span >= GIVEN_SPAN_ID).sum()) for b in out)
    pieces = 40 * sum(len(t.input_ids) for t in tbs)
    assert abs(masked / pieces - 0.15) < 0.005
    assert abs(from_given / masked - 0.5) < 0.05, from_given / masked
    rep = np.concatenate([b.mlm_replacement for b in out])
    assert abs((rep == MASK).mean() - 0.8) < 0.03  # fewer spans here: looser


def test_random_tokens_follow_the_unigram_counts(real_blocks, make_masker, specials):
    counts = np.zeros(28996)
    counts[[1000, 2000, 3000]] = [1, 2, 5]
    counts[specials.mask] = 100  # a special id's count is ignored: never sampled
    out = _mask_epochs(
        make_masker("geometric", unigram_counts=counts, random_prob=0.5, mask_prob=0.0), real_blocks[:100], 2
    )
    drawn = np.concatenate([b.input_ids[b.mlm_positions[b.mlm_replacement == RANDOM]] for b in out])
    assert len(drawn) > 2000
    assert set(np.unique(drawn)) == {1000, 2000, 3000}
    share = np.array([(drawn == t).mean() for t in (1000, 2000, 3000)])
    np.testing.assert_allclose(share, [1 / 8, 2 / 8, 5 / 8], atol=0.03)


def test_default_random_tokens_are_uniform_non_special(real_blocks, make_masker, specials):
    out = _mask_epochs(make_masker("subword", random_prob=1.0, mask_prob=0.0), real_blocks[:100], 2)
    drawn = np.concatenate([b.input_ids[b.mlm_positions] for b in out])
    assert not np.isin(drawn, list(specials.specials)).any()
    # uniform over ~29k ids: the mean id sits near the middle, and few repeats
    assert abs(drawn.mean() / 28996 - 0.5) < 0.02
    assert len(np.unique(drawn)) > 0.6 * len(drawn)


def test_zero_weight_ids_have_empty_intervals_even_at_the_edges():
    """Inverse-CDF draws: u in [cdf[i-1], cdf[i]) gives id i, so u = 0.0 or u exactly on a CDF value never
    lands on an id of weight 0 (here ids 0 and 3, and the special id 5)."""
    from masking.replace import Replacer

    is_special = np.zeros(6, bool)
    is_special[5] = True
    r = Replacer(mask_id=5, is_special=is_special, unigram_counts=np.array([0, 1, 1, 0, 2, 9]), mask_prob=0.8,
                 random_prob=0.1)
    # weights 0, 1, 1, 0, 2, (9 special -> 0): cdf 0, .25, .5, .5, 1, 1
    got = r.sample_tokens(np.array([0.0, 0.1, 0.25, 0.4, 0.5, 0.75, 1 - 2**-53]))
    assert got.tolist() == [1, 1, 2, 2, 4, 4, 4] and got.dtype == np.int32


def test_different_seeds_differ(wiki_blocks, make_masker):
    a = _mask_epochs(make_masker(seed=1), wiki_blocks[:20], 1)
    b = _mask_epochs(make_masker(seed=2), wiki_blocks[:20], 1)
    assert all(not np.array_equal(x.mlm_positions, y.mlm_positions) for x, y in zip(a, b, strict=True))
