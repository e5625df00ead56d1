"""The speed-ups in pipeline.encode keep their results (issue 12): batched encoding equals one whole-text
`encode` per document, and the sentence rule equals its plain (look-behind) statement.

Self-contained: a small WordPiece vocabulary is generated here, no ../shared data is read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from contract.tokenizer import SPECIAL_TOKENS, wordpiece_from_vocab
from pipeline.encode import continuation_table, encode_segmented, rule_sentence_starts, safe_starts

ALPHABET = list("ab .!?\n\"'(CZ9,-\u201c\u201d")
# The rule as first written (README "Blocks" / pipeline.encode): a look-behind at every character.
REFERENCE_RULE = re.compile(r"\n[ \t]*\n\s*|(?<=[.!?])[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    letters = sorted({c for c in ALPHABET if not c.isspace()})
    words = ["ab", "ba", "aab", "C9"]
    vocab = [*SPECIAL_TOKENS, *letters, *(f"##{c}" for c in letters), *words, *(f"##{w}" for w in words)]
    path: Path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return wordpiece_from_vocab(path)


texts = st.lists(st.text(alphabet=st.sampled_from(ALPHABET), max_size=120), min_size=1, max_size=6)


@given(batch=texts, every=st.integers(1, 7))
@settings(max_examples=150, deadline=None)
def test_batched_segments_equal_whole_text_encodings(tok, batch: list[str], every: int) -> None:
    starts = [safe_starts(t, [*rule_sentence_starts(t), *range(0, len(t), every)]) for t in batch]
    table = continuation_table(tok)
    for with_offsets, cont in ((False, table), (True, table), (True, None)):
        out = encode_segmented(tok, batch, starts, with_offsets, cont)
        assert len(out) == len(batch)
        for text, (ids, ws, ss, offs) in zip(batch, out, strict=True):
            ref = tok.encode(text, add_special_tokens=False)  # one call on the whole text: the reference
            assert ids.dtype == np.int32 and ids.tolist() == ref.ids
            w = [-1 if x is None else x for x in ref.word_ids]
            assert ws.tolist() == [i == 0 or w[i] != w[i - 1] for i in range(len(w))]
            assert not (ss & ~ws).any() and (len(ids) == 0 or ss[0])
            if with_offsets:
                assert offs.tolist() == [list(o) for o in ref.offsets]


@given(st.text(alphabet=st.sampled_from([*ALPHABET, "\t", "\u2018", "\u2019", "]", ")", "["]), max_size=60))
@example('a. "B. (C? \u2018D! \u201cE.) F.\u2019 9.] Z\n \n\nb')
@settings(max_examples=400, deadline=None)
def test_rule_equals_its_lookbehind_statement(text: str) -> None:
    expected = [0, *(m.end() for m in REFERENCE_RULE.finditer(text) if m.end() < len(text))]
    assert rule_sentence_starts(text) == expected


@given(st.text(alphabet=st.sampled_from(ALPHABET), max_size=40), st.lists(st.integers(-3, 45), max_size=8))
@example("ab a.b a\nb", [-1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10, 11])
@settings(max_examples=300, deadline=None)
def test_safe_starts_keeps_exactly_the_harmless_cuts(text: str, starts: list[int]) -> None:
    def harmless(s: int) -> bool:  # cutting here cannot change BERT pre-tokenisation
        a, b = text[s - 1], text[s]
        return any(c.isspace() or (not c.isalnum()) for c in (a, b))

    expected = [0, *sorted({s for s in starts if 0 < s < len(text) and harmless(s)})]
    assert safe_starts(text, starts) == expected
