"""The block builder: cut one document's pieces into blocks of at most `max_pieces`.

Rule (README "Blocks"): blocks never cross a document (the caller passes one document) and never
split a word. Whole sentences are packed greedily; when the next sentence does not fit, the block
closes at the last sentence end — unless that would leave it shorter than `min_fill` of
`max_pieces`, in which case it is filled up to the last word boundary that fits. A sentence longer
than a block is therefore split at word boundaries, never dropped (the reference drops it). Every
piece of the document lands in exactly one block, in order.
"""

from __future__ import annotations

import numpy as np


def cut_blocks(
    word_start: np.ndarray,
    sentence_start: np.ndarray | None,
    max_pieces: int,
    min_fill: float = 0.5,
) -> list[tuple[int, int]]:
    """Half-open (start, end) piece ranges covering [0, n) in order.

    word_start[i]: piece i begins a word. sentence_start[i]: piece i begins a sentence (implies a
    word start); None means no sentence information, so blocks fill to the last word boundary.
    """
    word_start = np.asarray(word_start, dtype=bool)
    n = len(word_start)
    if max_pieces < 1:
        raise ValueError(f"max_pieces must be >= 1, got {max_pieces}")
    if n == 0:
        return []
    cuts_word = np.flatnonzero(word_start)  # legal cut positions (a block may start here)
    if sentence_start is None:
        cuts_sent = np.zeros(0, dtype=np.int64)
    else:
        cuts_sent = np.flatnonzero(np.asarray(sentence_start, dtype=bool) & word_start)
    min_len = max(1, int(min_fill * max_pieces))
    blocks: list[tuple[int, int]] = []
    start = 0
    while start < n:
        limit = start + max_pieces
        if limit >= n:
            blocks.append((start, n))
            break
        end = _last_cut(cuts_sent, start + min_len, limit)
        if end is None:
            end = _last_cut(cuts_word, start + 1, limit)
        if end is None:
            # A single word longer than a block (only with a pathological vocabulary): cut inside
            # it rather than lose it; the README documents this as the one exception.
            end = limit
        blocks.append((start, end))
        start = end
    return blocks


def _last_cut(cuts: np.ndarray, lo: int, hi: int) -> int | None:
    """The largest cut position c with lo <= c <= hi, or None."""
    i = int(np.searchsorted(cuts, hi, side="right")) - 1
    if i >= 0 and cuts[i] >= lo:
        return int(cuts[i])
    return None
