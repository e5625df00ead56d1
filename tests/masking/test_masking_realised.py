"""Realised masks against an independent plain-Python simulation of the paper's loop (§3.1).

Everything here is measured on what the masker *produced* — masked positions, the block's word
starts, the output ids — never on the sampler's own record of the lengths it drew. The expected
values come from `simulate_block`, a sequential loop written from the paper and docs/masking.md
("The algorithm, exactly"), run on the same real blocks: draw ℓ from Geo(0.2) truncated to 1..10,
a start uniform over the unmasked maskable words, mask ℓ whole words (stop at the block end, a
special piece, or the 15% budget), until the budget is spent; touching spans merge.

Tolerances are k standard errors of the two sample means, estimated from the samples themselves.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import pytest

from masking import KEEP, MASK, RANDOM
from masking.sampler import GIVEN_SPAN_ID
from tests.masking.invariants import keyed, words_of

PAPER_P = [0.2 * 0.8 ** (k - 1) for k in range(1, 11)]
PAPER_P = [p / sum(PAPER_P) for p in PAPER_P]  # truncated to 1..10 and renormalised (GUIDE §1)
EPOCHS = 3
K_SE = 4.0  # |impl - sim| must lie within this many standard errors


@dataclass
class Realised:
    """Span statistics of a set of masked blocks, from positions and word starts alone."""

    masked: int  # masked pieces
    pieces: int
    spans_per_block: list[int]  # merged spans (maximal runs of masked pieces) per block
    merged_words: list[int]  # words per merged span
    merged_pieces: list[int]  # pieces per merged span
    sampled_words: list[int]  # new words per sampled span (the unit of the 80/10/10 decision)


# -- the independent simulation -------------------------------------------------------------------


def simulate_block(word_len: list[int], maskable: list[bool], pmf: list[float], rnd: random.Random,
                   ratio: float = 0.15) -> tuple[list[bool], list[int]]:
    """One block's masked words and the new words of each sampled span, by the plain sequential loop."""
    n_words = len(word_len)
    maskable_pieces = sum(n for n, m in zip(word_len, maskable, strict=True) if m)
    masked = [False] * n_words
    if maskable_pieces == 0:
        return masked, []
    budget = max(1, math.floor(ratio * maskable_pieces + 0.5))
    candidates = [w for w in range(n_words) if maskable[w]]
    lengths = list(range(1, len(pmf) + 1))
    spent, free, new_per_span = 0, len(candidates), []
    while spent < budget and free > 0:
        ell = rnd.choices(lengths, pmf)[0]
        start = rnd.choice(candidates)
        while masked[start]:  # the start is uniform over the words not yet masked
            start = rnd.choice(candidates)
        new: list[int] = []
        cost = 0
        for w in range(start, min(start + ell, n_words)):
            if not maskable[w]:
                break  # a special piece ends the span
            c = 0 if masked[w] else word_len[w]  # overlapping an earlier span costs nothing
            if spent + cost + c > budget:
                break  # whole words only, never past the budget
            cost += c
            if not masked[w]:
                new.append(w)
        if not new:
            break  # not even the start word fits: the budget is spent
        for w in new:
            masked[w] = True
        spent += cost
        free -= len(new)
        new_per_span.append(len(new))
    return masked, new_per_span


def runs(flags: list[bool] | np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of True."""
    out, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i))
            start = None
    return out


def block_units(input_ids: np.ndarray, word_start: np.ndarray, special: np.ndarray,
                subword: bool) -> tuple[list[int], list[bool]]:
    """Lengths (pieces) and maskability of the block's units: words, or pieces for subword masking."""
    starts = np.ones(len(input_ids), bool) if subword else words_of(input_ids, word_start, special)
    first = np.flatnonzero(starts)
    lengths = np.diff(np.append(first, len(input_ids)))
    return lengths.tolist(), (~special[input_ids[first]]).tolist()


def simulate(blocks, special: np.ndarray, pmf: list[float], epochs: int, seed: int,
             subword: bool = False) -> Realised:
    rnd = random.Random(seed)
    r = Realised(0, 0, [], [], [], [])
    for _ in range(epochs):
        for t in blocks:
            word_len, maskable = block_units(t.input_ids, t.word_start, special, subword)
            masked, new = simulate_block(word_len, maskable, pmf, rnd)
            merged = runs(masked)
            r.pieces += len(t.input_ids)
            r.masked += sum(n for n, m in zip(word_len, masked, strict=True) if m)
            r.spans_per_block.append(len(merged))
            r.merged_words += [e - s for s, e in merged]
            r.merged_pieces += [sum(word_len[s:e]) for s, e in merged]
            r.sampled_words += new
    return r


# -- what the masker produced ---------------------------------------------------------------------


def realised(blocks, out, special: np.ndarray, subword: bool = False) -> Realised:
    """The same statistics from the masker's output: positions, and words from the block's word starts."""
    r = Realised(0, 0, [], [], [], [])
    for t, mb in zip(blocks, out, strict=True):
        n = len(t.input_ids)
        starts = np.ones(n, bool) if subword else words_of(t.input_ids, t.word_start, special)
        flags = np.zeros(n, bool)
        flags[mb.mlm_positions] = True
        merged = runs(flags)
        r.pieces += n
        r.masked += int(flags.sum())
        r.spans_per_block.append(len(merged))
        r.merged_words += [int(starts[s:e].sum()) for s, e in merged]
        r.merged_pieces += [e - s for s, e in merged]
        for sid in np.unique(mb.mlm_span):
            r.sampled_words.append(int(starts[mb.mlm_positions[mb.mlm_span == sid]].sum()))
    return r


def mask_epochs(masker, blocks, epochs: int, **kw):
    out = []
    for e in range(epochs):
        out += masker.mask_batch(keyed(blocks), epoch=e, **kw)
    return out


def assert_same_mean(ours: list[int], sim: list[int], what: str, k: float = K_SE) -> None:
    a, b = np.asarray(ours, float), np.asarray(sim, float)
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < k * se, f"{what}: masker {a.mean():.3f} vs simulation {b.mean():.3f} (se {se:.3f})"


def total_variation(ours: list[int], sim: list[int]) -> float:
    top = max(max(ours), max(sim)) + 1
    p = np.bincount(ours, minlength=top) / len(ours)
    q = np.bincount(sim, minlength=top) / len(sim)
    return 0.5 * float(np.abs(p - q).sum())


@pytest.fixture(scope="module")
def special(tokenizer, specials) -> np.ndarray:
    s = np.zeros(tokenizer.get_vocab_size(), bool)
    s[list(specials.specials)] = True
    return s


@pytest.fixture(scope="module")
def geometric(wiki_blocks, make_masker, special):
    """(masker output, its statistics, the simulation's) for geometric masking of the real blocks."""
    out = mask_epochs(make_masker("geometric"), wiki_blocks, EPOCHS)
    return out, realised(wiki_blocks * EPOCHS, out, special), simulate(wiki_blocks, special, PAPER_P, EPOCHS, seed=1)


# -- geometric --------------------------------------------------------------------------------------


def test_geometric_merged_spans_match_the_papers_loop(geometric):
    _, ours, sim = geometric
    assert len(ours.merged_words) > 5000
    # Words and pieces per merged span, spans per block: means within K_SE standard errors ...
    assert_same_mean(ours.merged_words, sim.merged_words, "words per merged span")
    assert_same_mean(ours.merged_pieces, sim.merged_pieces, "pieces per merged span")
    assert_same_mean(ours.spans_per_block, sim.spans_per_block, "merged spans per block")
    # ... and the whole length distribution close (sampling noise alone gives TV ~0.02 here).
    assert total_variation(ours.merged_words, sim.merged_words) < 0.04
    # Sanity of the simulation itself against the paper's numbers (docs/masking.md, 2,000 blocks):
    # ~3.9 words per merged span, ~17 merged spans per 510-piece block.
    assert 3.6 < np.mean(sim.merged_words) < 4.2 and 14 < np.mean(sim.spans_per_block) < 19


def test_geometric_words_per_sampled_span(geometric):
    """Each sampled span's new words (the 80/10/10 unit): long spans, as P(ℓ) implies, not single words."""
    _, ours, sim = geometric
    assert_same_mean(ours.sampled_words, sim.sampled_words, "new words per sampled span")
    assert total_variation(ours.sampled_words, sim.sampled_words) < 0.04
    # P(ℓ) has mean 3.797; block ends, overlaps and the budget cut the realised spans a little.
    assert 3.2 < np.mean(ours.sampled_words) < 3.8
    hist = np.bincount(ours.sampled_words, minlength=12) / len(ours.sampled_words)
    assert hist[11:].sum() == 0  # never more than ℓmax = 10 words from one draw
    assert 0.2 < hist[1] < 0.3  # P(1) = 0.224, plus spans cut to one word


def test_geometric_masked_fraction(geometric):
    _, ours, sim = geometric
    assert abs(ours.masked / ours.pieces - sim.masked / sim.pieces) < 0.002
    assert abs(ours.masked / ours.pieces - 0.15) < 0.005


def test_geometric_80_10_10_per_sampled_span(geometric, wiki_blocks, specials):
    """The action is observed in the output ids: all [MASK], all unchanged, or random tokens —
    one action for every piece of a sampled span, chosen 80 / 10 / 10 over spans."""
    out, _, _ = geometric
    blocks = wiki_blocks * EPOCHS
    per_span = []
    for t, mb in zip(blocks, out, strict=True):
        ids, orig = mb.input_ids[mb.mlm_positions], t.input_ids[mb.mlm_positions]
        for sid in np.unique(mb.mlm_span):
            k = mb.mlm_span == sid
            if (ids[k] == specials.mask).all():
                seen = MASK
            elif (ids[k] == orig[k]).all():
                seen = KEEP  # (a random span that drew every original token back would land here: ~never)
            else:
                assert not (ids[k] == specials.mask).any()  # no span mixes [MASK] with other outcomes
                seen = RANDOM
            assert (mb.mlm_replacement[k] == seen).all() or seen == KEEP
            per_span.append(seen)
    frac = np.bincount(per_span, minlength=3) / len(per_span)
    for action, p in ((MASK, 0.8), (RANDOM, 0.1), (KEEP, 0.1)):
        se = math.sqrt(p * (1 - p) / len(per_span))
        assert abs(frac[action] - p) < K_SE * se, (action, frac)


def test_planted_constant_length_is_caught(wiki_blocks, special):
    """The comparison has teeth: a loop whose spans are always one word is far outside the tolerances."""
    sim = simulate(wiki_blocks, special, PAPER_P, 1, seed=2)
    one_word = simulate(wiki_blocks, special, [1.0], 1, seed=3)
    with pytest.raises(AssertionError):
        assert_same_mean(one_word.merged_words, sim.merged_words, "words per merged span")
    with pytest.raises(AssertionError):
        assert_same_mean(one_word.spans_per_block, sim.spans_per_block, "spans per block")


# -- whole words and subwords ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["whole_word", "subword"])
def test_single_unit_schemes_span_shapes(scheme, wiki_blocks, make_masker, special):
    subword = scheme == "subword"
    blocks = wiki_blocks[:150]
    out = mask_epochs(make_masker(scheme), blocks, 2)
    ours = realised(blocks * 2, out, special, subword=subword)
    sim = simulate(blocks, special, [1.0], 2, seed=4, subword=subword)
    # Every sampled span is exactly one unit: one whole word (whole_word) or one piece (subword).
    for t, mb in zip(blocks * 2, out, strict=True):
        starts = words_of(t.input_ids, t.word_start, special)
        for sid in np.unique(mb.mlm_span):
            pos = mb.mlm_positions[mb.mlm_span == sid]
            if subword:
                assert len(pos) == 1
            else:
                ends = np.append(np.flatnonzero(starts), len(starts))
                w = np.searchsorted(ends, pos[0], side="right") - 1
                assert pos.tolist() == list(range(ends[w], ends[w + 1])), "one whole word"
    # Merged runs of single units: their length distribution is the simulation's.
    assert_same_mean(ours.merged_pieces, sim.merged_pieces, "pieces per merged span")
    assert_same_mean(ours.spans_per_block, sim.spans_per_block, "merged spans per block")
    assert abs(ours.masked / ours.pieces - sim.masked / sim.pieces) < 0.003
    if subword:
        # Pieces ignore word boundaries: merged spans start inside words about as often as pieces do.
        mid = [not words_of(t.input_ids, t.word_start, special)[s] for t, mb in zip(blocks * 2, out, strict=True)
               for s, _ in runs(np.isin(np.arange(len(t.input_ids)), mb.mlm_positions))]
        share = np.mean([(~words_of(t.input_ids, t.word_start, special)).mean() for t in blocks])
        assert abs(np.mean(mid) - share) < 0.05 and np.mean(mid) > 0.05


# -- named entities and noun phrases ---------------------------------------------------------------


def widened(spans: np.ndarray, starts: np.ndarray) -> list[tuple[int, int]]:
    """Given piece spans widened to whole words."""
    first = np.flatnonzero(starts)
    ends = np.append(first[1:], len(starts))
    out = []
    for s, e in spans:
        w0 = np.searchsorted(first, s, side="right") - 1
        w1 = np.searchsorted(first, e - 1, side="right") - 1
        out.append((int(first[w0]), int(ends[w1])))
    return out


@pytest.mark.parametrize("scheme", ["named_entity", "noun_phrase"])
def test_linguistic_schemes_take_their_share_from_given_spans_whole(scheme, annotated_blocks, make_masker, special):
    epochs = 20
    tbs = annotated_blocks
    out = mask_epochs(make_masker(scheme), tbs, epochs)  # the blocks carry their entity and noun-phrase spans
    numeric = {"DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"}
    taken = expected = masked = 0
    for t, mb in zip(tbs * epochs, out, strict=True):
        starts = words_of(t.input_ids, t.word_start, special)
        if scheme == "named_entity":
            given = [s for s, lab in zip(t.entity_spans, t.entity_labels, strict=True) if lab not in numeric]
        else:
            given = list(t.noun_phrase_spans)
        spans = sorted(set(widened(np.asarray(given).reshape(-1, 2), starts)))
        flags = np.zeros(len(t.input_ids), bool)
        flags[mb.mlm_positions] = True
        # Given-span groups of the output are whole widened given spans, wholly masked.
        for sid in np.unique(mb.mlm_span[mb.mlm_span >= GIVEN_SPAN_ID]):
            pos = mb.mlm_positions[mb.mlm_span == sid]
            assert (int(pos[0]), int(pos[-1]) + 1) in spans and len(pos) == pos[-1] + 1 - pos[0]
        # From the output alone: pieces of given spans that are masked whole, against half the budget.
        whole = [(s, e) for s, e in spans if flags[s:e].all()]
        disjoint = [sp for i, sp in enumerate(whole) if not any(o[0] < sp[1] and sp[0] < o[1] for o in whole[:i])]
        in_given = sum(e - s for s, e in disjoint)
        budget = max(1, math.floor(0.15 * (~special[t.input_ids]).sum() + 0.5))
        available = sum(e - s for s, e in spans if not special[t.input_ids[s:e]].any())
        target = math.floor(0.5 * budget + 0.5)
        longest = max((e - s for s, e in spans), default=0)
        assert in_given <= budget
        if available >= target + longest:  # enough given spans: the share is half, to within a span
            assert in_given >= target - (longest + 1) // 2, (in_given, target, longest)
        taken += in_given
        expected += min(target, available)
        masked += len(mb.mlm_positions)
    # Over all blocks: the given spans supply what half the budget asks (random words that happen to
    # complete a one-word given span add a little).
    assert masked > 0 and abs(taken / masked - expected / masked) < 0.06, (taken / masked, expected / masked)
    assert taken / masked > 0.35
