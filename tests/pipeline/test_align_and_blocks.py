"""Hand-worked cases for the span aligner and the block builder (complementing the property tests in
tests/test_foundation.py): the edges a property test on real text rarely reaches."""

from __future__ import annotations

import numpy as np
import pytest

from contract.align import char_to_piece_spans
from contract.blocks import cut_blocks

# "Hello, world" as pieces: "Hello" [0, 5), "," [5, 6), "world" [7, 12).
OFFSETS = np.array([[0, 5], [5, 6], [7, 12]])


@pytest.mark.parametrize("span, pieces", [
    ((5, 6), (1, 2)),  # starts exactly where "Hello" ends: not "Hello"
    ((0, 5), (0, 1)),  # ends exactly where "," starts: not ","
    ((2, 3), (0, 1)),  # inside a word: the whole piece
    ((4, 8), (0, 3)),  # overlapping three pieces
    ((6, 7), None),  # only the space
    ((12, 15), None),  # past the end
])
def test_aligner_edges(span, pieces):
    assert char_to_piece_spans(OFFSETS, [span]) == [pieces]


def test_aligner_one_piece_and_no_piece():
    assert char_to_piece_spans(np.array([[3, 7]]), [(3, 7), (0, 2)]) == [(0, 1), None]
    assert char_to_piece_spans(np.zeros((0, 2)), [(0, 1)]) == [None]


def test_blocks_hand_worked():
    ws = np.array([1, 0, 1, 1, 0, 0, 1, 1], bool)  # words: [0,2) [2,3) [3,6) [6,7) [7,8)
    ss = np.array([1, 0, 0, 1, 0, 0, 0, 1], bool)  # sentences start at 0, 3, 7
    assert cut_blocks(ws, ss, 4) == [(0, 3), (3, 7), (7, 8)]  # sentence ends, each block >= half full
    assert cut_blocks(ws, None, 4) == [(0, 3), (3, 7), (7, 8)]  # last word boundary that fits
    assert cut_blocks(ws, ss, 8) == [(0, 8)]
    assert cut_blocks(ws, ss, 5, min_fill=1.0) == [(0, 3), (3, 8)]
    # min_fill: a sentence end that leaves the block under min_fill x max_pieces is passed over.
    every = np.ones(8, bool)
    early = np.array([1, 0, 1, 0, 0, 0, 0, 0], bool)
    assert cut_blocks(every, early, 5) == [(0, 2), (2, 7), (7, 8)]
    assert cut_blocks(every, early, 5, min_fill=1.0) == [(0, 5), (5, 8)]
    assert cut_blocks(np.ones(5, bool), np.array([1, 0, 0, 0, 1], bool), 4) == [(0, 4), (4, 5)]
    assert cut_blocks(np.ones(5, bool), np.array([1, 0, 1, 0, 0], bool), 4) == [(0, 2), (2, 5)]
    assert cut_blocks(np.array([1, 0, 0, 0, 0, 1], bool), None, 3) == [(0, 3), (3, 6)]  # a word > a block: cut inside
    # Tiny blocks: half of 3 pieces rounds down to 1, so a one-piece sentence closes a block.
    assert cut_blocks(np.ones(4, bool), np.array([1, 1, 0, 0], bool), 3) == [(0, 1), (1, 4)]
    assert cut_blocks(np.zeros(0, bool), None, 4) == []
    with pytest.raises(ValueError, match="max_pieces"):
        cut_blocks(ws, None, 0)


def test_blocks_read_word_and_sentence_marks_by_truth_value():
    """The marks may come as any numbers (an Arrow uint8 column, 0/255 masks, counts): only their truth
    value counts, for each array on its own — a sentence start marked 2 where words are marked 1 is
    still a sentence start at a word start."""
    every, early = np.ones(8, bool), np.array([1, 0, 1, 0, 0, 0, 0, 0], bool)
    want = [(0, 2), (2, 7), (7, 8)]  # the sentence end at 2 (hand-worked above); words alone: [(0, 5), (5, 8)]
    assert cut_blocks(every, early, 5) == want
    assert cut_blocks(every.astype(np.uint8) * 2, early, 5) == want
    assert cut_blocks(every, early.astype(np.int64) * 2, 5) == want
    assert cut_blocks(every.astype(np.uint8) * 255, early.astype(np.uint8) * 4, 5) == want
    assert cut_blocks(every.tolist(), early.tolist(), 5) == want


def test_blocks_when_the_first_cut_is_not_at_piece_0():
    """The only sentence start after piece 0 is at 2 — the first entry of the cut list is a legal cut;
    and a one-piece word before a long one is the only word cut, one piece in."""
    every, late = np.ones(8, bool), np.array([0, 0, 1, 0, 0, 0, 0, 0], bool)
    # start 0: sentence cut 2 >= min_len 2 -> (0, 2); start 2: no sentence cut in [4, 7], last word cut 7.
    assert cut_blocks(every, late, 5) == [(0, 2), (2, 7), (7, 8)]
    # words [0, 1) and [1, 6): the first block ends at the word cut 1; [1, 6) is longer than a block: cut inside.
    assert cut_blocks(np.array([1, 1, 0, 0, 0, 0], bool), None, 3) == [(0, 1), (1, 4), (4, 6)]

