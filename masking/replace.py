"""The 80/10/10 replacement: decided once per sampled span, random tokens from unigram counts."""

from __future__ import annotations

import numpy as np

from masking import rng

MASK, RANDOM, KEEP = 0, 1, 2  # values of MaskedBlock.mlm_replacement


class Replacer:
    def __init__(
        self,
        *,
        mask_id: int,
        is_special: np.ndarray,
        unigram_counts: np.ndarray | None,
        mask_prob: float,
        random_prob: float,
    ) -> None:
        vocab_size = len(is_special)
        if unigram_counts is None:
            weights = np.ones(vocab_size, dtype=np.float64)  # uniform over the non-special ids
        else:
            weights = np.asarray(unigram_counts, dtype=np.float64)
            if weights.shape != (vocab_size,):
                raise ValueError(f"unigram_counts has shape {weights.shape}, expected ({vocab_size},)")
            if not np.isfinite(weights).all() or (weights < 0).any():
                raise ValueError("unigram_counts must be finite and non-negative")
        weights = np.where(is_special, 0.0, weights)  # special ids are never sampled
        if weights.sum() <= 0:
            raise ValueError("unigram_counts gives no weight to any non-special id")
        cdf = np.cumsum(weights) / weights.sum()
        cdf[np.flatnonzero(weights)[-1] :] = 1.0  # u < 1 then never lands past the last sampled id
        self._cdf = cdf
        self.mask_id = mask_id
        self.mask_prob = mask_prob
        self.random_prob = random_prob

    def sample_tokens(self, u: np.ndarray) -> np.ndarray:
        """Inverse-CDF unigram draws for uniforms u in [0, 1); zero-weight ids have empty intervals."""
        return np.searchsorted(self._cdf, u, side="right").astype(np.int32)

    def apply(
        self,
        ids: np.ndarray,
        flat_pos: np.ndarray,
        block: np.ndarray,
        local_pos: np.ndarray,
        span_id: np.ndarray,
        keys: np.ndarray,
    ) -> np.ndarray:
        """Replace ids[flat_pos] in place; returns each position's MASK / RANDOM / KEEP.

        One uniform per (block, sampled span) picks the action, so all pieces of a span share it;
        the random token of a position is keyed by its place in the block. A random draw may equal
        the original id (as in BERT): the action, not the outcome, is what the 10% counts.
        """
        u = rng.uniform(rng.stream_keys(keys, rng.ACTION)[block], span_id)
        action = (u >= self.mask_prob).astype(np.int32) + (u >= self.mask_prob + self.random_prob)
        ids[flat_pos[action == MASK]] = self.mask_id
        rand = action == RANDOM
        if rand.any():
            v = rng.uniform(rng.stream_keys(keys, rng.TOKEN)[block[rand]], local_pos[rand])
            ids[flat_pos[rand]] = self.sample_tokens(v)
        return action
