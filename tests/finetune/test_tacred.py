"""TACRED: the official micro P/R/F1 on hand-worked cases, the reference's marker input hand-worked, the
label order, and `python -m finetune tacred` fitting a learnable toy set in TACRED's JSON layout."""

from __future__ import annotations

import json

import pytest

from contract.cli import run_main
from contract.tokenizer import load_tokenizer, read_vocabulary
from finetune.__main__ import main as finetune_main
from finetune.data import SquadError
from finetune.evaluate_tacred import evaluate_files, score_relations
from finetune.evaluate_tacred import main as tacred_main
from finetune.tacred import Example, Markers, encode, label_list, load_tacred


@pytest.mark.parametrize("gold, pred, expected", [
    # guessed 3 (A, A, B), gold 3 (A, A, B), correct 2 -> P = R = F1 = 2/3
    (["no_relation", "A", "A", "B", "no_relation"], ["A", "A", "no_relation", "B", "no_relation"], (200 / 3, 200 / 3, 200 / 3)),
    # nothing guessed: score.py's precision 1.0, recall 0, F1 0
    (["A", "B"], ["no_relation", "no_relation"], (100.0, 0.0, 0.0)),
    # a wrong relation counts as guessed and not correct: P 1/2, R 1/2
    (["A", "B", "no_relation"], ["A", "A", "no_relation"], (50.0, 50.0, 50.0)),
    # no gold relation: recall 0; guessed 1, correct 0
    (["no_relation"], ["A"], (0.0, 0.0, 0.0)),
    # P 1/1, R 1/3 -> F1 = 2 * 1 * 1/3 / (4/3) = 1/2
    (["A", "B", "C"], ["A", "no_relation", "no_relation"], (100.0, 100 / 3, 50.0)),
])
def test_official_micro_scores_hand_worked(gold, pred, expected):
    s = score_relations(gold, pred)
    assert (s.precision, s.recall, s.f1) == pytest.approx(expected)


def ex(i, tokens, subj, obj, st, ot, rel):
    return {"id": f"e{i}", "token": tokens, "subj_start": subj[0], "subj_end": subj[1], "obj_start": obj[0],
            "obj_end": obj[1], "subj_type": st, "obj_type": ot, "relation": rel}


def test_scorer_cli_and_bad_input(tmp_path, capsys):
    gold = [ex(0, ["a", "b"], (0, 0), (1, 1), "P", "O", r) for r in ("A", "no_relation", "B")]
    (tmp_path / "g.json").write_text(json.dumps(gold))
    (tmp_path / "p.txt").write_text("A\nA\nno_relation\n")
    assert run_main(tacred_main, [str(tmp_path / "g.json"), str(tmp_path / "p.txt")]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx({"precision": 50.0, "recall": 50.0, "f1": 50.0})
    (tmp_path / "short.txt").write_text("A\n")
    assert run_main(tacred_main, [str(tmp_path / "g.json"), str(tmp_path / "short.txt")]) == 2
    assert "1 labels for the 3 examples" in capsys.readouterr().err
    with pytest.raises(SquadError, match="not TACRED"):
        (tmp_path / "obj.json").write_text(json.dumps({"relation": "A"}))
        evaluate_files(tmp_path / "obj.json", tmp_path / "p.txt")


def test_marker_input_hand_worked(tmp_path, squad_vocab):
    """Entities replaced by one [unusedN] marker each, numbered after the reference's four text markers in
    order of first use; PTB brackets converted; cut at max_len."""
    vocab = read_vocabulary(squad_vocab)
    tok = load_tokenizer(squad_vocab)
    idx = {t: i for i, t in enumerate(vocab.tokens)}
    a = Example("a", ("Bill", "Gates", "founded", "Microsoft", "-LRB-", "x", "-RRB-"), (0, 1), (3, 3), "PERSON", "ORGANIZATION", "r")
    b = Example("b", ("Acme", "hired", "Ann"), (2, 2), (0, 0), "PERSON", "CITY", "r")  # object first
    markers = Markers()
    ids = encode([a, b], tok, vocab, markers, max_len=128)
    piece = lambda w: tok.encode(w, add_special_tokens=False).ids  # noqa: E731
    assert ids[0].tolist() == [idx["[CLS]"], idx["[unused5]"], *piece("founded"), idx["[unused6]"], *piece("("), *piece("x"),
                               *piece(")"), idx["[SEP]"]]
    assert ids[1].tolist() == [idx["[CLS]"], idx["[unused7]"], *piece("hired"), idx["[unused5]"], idx["[SEP]"]]
    assert markers.tokens == {"SUBJ_START": "[unused1]", "SUBJ_END": "[unused2]", "OBJ_START": "[unused3]",
                              "OBJ_END": "[unused4]", "SUBJ=PERSON": "[unused5]", "OBJ=ORGANIZATION": "[unused6]",
                              "OBJ=CITY": "[unused7]"}
    assert encode([a], tok, vocab, markers, max_len=4)[0].tolist() == ids[0][:4].tolist()


def test_labels_and_bad_files(tmp_path):
    train = [Example(str(i), ("a", "b"), (0, 0), (1, 1), "P", "O", r) for i, r in enumerate(["B", "A", "A", "no_relation", "C", "C", "C"])]
    assert label_list(train) == ["no_relation", "C", "A", "B"]
    for bad, message in (([ex(0, ["a", "b"], (0, 1), (1, 1), "P", "O", "r")], "overlap"),
                         ([ex(0, ["a", "b"], (0, 0), (1, 2), "P", "O", "r")], "not inside"),
                         ([{"id": "x"}], "not TACRED")):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(SquadError, match=message):
            load_tacred(tmp_path / "bad.json")


def toy_set():
    """Learnable: the relation is the verb between the entities (and no_relation for 'and')."""
    people, places = ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"], ["Paris", "Rome", "Oslo", "Lima"]
    rows = []
    for i in range(24):
        p, q = people[i % 6], places[i % 4]
        verb, rel = [("lives in", "per:cities_of_residence"), ("was born in", "per:city_of_birth"),
                     ("and", "no_relation")][i % 3]
        words = [p, *verb.split(), q, "."]
        rows.append(ex(i, words, (0, 0), (len(words) - 2, len(words) - 2), "PERSON", "CITY", rel))
    return rows


@pytest.mark.slow
def test_tacred_end_to_end_fits_a_toy_set(tmp_path, tiny_hf_dir):
    (tmp_path / "toy.json").write_text(json.dumps(toy_set()))
    toy = str(tmp_path / "toy.json")
    assert run_main(finetune_main, ["tacred", "--model", str(tiny_hf_dir), "--train", toy, "--dev", toy, "--batch-size", "8",
                                    "--max-steps", "60", "--eval-every", "20", "--lr", "1e-9,5e-3", "--save-model",
                                    "--max-seq-length", "32", "--out", str(tmp_path / "ft")]) == 0
    ft = tmp_path / "ft"
    sweep = json.loads((ft / "lr_sweep.json").read_text())
    assert sweep["best_lr"] == 5e-3 and sweep["best"]["f1"] >= 95, sweep
    assert sweep["lrs"][0]["metrics"]["f1"] < 70
    assert evaluate_files(toy, ft / "predictions.txt").metrics() == pytest.approx(json.loads((ft / "eval.json").read_text()))
    info = json.loads((ft / "spanbert_tacred.json").read_text())
    assert info["labels"][0] == "no_relation" and info["markers"]["SUBJ=PERSON"] == "[unused5]"
    from transformers import BertForSequenceClassification

    model, loading = BertForSequenceClassification.from_pretrained(ft / "model", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert model.config.id2label[0] == "no_relation" and json.loads((ft / "model" / "spanbert_tacred.json").read_text())["markers"]
