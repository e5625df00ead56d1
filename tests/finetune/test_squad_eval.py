"""The scorer against hand-worked cases pinned to evaluate-v1.1.py / evaluate-v2.0.py behaviour."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from finetune.data import SquadError, load_squad
from finetune.evaluate_squad import (
    evaluate_files,
    exact_match,
    f1_v1,
    f1_v2,
    main,
    normalize_answer,
    score_v1,
    score_v2,
)


def squad_file(tmp_path, questions, version="1.1", name="data.json"):
    """questions: (id, [answer texts]) on one context holding every answer text."""
    texts = [t for _, answers in questions for t in answers]
    context = " | ".join(texts) or "nothing"
    qas = []
    for qid, answers in questions:
        qa = {"id": qid, "question": f"q {qid}?",
              "answers": [{"text": t, "answer_start": context.index(t)} for t in answers]}
        if version == "2.0":
            qa["is_impossible"] = not answers
        qas.append(qa)
    path = tmp_path / name
    path.write_text(json.dumps({"version": version, "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}))
    return path


@pytest.mark.parametrize("raw, expected", [
    ("The  Quick, brown fox!", "quick brown fox"),
    ("an apple a day", "apple day"),
    ("theatre athens", "theatre athens"),  # articles only as whole words
    ("A-team", "ateam"),  # punctuation goes BEFORE articles: the official order (else "team")
    ("the", ""),
    ("Émile's\tcafé", "émiles café"),  # only ASCII string.punctuation, any whitespace
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_token_f1_hand_worked():
    # pred tokens [cat sat on mat], gold [cat on mat]: P 3/4, R 1, F1 = 2*.75/1.75
    assert f1_v1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    assert f1_v2("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # tokens count with multiplicity (a multiset intersection)
    assert f1_v1("dog dog cat", "dog cat cat") == pytest.approx(2 / 3)  # common {dog:1, cat:1}=2, P=R=2/3
    assert f1_v1("red", "blue") == 0.0


def test_v1_and_v2_differ_on_empty_normalised_answers():
    # v1.1: both normalise to "", so EM 1 but F1 0 (no shared token); v2.0: both empty -> F1 1.
    assert exact_match("The", "the") == 1
    assert f1_v1("The", "the") == 0.0
    assert f1_v2("The", "the") == 1.0
    assert f1_v2("", "") == 1.0 and f1_v2("x", "") == 0.0 and f1_v2("", "x") == 0.0


def test_v1_max_over_golds_and_missing_counts_wrong(tmp_path):
    data = load_squad(squad_file(tmp_path, [("a", ["Denver Broncos", "the Broncos"]), ("b", ["Santa Clara"])]))
    # "Broncos" vs gold 1: P 1, R 1/2 -> 2/3; vs gold 2 ("broncos"): exact. Max -> EM 1, F1 1. "b" missing -> 0.
    scored = score_v1(data, {"a": "Broncos"})
    assert scored.metrics == {"exact_match": 50.0, "f1": 50.0}
    assert scored.missing == 1
    assert list(scored.metrics) == ["exact_match", "f1"]


def test_v2_missing_leaves_total_and_golds_that_normalise_to_nothing_are_dropped(tmp_path):
    data = load_squad(squad_file(tmp_path, [("a", ["Paris"]), ("b", ["Rome"]), ("c", [])], version="2.0"))
    scored = score_v2(data, {"a": "paris.", "c": ""})
    assert scored.missing == 1
    assert scored.metrics["total"] == 2 and scored.metrics["exact"] == 100.0
    assert scored.metrics["HasAns_total"] == 1 and scored.metrics["NoAns_total"] == 1


def test_v2_threshold_sweep_hand_worked(tmp_path):
    # q1 answerable, right; q2 unanswerable, answered "x"; q3 answerable, partly right; q4 unanswerable, "".
    data = load_squad(squad_file(tmp_path, [("q1", ["Paris"]), ("q2", []), ("q3", ["big red dog"]), ("q4", [])], "2.0"))
    preds = {"q1": "Paris", "q2": "x", "q3": "red dog", "q4": ""}
    na = {"q1": 0.1, "q2": 2.0, "q3": 0.3, "q4": 0.4}
    m = score_v2(data, preds, na).metrics
    # Default threshold 1.0: only q2 (2.0 > 1.0) is predicted no-answer -> scores 1 (it is unanswerable).
    # exact: q1 1, q2 1, q3 0, q4 1 = 3/4; f1: q3 = 2*(1*2/3)/(1+2/3) = 0.8 -> 3.8/4.
    assert m["exact"] == 75.0 and m["f1"] == pytest.approx(95.0) and m["total"] == 4
    assert m["HasAns_exact"] == 50.0 and m["HasAns_f1"] == pytest.approx(90.0) and m["NoAns_exact"] == 100.0
    # Sweep in na order q1 .1, q3 .3, q4 .4, q2 2.0, starting from 2 (both unanswerable right):
    # exact: 2 -> +1 = 3 (at .1) -> +0 -> +0 -> -1 (q2's raw "x") = 2: best 3/4 at 0.1.
    # f1:    2 -> 3 (at .1) -> 3.8 (at .3) -> 3.8 -> 2.8:             best 3.8/4 at 0.3.
    assert m["best_exact"] == 75.0 and m["best_exact_thresh"] == 0.1
    assert m["best_f1"] == pytest.approx(95.0) and m["best_f1_thresh"] == 0.3
    assert list(m) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact",
                       "NoAns_f1", "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]


def test_v2_sweep_counts_a_raw_answer_that_normalises_to_nothing_as_wrong(tmp_path):
    data = load_squad(squad_file(tmp_path, [("q1", []), ("q2", ["Oslo"])], "2.0"))
    preds = {"q1": "the", "q2": "Oslo"}  # "the" normalises to "": raw exact 1 for q1
    m = score_v2(data, preds, {"q1": 0.5, "q2": 0.7}).metrics
    assert m["exact"] == 100.0
    # sweep: start 1 (q1 right as no-answer); q1 raw "the" is non-empty: -1 -> 0; q2 +1 -> 1: never beats 1.
    assert m["best_exact"] == 50.0 and m["best_exact_thresh"] == 0.0


def test_cli_prints_official_json_and_reports_missing(tmp_path, capsys):
    data = squad_file(tmp_path, [("a", ["Denver Broncos"]), ("b", ["Santa Clara"]), ("c", ["Levi's Stadium"])])
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"a": "Denver Broncos", "b": "Clara"}))
    assert main([str(data), str(pred)]) == 0
    out, err = capsys.readouterr()
    m = json.loads(out)
    assert m["exact_match"] == pytest.approx(100 / 3) and m["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert "1 question(s) have no prediction" in err and "counted wrong" in err


@pytest.mark.parametrize("content, message", [
    ("not json", "not JSON"),
    ('{"data": 3}', "not SQuAD JSON"),
    ('{"data": [{"title": "T", "paragraphs": [{"context": "abc", "qas": [{"id": "x", "question": "?", "answers": '
     '[{"text": "abc", "answer_start": 0}]}, {"id": "x", "question": "?", "answers": [{"text": "b", "answer_start": 1}]}]}]}]}',
     "question id 'x' occurs twice"),
    ('{"data": [{"title": "T", "paragraphs": [{"context": "abc", "qas": [{"id": "x", "question": "?", "answers": '
     '[{"text": "zz", "answer_start": 0}]}]}]}]}', "is not in its context"),
])
def test_bad_data_file_is_one_error_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SquadError, match=message) as e:
        load_squad(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_input_exit_2(tmp_path):
    data = squad_file(tmp_path, [("a", ["x"])])
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"zz": "x"}))
    r = subprocess.run([sys.executable, "-m", "finetune.evaluate_squad", str(data), str(pred)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and str(pred) in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_evaluate_files_v2_na_prob_file(tmp_path):
    data = squad_file(tmp_path, [("q1", ["Paris"]), ("q2", [])], "2.0")
    (tmp_path / "p.json").write_text(json.dumps({"q1": "Paris", "q2": ""}))
    (tmp_path / "n.json").write_text(json.dumps({"q1": 0.2, "q2": 0.9}))
    m = evaluate_files(data, tmp_path / "p.json", tmp_path / "n.json").metrics
    assert m["exact"] == 100.0 and m["best_exact"] == 100.0 and m["best_exact_thresh"] == 0.2
