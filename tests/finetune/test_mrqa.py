"""MRQA: the reader (header, inclusive ends, several answers, the earliest span trained), the official
scorer on hand-worked cases, SQuAD converted to MRQA scoring the same through both scorers, and
`python -m finetune mrqa` end to end on a hand-made file with contexts longer than one window."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from squad_fixtures import V1, V2

from contract.cli import run_main
from contract.tokenizer import load_tokenizer
from finetune.__main__ import main as finetune_main
from finetune.data import load_squad
from finetune.evaluate_mrqa import evaluate_files as mrqa_files
from finetune.evaluate_mrqa import main as mrqa_main
from finetune.evaluate_squad import evaluate_files as squad_files
from finetune.features import FeatureConfig, build_features
from finetune.mrqa import load_mrqa, squad_to_mrqa, write_mrqa

HEADER = {"header": {"dataset": "hand", "split": "dev"}}


def mrqa_file(path, rows, header=True):
    return write_mrqa(([HEADER] if header else []) + rows, path)


def qa(qid, answers, spans=(), question="q?"):
    return {"qid": qid, "question": question, "answers": answers,
            "detected_answers": [{"text": "x", "char_spans": [list(s)]} for s in spans]}


def test_reader_inclusive_ends_and_the_earliest_of_several_answers_is_trained(tmp_path):
    ctx = "Paris is in France. The capital, Paris, is big."
    late, early = (33, 37), (0, 4)  # "Paris" twice; inclusive ends: [0, 4] is 5 characters
    path = mrqa_file(tmp_path / "a.jsonl.gz", [{"context": ctx, "qas": [qa("q1", ["Paris"], [late, early])]}])
    data = load_mrqa(path, training=True)
    q = data.squad.questions[0]
    assert [(a.start, a.text) for a in q.answers] == [(0, "Paris"), (33, "Paris")]  # sorted: earliest first
    assert data.golds[0].answers == ("Paris",) and data.squad.version == "1.1"


@pytest.mark.parametrize("rows, header, message", [
    ([{"context": "abc", "qas": [qa("q", ["abc"], [(0, 3)])]}], True, "outside its 3-character context"),
    ([{"context": "abc", "qas": [qa("q", ["abc"], [(0, 2)])]}], False, "not an MRQA header"),
    ([{"context": "abc", "qas": [qa("q", ["abc"], [])]}], True, "no detected answer"),
    ([{"context": "abc", "qas": [qa("q", ["a"], [(0, 0)]), qa("q", ["b"], [(1, 1)])]}], True, "occurs twice"),
    ([{"contexts": "abc"}], True, "line 2: not MRQA"),
])
def test_bad_files_are_one_error_line(tmp_path, capsys, rows, header, message):
    path = mrqa_file(tmp_path / "bad.jsonl.gz", rows, header)
    (tmp_path / "p.json").write_text("{}")
    # the scorer reads dev files (no detected answers needed); training needs them
    from finetune.data import SquadError
    with pytest.raises(SquadError, match=message):
        load_mrqa(path, training=True)


def test_official_scorer_hand_worked(tmp_path, capsys):
    ctx = "The Eiffel Tower is a big red dog."
    path = mrqa_file(tmp_path / "d.jsonl.gz", [{"context": ctx, "qas": [
        qa("a", ["Eiffel Tower", "tower"], [(4, 15)]), qa("b", ["red cat", "a dog"], [(26, 32)]), qa("c", ["big"], [(22, 24)])]}])
    (tmp_path / "p.json").write_text(json.dumps({"a": "the Eiffel  tower!", "b": "big red dog"}))
    # a: EM 1 (normalised). b: vs "red cat" P 1/3 R 1/2 -> 0.4; vs "dog" P 1/3 R 1 -> 0.5; EM 0. c: missing, stays.
    assert mrqa_files(path, tmp_path / "p.json").metrics == pytest.approx({"exact_match": 100 / 3, "f1": 150 / 3})
    assert mrqa_files(path, tmp_path / "p.json", skip_no_answer=True).metrics == pytest.approx({"exact_match": 50, "f1": 75})
    assert run_main(mrqa_main, [str(path), str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == pytest.approx({"exact_match": 100 / 3, "f1": 50}) and "1 question(s)" in out.err
    (tmp_path / "x.json").write_text(json.dumps({"zzz": "a"}))
    assert run_main(mrqa_main, [str(path), str(tmp_path / "x.json")]) == 2
    assert "not in" in capsys.readouterr().err


def _predictions(questions, context_of, skip_missing):
    """Deterministic mixed predictions: a gold, a gold's first word, a context word, missing."""
    preds = {}
    for i, q in enumerate(questions):
        golds = [a.text for a in q.answers]
        kind = i % 4
        if kind == 3 and not skip_missing:
            continue
        preds[q.qid] = (golds[-1] if kind == 0 else golds[0].split()[0] if kind == 1
                        else context_of(q).split()[i % 7])
    return preds


def test_squad_converted_to_mrqa_scores_the_same_through_both_scorers(tmp_path):
    v1 = load_squad(V1)
    conv = write_mrqa(squad_to_mrqa(v1), tmp_path / "v1.jsonl.gz")
    preds = _predictions(v1.questions, lambda q: q.context, skip_missing=False)
    (tmp_path / "p1.json").write_text(json.dumps(preds))
    a, b = squad_files(V1, tmp_path / "p1.json"), mrqa_files(conv, tmp_path / "p1.json")
    assert a.metrics == pytest.approx(b.metrics) and a.missing == b.missing > 0
    assert 5 < a.metrics["exact_match"] < 95  # a mix, not all right or all wrong
    # SQuAD 2.0: the answerable questions converted; MRQA's EM/F1 = the v2.0 scorer's HasAns block.
    v2 = load_squad(V2)
    answerable = [q for q in v2.questions if not q.is_impossible]
    conv2 = write_mrqa(squad_to_mrqa(v2), tmp_path / "v2.jsonl.gz")
    assert [g.qid for g in load_mrqa(conv2, training=True).golds] == [q.qid for q in answerable]
    preds2 = _predictions(answerable, lambda q: q.context, skip_missing=True)
    preds2.update({q.qid: "" for q in v2.questions if q.is_impossible})  # v2.0 needs every prediction
    (tmp_path / "p2.json").write_text(json.dumps(preds2))
    (tmp_path / "p2m.json").write_text(json.dumps({k: preds2[k] for k in (q.qid for q in answerable)}))
    full, conv_scored = squad_files(V2, tmp_path / "p2.json").metrics, mrqa_files(conv2, tmp_path / "p2m.json").metrics
    assert conv_scored == pytest.approx({"exact_match": full["HasAns_exact"], "f1": full["HasAns_f1"]})


def test_windows_of_a_long_context_and_an_answer_outside_every_window(tmp_path, squad_vocab):
    """A context of ~60 pieces in 24-piece windows: the earliest answer is targeted in the window that holds
    it; an answer longer than a window fits in none, so every window targets [CLS] (0, 0)."""
    words = [f"w{i}" for i in range(40)]
    ctx = " ".join(words)
    s5 = ctx.index("w5 ")
    s30 = ctx.index("w30")
    rows = [{"context": ctx, "qas": [qa("short", ["w30"], [(s30, s30 + 2), (s5, s5 + 1)]),
                                     qa("long", ["long"], [(0, len(ctx) - 1)])]}]
    data = load_mrqa(mrqa_file(tmp_path / "l.jsonl.gz", rows), training=True).squad
    tok = load_tokenizer(squad_vocab)
    feats = build_features(data, tok, FeatureConfig(max_seq_length=24, doc_stride=8, max_query_length=4), training=True)
    by_q = [[w for w in feats.windows if w.question_index == i] for i in range(2)]
    assert len(by_q[0]) > 2
    assert all((w.start_position, w.end_position) == (0, 0) for w in by_q[1])
    offs = feats.offsets[0]
    hits = [w for w in by_q[0] if w.start_position > 0]
    assert hits and all(ctx[offs[w.doc_start + w.start_position - w.context_offset, 0]:
                            offs[w.doc_start + w.end_position - w.context_offset, 1]] == "w5" for w in hits)


@pytest.mark.slow
def test_mrqa_end_to_end_learns_and_matches_the_standalone_scorer(tmp_path, tiny_hf_dir):
    rng = np.random.default_rng(0)
    names = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi"]
    rows = []
    for c in range(6):  # long contexts: many windows at 64 pieces
        filler = " ".join(rng.choice(["the", "river", "stone", "green", "house", "quiet"], size=40))
        who = names[c]
        ctx = f"{filler} The winner was {who} . {filler}"
        s = ctx.index(f"was {who}") + 4
        rows.append({"context": ctx, "qas": [qa(f"q{c}", [who, f"{who} ."], [(s, s + len(who) - 1)], "Who was the winner ?")]})
    path = mrqa_file(tmp_path / "t.jsonl.gz", rows)
    common = ["mrqa", "--model", str(tiny_hf_dir), "--train", str(path), "--dev", str(path), "--max-seq-length", "64",
              "--doc-stride", "32", "--max-query-length", "16", "--batch-size", "8", "--max-steps", "40", "--eval-every", "10"]
    assert run_main(finetune_main, [*common, "--lr", "1e-9,5e-3", "--out", str(tmp_path / "ft")]) == 0
    ft = tmp_path / "ft"
    sweep = json.loads((ft / "lr_sweep.json").read_text())
    before, after = (c["metrics"] for c in sweep["lrs"])
    assert sweep["best_lr"] == 5e-3 and after["f1"] >= before["f1"] + 30, (before, after)
    assert [e["step"] for e in sweep["lrs"][1]["evals"]] == [10, 20, 30, 40]  # 4 evaluations per cell
    assert json.loads((ft / "eval.json").read_text()) == pytest.approx(mrqa_files(path, ft / "predictions.json").metrics)
    with gzip.open(path, "rt") as f:
        assert f.readline().startswith('{"header"')
