"""The vectorised span sampler equals a plain sequential loop, one span after another, per block.

`sequential_spans` / `sequential_words` below are the loop docs/masking.md describes, written in plain
Python over one block at a time. They draw their random numbers from the same counter-based stream
(`masking.rng`, keyed by block, span number and slot) as the sampler does, so the two must agree
exactly — whatever the batch and however many spans the sampler evaluates per round.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np
import pytest

from masking import Block, rng
from masking.layout import build_layout
from masking.sampler import ANCHOR_TRIES, SampledLengths, Selection, pmf_to_cdf, sample_spans, span_length_pmf


def _uniform(skey: np.uint64, counter: int) -> float:
    return float(rng.uniform(np.asarray([skey]), np.asarray([counter]))[0])


def block_words(layout, b: int) -> tuple[list[int], list[bool]]:
    """Block b's words: piece counts and maskability (global word numbers block_words[b]..)."""
    lo, hi = int(layout.block_words[b]), int(layout.block_words[b + 1])
    return layout.word_len[lo:hi].tolist(), layout.word_maskable[lo:hi].tolist()


def sequential_spans(word_len: list[int], maskable: list[bool], budget: int, cdf: list[float],
                     skey: np.uint64) -> tuple[list[int], int]:
    """Geometric spans: per span t, draws t*(ANCHOR_TRIES+1) + 0..ANCHOR_TRIES-1 pick the start among the
    maskable words (the first unmasked one wins; none: the span is void), the last draw gives ℓ."""
    candidates = [w for w, m in enumerate(maskable) if m]
    span = [-1] * len(word_len)
    remaining, free, t = budget, len(candidates), 0
    while remaining > 0 and free > 0:
        u = [_uniform(skey, t * (ANCHOR_TRIES + 1) + k) for k in range(ANCHOR_TRIES + 1)]
        tries = [candidates[int(x * len(candidates))] for x in u[:ANCHOR_TRIES]]
        fresh = [w for w in tries if span[w] < 0]
        ell = bisect_right(cdf, u[ANCHOR_TRIES]) + 1
        if fresh:
            start, spent, new = fresh[0], 0, []
            for w in range(start, min(start + ell, len(word_len))):
                if not maskable[w]:
                    break
                cost = 0 if span[w] >= 0 else word_len[w]
                if spent + cost > remaining:
                    break
                spent += cost
                if span[w] < 0:
                    new.append(w)
            if not new:
                break  # not even the start word fits
            for w in new:
                span[w] = t
            remaining -= spent
            free -= len(new)
        t += 1
    return span, remaining


def sequential_words(word_len: list[int], maskable: list[bool], budget: int,
                     skey: np.uint64) -> tuple[list[int], int]:
    """ℓ = 1: draw i picks a maskable word; a masked one is a redraw; one that does not fit ends the block."""
    candidates = [w for w, m in enumerate(maskable) if m]
    span = [-1] * len(word_len)
    remaining, free, i = budget, len(candidates), 0
    while remaining > 0 and free > 0:
        w = candidates[int(_uniform(skey, i) * len(candidates))]
        if span[w] < 0:
            if word_len[w] > remaining:
                break
            span[w] = i
            remaining -= word_len[w]
            free -= 1
        i += 1
    return span, remaining


@pytest.fixture(scope="module")
def batch(real_blocks, tokenizer, specials):
    special = np.zeros(tokenizer.get_vocab_size(), bool)
    special[list(specials.specials)] = True
    blocks = real_blocks[:120]
    layout = build_layout(blocks, special, 0.15)
    keys = rng.block_keys(5, 1, np.arange(len(blocks)))
    return layout, keys


@pytest.mark.parametrize("p, max_words", [(0.2, 10), (0.05, 30)])
def test_sampler_equals_the_sequential_loop(batch, p, max_words):
    layout, keys = batch
    cdf = pmf_to_cdf(span_length_pmf(p, max_words))
    skeys = rng.stream_keys(keys, rng.SPAN)
    expected = [sequential_spans(*block_words(layout, b), int(layout.budget[b]), cdf.tolist(), skeys[b])
                for b in range(layout.n_blocks)]
    want_span = np.concatenate([s for s, _ in expected])
    assert (want_span >= 0).sum() > 10 * layout.n_blocks  # real work: ~17 spans of ~3.6 words per block
    for per_round in (1, 3, 6, 16):
        sel, rec = Selection.empty(layout), SampledLengths.new()
        sample_spans(layout, sel, cdf, keys, rec, spans_per_round=per_round)
        np.testing.assert_array_equal(sel.masked, want_span >= 0, err_msg=f"{per_round} spans per round")
        np.testing.assert_array_equal(sel.span_id, want_span, err_msg=f"{per_round} spans per round")
        np.testing.assert_array_equal(sel.remaining, [r for _, r in expected])


def test_single_word_sampler_equals_the_sequential_loop(batch):
    layout, keys = batch
    skeys = rng.stream_keys(keys, rng.SPAN)
    expected = [sequential_words(*block_words(layout, b), int(layout.budget[b]), skeys[b])
                for b in range(layout.n_blocks)]
    sel = Selection.empty(layout)
    sample_spans(layout, sel, np.ones(1), keys)
    np.testing.assert_array_equal(sel.span_id, np.concatenate([s for s, _ in expected]))
    np.testing.assert_array_equal(sel.remaining, [r for _, r in expected])


def test_an_empty_length_record_is_an_empty_int_array():
    """`masking.stats` on a scheme that samples no geometric spans reads an empty record."""
    rec = SampledLengths.new()
    for lengths in (rec.all_sampled(), rec.all_realised()):
        assert lengths.shape == (0,) and lengths.dtype == np.int64


def test_short_blocks_alone_equal_the_sequential_loop(real_blocks, tokenizer, specials):
    """A batch of one short block (budget 2-3): its last word is often masked, and few rounds are allowed."""
    special = np.zeros(tokenizer.get_vocab_size(), bool)
    special[list(specials.specials)] = True
    cdf = pmf_to_cdf(span_length_pmf(0.2, 10))
    last_word_masked = 0
    for i, b in enumerate(real_blocks[:60]):
        layout = build_layout([Block(b.input_ids[:16], b.word_start[:16], i)], special, 0.15)
        keys = rng.block_keys(9, 0, np.array([i]))
        for ell_cdf, loop in ((cdf, sequential_spans), (np.ones(1), sequential_words)):
            sel = Selection.empty(layout)
            sample_spans(layout, sel, ell_cdf, keys)
            args = (*block_words(layout, 0), int(layout.budget[0]))
            skey = rng.stream_keys(keys, rng.SPAN)[0]
            span, remaining = loop(*args, ell_cdf.tolist(), skey) if loop is sequential_spans else loop(*args, skey)
            np.testing.assert_array_equal(sel.span_id, span)
            assert sel.remaining[0] == remaining
            last_word_masked += span[-1] >= 0
    assert last_word_masked > 5


def test_nearly_all_masked_tiny_blocks_equal_the_sequential_loop(real_blocks, tokenizer, specials):
    """mask_ratio 0.9 on 6-piece blocks: the last free words decide when a block is done."""
    special = np.zeros(tokenizer.get_vocab_size(), bool)
    special[list(specials.specials)] = True
    cdf = pmf_to_cdf(span_length_pmf(0.2, 10))
    blocks = real_blocks[:80]
    layout = build_layout([Block(b.input_ids[:6], b.word_start[:6], i) for i, b in enumerate(blocks)], special, 0.9)
    keys = rng.block_keys(2, 3, np.arange(len(blocks)))
    skeys = rng.stream_keys(keys, rng.SPAN)
    for ell_cdf in (cdf, np.ones(1)):
        sel = Selection.empty(layout)
        sample_spans(layout, sel, ell_cdf, keys)
        for b in range(len(blocks)):
            args = (*block_words(layout, b), int(layout.budget[b]))
            span, remaining = (sequential_spans(*args, ell_cdf.tolist(), skeys[b]) if len(ell_cdf) > 1
                               else sequential_words(*args, skeys[b]))
            lo, hi = layout.block_words[b], layout.block_words[b + 1]
            np.testing.assert_array_equal(sel.span_id[lo:hi], span)
            assert sel.remaining[b] == remaining



@pytest.mark.parametrize("scheme", ["geometric", "whole_word", "subword"])
def test_a_budget_of_every_word_masks_every_word(make_masker, scheme):
    """Hand-worked: n one-piece words with mask_ratio 0.95 have a budget of round(0.95 n) = n for n <= 10,
    and one-piece words always fit, so the loop runs until every word is masked — however the draws fall
    (anchors landing on masked words, void spans). A block must not stop while budget is left because
    its count of free words went wrong."""
    masker = make_masker(scheme, mask_ratio=0.95, seed=7)
    sizes = [n for n in range(2, 11) for _ in range(40)]
    ids = [np.arange(1000, 1000 + n, dtype=np.int32) for n in sizes]
    blocks = [Block(ids[i], np.ones(n, bool), i) for i, n in enumerate(sizes)]
    out = masker.mask_batch(blocks, epoch=0)
    for n, mb in zip(sizes, out, strict=True):
        assert mb.mlm_positions.tolist() == list(range(n)), (n, mb.mlm_positions)
    alone = [masker.mask_block(blocks[i], epoch=0) for i in range(0, len(sizes), 7)]
    assert all(mb.mlm_positions.tolist() == list(range(len(mb.input_ids))) for mb in alone)


@pytest.mark.parametrize("scheme", ["whole_word", "subword"])
def test_each_block_counts_its_own_free_words(make_masker, scheme):
    """Batches of two blocks, 3 words and 1 word, each with a budget of every word (round(0.95 n) = n):
    the first round often masks only 2 of the 3 words (its 8 draws repeat), while the other block masks
    its one — the first block still has a free word and budget, and must go on to mask it."""
    masker = make_masker(scheme, mask_ratio=0.95, seed=1)
    ids, ws = [np.arange(1000, 1003, dtype=np.int32), np.array([2000], np.int32)], [np.ones(3, bool), np.ones(1, bool)]
    for i in range(100):
        a, b = masker.mask_batch([Block(ids[0], ws[0], 2 * i), Block(ids[1], ws[1], 2 * i + 1)], epoch=0)
        assert a.mlm_positions.tolist() == [0, 1, 2] and b.mlm_positions.tolist() == [0], i

# -- masking.rng: SplitMix64 against a plain-integer re-computation ---------------------------------
# The sampler tests above draw their expected values from `masking.rng` too, so a changed constant or
# shift there moves both sides and no statistic can see it; yet it changes every mask (every shard and
# checkpoint that was reproducible). The reference here is the published algorithm (Steele, Lea & Flood
# 2014) on Python ints mod 2**64, and its first outputs for state 0 are the published ones (splitmix64.c).

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def splitmix64(state: int, n: int) -> list[int]:
    """The generator: add the golden increment, then finalise — n outputs from `state`."""
    out = []
    for _ in range(n):
        state = (state + GOLDEN) & M64
        out.append(mix(state))
    return out


def test_reference_is_the_published_splitmix64():
    assert splitmix64(0, 3) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_mix64_is_the_splitmix64_finaliser():
    x = np.array([0, 1, GOLDEN, 0x0123456789ABCDEF, M64, 1 << 63], dtype=np.uint64)
    assert rng.mix64(x.copy()).tolist() == [mix(int(v)) for v in x]


def test_bits_are_the_stream_of_the_key_from_counter_0():
    """bits(key, c) is the (c+1)-th output of SplitMix64 started at state `key`."""
    for key in (0, 12345, 0xDEADBEEFCAFEF00D):
        got = rng.bits(np.array([key], dtype=np.uint64), np.arange(5))
        assert got.tolist() == splitmix64(key, 5), hex(key)


def test_uniform_takes_the_top_53_bits():
    skeys = np.array([7, 0xFEDCBA9876543210], dtype=np.uint64)
    counters = np.array([[0], [3], [1000]])  # broadcasts against the keys: [3, 2]
    got = rng.uniform(skeys, counters)
    want = [[splitmix64(int(k), c + 1)[c] >> 11 for k in skeys] for c in (0, 3, 1000)]
    assert got.shape == (3, 2) and got.dtype == np.float64
    assert got.tolist() == [[w * 2.0**-53 for w in row] for row in want]
    assert 0.0 <= got.min() and got.max() < 1.0


def test_block_and_stream_keys_chain_seed_epoch_block_and_stream():
    """key = mix(mix(mix(seed + G) ^ epoch) + G) ^ block) + G); a stream's key = mix(key ^ mix(stream))."""
    for seed, epoch, blocks in ((0, 0, [0, 1, 2]), (2**64 - 1, 7, [5, 2**40 + 3]), (123456789, 1, [0])):
        k0 = mix((seed + GOLDEN) & M64)
        k1 = mix(((k0 ^ epoch) + GOLDEN) & M64)
        want = [mix(((k1 ^ b) + GOLDEN) & M64) for b in blocks]
        keys = rng.block_keys(seed, epoch, np.array(blocks))
        assert keys.dtype == np.uint64 and keys.tolist() == want, (seed, epoch)
        for stream in (rng.SPAN, rng.ORDER, rng.ACTION, rng.TOKEN):
            assert rng.stream_keys(keys, stream).tolist() == [mix(k ^ mix(stream)) for k in want]
    assert rng.block_keys(3, 0, 9).tolist() == rng.block_keys(3, 0, np.array([9])).tolist()  # a scalar block


def test_the_four_streams_are_distinct_constants():
    assert sorted({rng.SPAN, rng.ORDER, rng.ACTION, rng.TOKEN}) == [1, 2, 3, 4]
