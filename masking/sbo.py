"""Merged spans and span-boundary (SBO) targets.

Overlapping and touching sampled spans are merged into maximal runs of masked pieces, so both
boundaries of every merged span are unmasked. Boundary positions are block coordinates: -1 is the
token before the block ([CLS]) and n the token after it ([SEP]), so edge spans have boundaries too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SboTargets:
    span_block: np.ndarray  # int64[S]
    span_start: np.ndarray  # int64[S] block coordinates, [start, end)
    span_end: np.ndarray
    select: np.ndarray  # bool[M]: which masked pieces get an SBO target
    left: np.ndarray  # int64[M] left boundary of each masked piece's span
    right: np.ndarray
    rel: np.ndarray  # int64[M] 1-based position in its merged span


def merge_spans(
    lengths: np.ndarray, block: np.ndarray, pos: np.ndarray, max_targets: int, edge_spans: bool
) -> SboTargets:
    """Runs of the masked pieces given by (block, pos), sorted by block then position."""
    starts_run = np.ones(len(pos), bool)
    starts_run[1:] = (pos[1:] != pos[:-1] + 1) | (block[1:] != block[:-1])
    first = np.flatnonzero(starts_run)
    span_block = block[first]
    span_start = pos[first]
    span_end = pos[np.append(first[1:], len(pos)) - 1] + 1 if len(pos) else span_start.copy()
    span_of = np.cumsum(starts_run) - 1
    rel = pos - span_start[span_of] + 1
    left = span_start[span_of] - 1
    right = span_end[span_of]
    select = rel <= max_targets  # the first max_targets pieces of a long merged span
    if not edge_spans:  # the reference's choice: spans at a block edge get MLM only
        select &= (left >= 0) & (right < lengths[block])
    return SboTargets(span_block, span_start, span_end, select, left, right, rel)
