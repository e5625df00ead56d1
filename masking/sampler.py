"""The span sampler: which words of each block get masked, up to the block's budget.

Per block, repeat until the budget is spent (the paper's §3.1 loop):
  1. draw a length ℓ (in words) from P(ℓ) (`length_cdf`; for whole-word and subword masking ℓ = 1);
  2. draw the start uniformly over the block's maskable words that are not yet masked (draw a word
     uniformly, redraw while it is masked, up to ANCHOR_TRIES draws, else the span is void);
  3. mask ℓ words from there — stopping early at the block end or a special piece — keeping the
     longest prefix whose *new* pieces fit the remaining budget (whole words only);
  4. if not even the start word fits, the budget is spent (the block ends at most one word short).
Spans may overlap or touch earlier ones; `sbo.merge_spans` later fuses them into maximal runs.

Execution is vectorised across the batch in rounds, and is exactly the sequential loop above:
every draw of a block is keyed by (its key, span number, slot), never by the batch around it.
A round evaluates the next SPANS_PER_ROUND spans of each block against the mask as the round found
it, then keeps them in order up to the first one that looks at a word an earlier one of the round
masks (that one waits for the next round) or that the budget cuts; so several spans cost one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from masking import rng
from masking.layout import Layout

# Anchor tries per span. At most ~20% of words get masked, so all 4 missing has p < 0.002; such a
# span is void: it masks nothing and its length is not used, which biases neither lengths nor starts.
ANCHOR_TRIES = 4
_STRIDE = ANCHOR_TRIES + 1  # draws per span: the anchor tries, then the length
WORDS_PER_ROUND = 8  # ℓ = 1 schemes: one-word spans drawn per block per round
# Spans evaluated per block per round (any value gives the same masks). ~17 spans per 510-piece
# block: big batches amortise the call overhead, so fewer spans per round waste less work there;
# a lone block is all call overhead, so it takes more per round.
SPANS_PER_ROUND = 6
SPANS_PER_ROUND_SMALL_BATCH = 16
GIVEN_SPAN_ID = 1 << 24  # span ids from given (entity / noun-phrase) spans start here; sampled ones below


def span_length_pmf(p: float, max_words: int) -> np.ndarray:
    """P(ℓ) for ℓ = 1..max_words: geometric, truncated and renormalised (the reference's "clip")."""
    ell = np.arange(1, max_words + 1, dtype=np.float64)
    w = p * (1.0 - p) ** (ell - 1.0)
    return w / w.sum()


def pmf_to_cdf(pmf: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(pmf)
    cdf[-1] = 1.0  # so searchsorted(cdf, u < 1) never runs past the last length
    return cdf


@dataclass
class Selection:
    """Masked words of a batch, and which sampled span masked each (for the per-span 80/10/10)."""

    masked: np.ndarray  # bool[W] over the layout's global words
    span_id: np.ndarray  # int64[W], -1 where unmasked
    remaining: np.ndarray  # int64[B] budget left, in pieces

    @classmethod
    def empty(cls, layout: Layout) -> Selection:
        W = layout.n_words
        return cls(np.zeros(W, bool), np.full(W, -1, np.int64), layout.budget.copy())


@dataclass
class SampledLengths:
    """Stats hook: the sampler's length draws for spans it placed, and their realised word counts."""

    sampled: list[np.ndarray]
    realised: list[np.ndarray]

    @classmethod
    def new(cls) -> SampledLengths:
        return cls([], [])

    def all_sampled(self) -> np.ndarray:
        return np.concatenate(self.sampled) if self.sampled else np.zeros(0, np.int64)

    def all_realised(self) -> np.ndarray:
        return np.concatenate(self.realised) if self.realised else np.zeros(0, np.int64)


def sample_spans(
    layout: Layout,
    sel: Selection,
    length_cdf: np.ndarray,
    keys: np.ndarray,
    record: SampledLengths | None = None,
    spans_per_round: int | None = None,
) -> None:
    """Spend `sel.remaining` of every block on sampled spans (see the module doc); updates `sel`."""
    free = layout.n_candidates - np.bincount(layout.word_block[sel.masked], minlength=layout.n_blocks)
    act = np.flatnonzero((sel.remaining > 0) & (free > 0))
    if not act.size:
        return
    skeys = rng.stream_keys(keys, rng.SPAN)
    if len(length_cdf) == 1:
        _single_words(layout, sel, skeys, act, free)
    else:
        if spans_per_round is None:
            spans_per_round = SPANS_PER_ROUND_SMALL_BATCH if len(act) <= 16 else SPANS_PER_ROUND
        _spans(layout, sel, length_cdf, skeys, act, free, record, spans_per_round)


def _anchors(layout: Layout, sel: Selection, u: np.ndarray, act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uniform draws u -> (uniformly drawn maskable global word numbers, still unmasked?)."""
    shape = (-1,) + (1,) * (u.ndim - 1)
    pick = (u * layout.n_candidates[act].reshape(shape)).astype(np.int64)
    cand = layout.candidates[layout.cand_first[act].reshape(shape) + pick]
    return cand, ~sel.masked[cand]


def _single_words(
    layout: Layout, sel: Selection, skeys: np.ndarray, act: np.ndarray, free: np.ndarray
) -> None:
    """ℓ = 1 (whole words, subwords): every anchor try is a one-word span, taken in order; a word
    already masked, or repeated within the round, is a redraw — so this equals one try per step."""
    slots = np.arange(WORDS_PER_ROUND, dtype=np.uint64)
    later = np.triu(np.ones((WORDS_PER_ROUND, WORDS_PER_ROUND), bool), 1)
    max_rounds = 2 * int(layout.budget.max(initial=0)) + 64  # a round spends >= 1 piece but for rare misses
    for r in range(max_rounds):
        if not act.size:
            break
        u = rng.uniform(skeys[act, None], np.uint64(r * WORDS_PER_ROUND) + slots)
        cand, fresh = _anchors(layout, sel, u, act)
        fresh &= ~((cand[:, :, None] == cand[:, None, :]) & later).any(axis=1)
        rem = sel.remaining[act]
        cost = np.where(fresh, layout.word_len[cand], 0)
        too_big = fresh & (np.cumsum(cost, axis=1) > rem[:, None])
        take = fresh & (np.cumsum(too_big, axis=1) == 0)
        spent = np.where(take, cost, 0).sum(axis=1)
        sel.masked[cand[take]] = True
        sel.span_id[cand[take]] = (r * WORDS_PER_ROUND + slots.astype(np.int64))[np.nonzero(take)[1]]
        sel.remaining[act] = rem - spent
        free[act] -= take.sum(axis=1)
        act = act[~(too_big.any(axis=1) | (rem == spent) | (free[act] == 0))]


def _spans(
    layout: Layout,
    sel: Selection,
    length_cdf: np.ndarray,
    skeys: np.ndarray,
    act: np.ndarray,
    free: np.ndarray,
    record: SampledLengths | None,
    T: int,
) -> None:
    """Geometric spans, T per block per round (see the module doc for why that is still sequential)."""
    L = len(length_cdf)
    offs = np.arange(L)
    t_idx = np.arange(T)
    slots = np.arange(T * _STRIDE, dtype=np.uint64)
    last_word = layout.n_words - 1
    maskable_len = np.where(layout.word_maskable, layout.word_len, 0)  # 0: a span stops here
    next_span = np.zeros(layout.n_blocks, np.int64)  # per block: spans drawn so far
    first_new = np.full(layout.n_words, T, np.int64)  # scratch: earliest span of the round masking a word
    max_rounds = 2 * int(layout.budget.max(initial=0)) + 64
    for _ in range(max_rounds):
        if not act.size:
            break
        A = len(act)
        t0 = next_span[act]
        u = rng.uniform(skeys[act, None], (t0 * _STRIDE).astype(np.uint64)[:, None] + slots)
        u = u.reshape(A, T, _STRIDE)
        cand, fresh = _anchors(layout, sel, u[:, :, :ANCHOR_TRIES], act)
        found = fresh.any(axis=2)  # False: all tries masked, the span is void (consumed, places nothing)
        start = np.take_along_axis(cand, fresh.argmax(axis=2)[:, :, None], axis=2)
        ell = np.searchsorted(length_cdf, u[:, :, ANCHOR_TRIES], side="right") + 1
        words = start + offs  # [A, T, L]
        inside = (offs < ell[:, :, None]) & (words < layout.word_end[act, None, None]) & found[:, :, None]
        words = np.minimum(words, last_word)
        wlen = maskable_len[words]
        ok = np.logical_and.accumulate(inside & (wlen > 0), axis=2)
        new = ok & ~sel.masked[words]
        cost = np.where(new, wlen, 0)

        # Span t is what the sequential loop would do unless an earlier span t' < t of this round
        # masks a word t looks at (its anchor or range): then t and the rest wait for the next round.
        new_words = words[new]
        np.minimum.at(first_new, new_words, np.broadcast_to(t_idx[:, None], new.shape)[new])
        clash = (ok & (first_new[words] < t_idx[:, None])).any(axis=2)
        first_new[new_words] = T
        clash[:, 0] = False
        n_ok = np.where(clash.any(axis=1), clash.argmax(axis=1), T)
        # Without clashes the spans' new words are disjoint, so their costs add up; the first span
        # the budget cuts is trimmed to whole words (or ends the block) and closes the round.
        span_cost = cost.sum(axis=2)
        before = np.cumsum(span_cost, axis=1) - span_cost
        rem = sel.remaining[act]
        keep = ok & (np.cumsum(cost, axis=2) <= (rem[:, None] - before)[:, :, None])
        cut = (before + span_cost > rem[:, None]).any(axis=1)
        n_cut = np.where(cut, (before + span_cost > rem[:, None]).argmax(axis=1) + 1, T)
        n_used = np.minimum(n_ok, n_cut)
        used = t_idx < n_used[:, None]
        placed = used & keep[:, :, 0]
        stop = (used & found & ~keep[:, :, 0]).any(axis=1)
        if record is not None:
            record.sampled.append(ell[placed])
            record.realised.append(keep.sum(axis=2)[placed])

        take = new & keep & used[:, :, None]
        taken = words[take]
        sel.masked[taken] = True
        sel.span_id[taken] = np.broadcast_to((t0[:, None] + t_idx)[:, :, None], take.shape)[take]
        spent = np.where(take, cost, 0).sum(axis=(1, 2))
        sel.remaining[act] = rem - spent
        free[act] -= take.sum(axis=(1, 2))
        next_span[act] = t0 + n_used
        act = act[~(stop | (rem == spent) | (free[act] == 0))]
