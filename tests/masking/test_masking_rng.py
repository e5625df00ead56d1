"""`masking.rng` is SplitMix64 (Steele, Lea & Flood 2014), checked against a plain-integer re-computation.

Every other masking test draws its expected values from `masking.rng` too (the sampler is compared with
a sequential loop on the *same* stream), so a changed constant or shift there moves both sides and no
statistic can see it; yet it changes every mask, i.e. every shard and checkpoint that was reproducible.
The reference below is the published algorithm on Python ints (mod 2**64), and its first outputs for
state 0 are the published ones (Vigna's splitmix64.c).
"""

from __future__ import annotations

import numpy as np

from masking import rng

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
