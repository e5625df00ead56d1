"""The span aligner: character spans (spaCy entities, noun chunks) -> word-piece spans."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def char_to_piece_spans(
    offsets: np.ndarray, spans: Iterable[tuple[int, int]]
) -> list[tuple[int, int] | None]:
    """Map half-open character spans to half-open piece spans.

    `offsets` is the encoding's (n, 2) array of piece character offsets (start, end), ascending.
    A piece belongs to a span when their character ranges overlap, so a span that starts or ends
    inside a word covers the whole piece. Returns None for a span that covers no piece (whitespace).
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    out: list[tuple[int, int] | None] = []
    if len(offsets) == 0:
        return [None for _ in spans]
    ends, starts = offsets[:, 1], offsets[:, 0]
    for cs, ce in spans:
        first = int(np.searchsorted(ends, cs, side="right"))  # first piece ending after cs
        last = int(np.searchsorted(starts, ce, side="left"))  # first piece starting at/after ce
        out.append((first, last) if first < last else None)
    return out
