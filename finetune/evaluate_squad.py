"""python -m finetune.evaluate_squad DATA_FILE PREDICTIONS [--na-prob-file F] [--version 1.1|2.0]

The official SQuAD scoring (evaluate-v1.1.py / evaluate-v2.0.py behaviour, our own code): prints the same
JSON. An answer is normalised by lower-casing, removing punctuation (string.punctuation), the words
a / an / the, and extra whitespace; EM and token F1 take the max over the gold answers.

Missing predictions are scored as the official scripts score them: v1.1 counts the question wrong (it
stays in the total); v2.0 leaves it out of `total`. Either way we say how many were missing on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from contract.cli import run_main
from finetune.data import SquadError, SquadSet, load_squad, read_json

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop a/an/the, collapse whitespace (in the official order)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_v1(prediction: str, gold: str) -> float:
    """v1.1 token F1: 0 when nothing is shared (so an empty prediction never scores)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1_v2(prediction: str, gold: str) -> float:
    """v2.0 token F1: when either side is empty, 1 if both are, else 0 (so "" matches an unanswerable)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Scored:
    """The metrics dict (official keys, official order) and how many questions had no prediction."""

    metrics: dict[str, float | int]
    missing: int
    version: str


def score_golds(golds: list[tuple[str, list[str]]], predictions: dict[str, str], version: str = "1.1") -> Scored:
    """EM / F1 as evaluate-v1.1.py (and the MRQA scorer, which is its copy): per question the max over its
    gold texts; a question without a prediction scores 0 and stays in the total."""
    em = f1 = 0.0
    missing = 0
    for qid, texts in golds:
        if qid not in predictions:
            missing += 1
            continue
        em += max(exact_match(predictions[qid], g) for g in texts)
        f1 += max(f1_v1(predictions[qid], g) for g in texts)
    total = len(golds)
    return Scored({"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}, missing, version)


def score_v1(data: SquadSet, predictions: dict[str, str]) -> Scored:
    return score_golds([(q.qid, [a.text for a in q.answers]) for q in data.questions], predictions)


def score_v2(data: SquadSet, predictions: dict[str, str], na_probs: dict[str, float] | None = None,
             na_prob_thresh: float = 1.0) -> Scored:
    has_ans = {q.qid: not q.is_impossible for q in data.questions}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for q in data.questions:
        if q.qid not in predictions:
            continue  # leaves the total, as evaluate-v2.0.py
        # Golds that normalise to "" do not count; none left = unanswerable, gold "".
        golds = [a.text for a in q.answers if normalize_answer(a.text)] or [""]
        pred = predictions[q.qid]
        exact_raw[q.qid] = max(exact_match(pred, g) for g in golds)
        f1_raw[q.qid] = max(f1_v2(pred, g) for g in golds)
    missing = len(data.questions) - len(exact_raw)
    if not exact_raw:
        raise SquadError(f"{data.path}: no question has a prediction")
    probs = na_probs if na_probs is not None else {k: 0.0 for k in predictions}

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        # Predicted no-answer (prob above the threshold) scores 1 exactly when the question is unanswerable.
        return {k: float(not has_ans[k]) if probs[k] > na_prob_thresh else v for k, v in raw.items()}

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)
    out: dict[str, float | int] = _block(exact, f1, list(exact))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        # evaluate-v2.0.py raises KeyError here when a prediction is missing; we score the present ones.
        ids = [k for k in exact if has_ans[k] == wanted]
        if any(has_ans[q.qid] == wanted for q in data.questions) and ids:
            out.update({f"{prefix}_{k}": v for k, v in _block(exact, f1, ids).items()})
    if na_probs is not None:
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            best, thresh = best_threshold(predictions, raw, na_probs, has_ans)
            out[f"best_{name}"], out[f"best_{name}_thresh"] = best, thresh
    return Scored(out, missing, "2.0")


def _block(exact: dict[str, float], f1: dict[str, float], ids: list[str]) -> dict[str, float | int]:
    return {"exact": 100.0 * sum(exact[k] for k in ids) / len(ids), "f1": 100.0 * sum(f1[k] for k in ids) / len(ids),
            "total": len(ids)}


def best_threshold(predictions: dict[str, str], scores: dict[str, float], na_probs: dict[str, float],
                   has_ans: dict[str, bool]) -> tuple[float, float]:
    """The official sweep: start from "every question predicted no-answer" (all unanswerable questions of
    the data file right), then admit questions in increasing na_prob order; an admitted answerable
    question adds its score, an unanswerable one loses 1 if its *raw* prediction is non-empty. Returns
    (100 * best / scored questions, the na_prob where the best was first reached; 0.0 if never beaten)."""
    cur = best = float(sum(not v for v in has_ans.values()))
    thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):  # stable: ties keep the file's order
        if qid not in scores:
            continue
        if has_ans[qid]:
            cur += scores[qid]
        elif predictions[qid]:
            cur -= 1
        if cur > best:
            best, thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), thresh


def evaluate_files(data_file: str | Path, pred_file: str | Path, na_prob_file: str | Path | None = None,
                   version: str | None = None) -> Scored:
    data = load_squad(data_file, version, check_answers=False)  # the official scorers read ids and texts only
    predictions = read_predictions(pred_file, data.qids, data_file)
    na_probs = _read_mapping(na_prob_file, float) if na_prob_file else None
    if data.version == "1.1":
        if na_probs is not None:
            raise SquadError(f"{na_prob_file}: a no-answer probability file for a SQuAD 1.1 data file")
        return score_v1(data, predictions)
    if na_probs is not None:
        lacking = [k for k in predictions if k not in na_probs]
        if lacking:
            raise SquadError(f"{na_prob_file}: no probability for {len(lacking)} predicted id(s), e.g. {lacking[0]!r}")
    return score_v2(data, predictions, na_probs)


def read_predictions(pred_file: str | Path, qids: list[str], data_file: str | Path) -> dict[str, str]:
    """A predictions JSON (id -> text) whose ids are all questions of the data file."""
    predictions = _read_mapping(pred_file, str)
    unknown = sorted(set(predictions) - set(qids))
    if unknown:
        raise SquadError(f"{pred_file}: {len(unknown)} prediction id(s) not in {data_file}, e.g. {unknown[0]!r}")
    return predictions


def _read_mapping(path: str | Path, kind: type) -> dict:
    raw = read_json(path)
    if not isinstance(raw, dict) or not all(isinstance(v, kind) or (kind is float and isinstance(v, int))
                                           for v in raw.values()):
        raise SquadError(f"{path}: expected a JSON object of question id -> {kind.__name__}")
    return {str(k): kind(v) for k, v in raw.items()}


def missing_note(missing: int, version: str) -> str:
    how = "counted wrong (v1.1 rule)" if version == "1.1" else "left out of the total (v2.0 rule)"
    return f"warning: {missing} question(s) have no prediction: {how}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.evaluate_squad", description=__doc__.split("\n\n")[1])
    p.add_argument("data_file", help="SQuAD 1.1 or 2.0 JSON (version from is_impossible, or --version)")
    p.add_argument("pred_file", help="predictions JSON: question id -> answer text ('' = no answer)")
    p.add_argument("--na-prob-file", "-n", help="v2.0: question id -> no-answer probability (best_* thresholds)")
    p.add_argument("--version", choices=("1.1", "2.0"), help="override version detection")
    args = p.parse_args(argv)
    try:
        scored = evaluate_files(args.data_file, args.pred_file, args.na_prob_file, args.version)
    except SquadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if scored.missing:
        print(f"{args.pred_file}: {missing_note(scored.missing, scored.version)}", file=sys.stderr)
    print(json.dumps(scored.metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
