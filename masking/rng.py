"""Counter-based random numbers: SplitMix64 in uint64 numpy arithmetic.

Why not numpy.random.Generator: a draw here is a pure function of (seed, epoch, block_index, stream,
counter), so a block's mask never depends on which other blocks share its batch, on their order, on
the worker or the process, and a whole batch is drawn in one vectorised call.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment (2^64 / golden ratio)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))
_TO_UNIT = 2.0**-53

# Streams: independent sequences per block, one per decision, so adding draws to one never shifts another.
SPAN = 1  # anchors and lengths of sampled spans
ORDER = 2  # random order of given (entity / noun-phrase) spans
ACTION = 3  # [MASK] / random / keep, per sampled span
TOKEN = 4  # the random replacement tokens, per position


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijective avalanche of 64-bit words."""
    x = x ^ (x >> _S30)
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def block_keys(seed: int, epoch: int, block_index: np.ndarray) -> np.ndarray:
    """One 64-bit key per block from (seed, epoch, block_index); all must be non-negative."""
    b = np.atleast_1d(np.asarray(block_index, dtype=np.uint64))
    k = mix64(np.full(b.shape, seed, dtype=np.uint64) + _GOLDEN)
    k = mix64((k ^ np.uint64(epoch)) + _GOLDEN)
    return mix64((k ^ b) + _GOLDEN)


def stream_keys(keys: np.ndarray, stream: int) -> np.ndarray:
    return mix64(keys ^ mix64(np.full(1, stream, dtype=np.uint64)))


def bits(skeys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """64 random bits for each (stream key, counter) pair; the two arrays broadcast."""
    c = np.asarray(counters, dtype=np.uint64) + np.uint64(1)
    return mix64(skeys + c * _GOLDEN)


def uniform(skeys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Floats in [0, 1) with 53 random bits."""
    return (bits(skeys, counters) >> _S11).astype(np.float64) * _TO_UNIT
