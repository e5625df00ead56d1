"""Windows, targets and decoding against hand-worked cases and the answer texts of the committed excerpts."""

from __future__ import annotations

import numpy as np
import pytest
from squad_fixtures import V1, V2

from contract.tokenizer import load_tokenizer
from finetune.data import Answer, Question, SquadSet, load_squad
from finetune.decode import DecodeConfig, best_span, decode
from finetune.features import FeatureConfig, build_features, max_context_windows, window_starts


def test_window_starts_as_bert():
    # BERT: start += min(length, stride) until a window reaches the end.
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(10, 4, 128) == [0, 4, 8]
    assert window_starts(3, 4, 2) == [0]
    assert window_starts(0, 4, 2) == [0]


def test_max_context_window_hand_worked():
    # n=10, windows of 4 from 0,2,4,6. Score = min(left, right) + 0.01*4.
    # piece 3: window 0 (j=3 -> 0), window 1 (j=1 -> 1): window 1. piece 2: w0 j=2 -> 1, w1 j=0 -> 0: w0.
    # piece 5: w1 j=3 -> 0, w2 j=1 -> 1, ... w2. piece 9: only window 3.
    best = max_context_windows(10, [0, 2, 4, 6], 4)
    assert best[0] == 0 and best[2] == 0 and best[3] == 1 and best[5] == 2 and best[9] == 3


@pytest.fixture(scope="module")
def tok(squad_vocab):
    return load_tokenizer(squad_vocab)


@pytest.mark.parametrize("path", [V1, V2])
def test_targets_recover_every_answer(path, tok):
    """Small windows (many per question): each training target, cut from the context by the offsets, is
    the gold answer (or the whole words around it, when the gold starts or ends inside a word, as BERT)."""
    data = load_squad(path)
    feats = build_features(data, tok, FeatureConfig(96, 24, 32), training=True)
    per_question = {}
    for w in feats.windows:
        q = data.questions[w.question_index]
        assert len(w.input_ids) <= 96
        per_question.setdefault(w.question_index, []).append(w)
        if w.start_position == 0:
            assert w.end_position == 0
            continue
        off = feats.offsets[q.context_index]
        a = w.doc_start + w.start_position - w.context_offset
        b = w.doc_start + w.end_position - w.context_offset
        text = q.context[off[a, 0]:off[b, 1]]
        gold = q.answers[0]
        assert gold.text in text and off[a, 0] <= gold.start and gold.end <= off[b, 1]
        assert text == gold.text or len(text) - len(gold.text) < 20
    assert len(per_question) == len(data.questions)
    # Every answerable question: a window holds its whole answer exactly when it covers the answer's pieces.
    for qi, ws in per_question.items():
        q = data.questions[qi]
        if q.is_impossible:
            assert all(w.start_position == 0 for w in ws)
        else:
            assert any(w.start_position > 0 for w in ws), q.qid
    # Windows of one question tile its context: consecutive starts 24 apart, all pieces covered.
    q0 = per_question[0]
    assert [w.doc_start for w in q0] == [24 * i for i in range(len(q0))]
    assert q0[-1].doc_start + q0[-1].doc_len == len(feats.offsets[data.questions[0].context_index])


def _one_question(context: str, answers=()) -> SquadSet:
    q = Question("q", "Where is it?", context, 0, tuple(answers), "T")
    return SquadSet(V1, "2.0" if not answers else "1.1", [], [q], [context])


def test_decode_hand_worked(tok):
    ctx = "Paris is the capital of France and its largest city."
    data = _one_question(ctx, [Answer("France", ctx.index("France"))])
    data = SquadSet(V2, "2.0", [], data.questions, data.contexts)
    feats = build_features(data, tok, FeatureConfig(128, 128, 32), training=False)
    (w,) = feats.windows
    n = len(w.input_ids)
    off = feats.offsets[0]
    piece = {ctx[s:e]: w.context_offset + i for i, (s, e) in enumerate(off)}
    start, end = np.zeros(n), np.zeros(n)
    start[piece["France"]], end[piece["France"]] = 5.0, 5.0
    start[1], end[1] = 9.0, 9.0  # a question piece: never an answer
    first, last = w.context_offset, w.context_offset + len(off) - 1
    start[last] = 6.0  # the final ".": its partners France / the first piece come before it (invalid)
    end[first] = 6.0  # the first piece: any start at or before it scores at most 0 + 6
    start[0], end[0] = 1.0, 1.5  # null score 2.5
    out = decode(data, feats, [start], [end], DecodeConfig())
    # valid pairs: (France, France) 10, (first, first) 6, (first, France) 5, (".", ".") 6: France wins.
    assert out.predictions == {"q": "France"}
    assert out.na_probs == {"q": pytest.approx(2.5 - 10.0)}
    # A null score above the best span: no answer, and the difference is the na_prob.
    start[0] = 20.0
    out = decode(data, feats, [start], [end], DecodeConfig())
    assert out.predictions == {"q": ""} and out.na_probs["q"] == pytest.approx(21.5 - 10.0)


def test_best_span_rules():
    lo, hi = 3, 10
    mc = np.ones(hi - lo, dtype=bool)
    s, e = np.zeros(12), np.zeros(12)
    s[4], e[9] = 3.0, 3.0  # length 6
    assert best_span(s, e, lo, hi, mc, DecodeConfig())[1:] == (4, 9)
    assert best_span(s, e, lo, hi, mc, DecodeConfig(max_answer_length=5))[1:] != (4, 9)  # too long
    mc[4 - lo] = False  # start outside its max-context window: not allowed to start there
    assert best_span(s, e, lo, hi, mc, DecodeConfig())[1:] != (4, 9)
    s2, e2 = np.zeros(12), np.zeros(12)
    s2[11], e2[11] = 9.0, 9.0  # beyond the context ([SEP] / padding)
    found = best_span(s2, e2, lo, hi, np.ones(hi - lo, dtype=bool), DecodeConfig())
    assert found is not None and lo <= found[1] <= found[2] < hi


def test_decode_best_over_windows_and_min_null(tok):
    ctx = " ".join(f"word{i}" for i in range(60)) + " Oslo is here."
    data = SquadSet(V2, "2.0", [], [Question("q", "Where?", ctx, 0, (), "T")], [ctx])
    feats = build_features(data, tok, FeatureConfig(48, 16, 16), training=False)
    assert len(feats.windows) > 2
    starts, ends = [], []
    for k, w in enumerate(feats.windows):
        s, e = np.zeros(len(w.input_ids)), np.zeros(len(w.input_ids))
        s[0] = e[0] = 10.0 - k  # null score 20 - 2k: the minimum is the last window's
        p = w.context_offset + w.doc_len // 2  # mid-window: its max-context window; score grows with k
        s[p], e[p] = k, k
        starts.append(s)
        ends.append(e)
    last = len(feats.windows) - 1
    out = decode(data, feats, starts, ends, DecodeConfig())
    assert out.na_probs["q"] == pytest.approx((20.0 - 2 * last) - 2 * last)  # min null - best span
    w = feats.windows[last]
    s, e = feats.offsets[0][w.doc_start + w.doc_len // 2]
    assert out.predictions["q"] == ctx[s:e]  # the last window's span (null - best < 0: answered)
