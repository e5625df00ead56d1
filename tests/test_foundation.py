"""The shared tokenizer, span aligner and block builder that every stage relies on."""

from __future__ import annotations

import hashlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.align import char_to_piece_spans
from contract.blocks import cut_blocks
from contract.tokenizer import Vocabulary
from tests.conftest import VOCAB, WIKI_EXTRACTED


def test_bert_base_cased_ids(tokenizer):
    # The GUIDE's reference encoding, without [CLS]/[SEP] (blocks are stored bare).
    assert tokenizer.encode("Hello, my dog is cute").ids == [8667, 117, 1139, 3676, 1110, 10509]
    ids = Vocabulary.of(tokenizer)
    assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask) == (0, 100, 101, 102, 103)
    # Identity: sha256 of the vocab.txt lines joined by "\n", recomputed here from the file.
    lines = VOCAB.read_text(encoding="utf-8").split("\n")
    assert ids.sha256 == hashlib.sha256("\n".join(lines[:-1] if lines[-1] == "" else lines).encode("utf-8")).hexdigest()


def test_cased_and_accents_kept(tokenizer):
    enc = tokenizer.encode("Zürich Apple apple")
    assert "apple" in enc.tokens and "Apple" in enc.tokens
    assert tokenizer.decode(enc.ids) == "Zürich Apple apple"


def test_aligner_maps_real_words(tokenizer):
    text = WIKI_EXTRACTED.read_text(encoding="utf-8")[:5000]
    enc = tokenizer.encode(text)
    offsets = np.array(enc.offsets)
    # Every whitespace-delimited word maps to pieces that decode back to it.
    words = [(i, i + len(w)) for i, w in _words(text) if w.isalpha()][:200]
    for (cs, ce), span in zip(words, char_to_piece_spans(offsets, words), strict=True):
        assert span is not None
        ps, pe = span
        assert offsets[ps][0] == cs and offsets[pe - 1][1] == ce
    assert char_to_piece_spans(offsets, [(0, 0)]) == [None]


def _words(text: str):
    i = 0
    for w in text.split(" "):
        yield i, w
        i += len(w) + 1


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.booleans(), min_size=0, max_size=400),
    st.lists(st.booleans(), min_size=0, max_size=400),
    st.integers(1, 64),
)
def test_blocks_cover_everything_and_respect_words(ws, ss, max_pieces):
    n = len(ws)
    word_start = np.array(ws, dtype=bool)
    if n:
        word_start[0] = True
    sentence_start = np.zeros(n, dtype=bool)
    sentence_start[: len(ss)] = np.array(ss[:n], dtype=bool)
    blocks = cut_blocks(word_start, sentence_start, max_pieces)
    assert [b for b in blocks if b[1] <= b[0]] == []
    flat = [i for s, e in blocks for i in range(s, e)]
    assert flat == list(range(n))
    for s, e in blocks:
        assert e - s <= max_pieces
        # never splits a word unless a single word is longer than a block
        if not word_start[s]:
            prev_word = np.flatnonzero(word_start[:s])[-1]
            assert s - prev_word >= max_pieces


def test_blocks_prefer_sentence_ends():
    # Sentences of 30 pieces, one word each piece: blocks of 100 should close at 90.
    word_start = np.ones(300, dtype=bool)
    sentence_start = np.zeros(300, dtype=bool)
    sentence_start[::30] = True
    assert cut_blocks(word_start, sentence_start, 100) == [(0, 90), (90, 180), (180, 270), (270, 300)]
