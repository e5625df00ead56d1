"""python -m finetune.evaluate_tacred GOLD.json PRED.txt

TACRED's official scoring (score.py of the TACRED release, our code): micro precision, recall and F1
over the relations other than `no_relation`, in percent. PRED.txt holds one label per line, in GOLD's
order (GOLD is a TACRED-layout JSON list; only its `relation` fields are read).

As score.py: a prediction counts as guessed when it is not no_relation, as correct when it also equals
a gold that is not no_relation; precision is 100 when nothing is guessed (score.py's 1.0), recall 0 when
no gold relation exists, F1 0 when both are 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from contract.cli import run_main
from finetune.data import SquadError, read_json

NO_RELATION = "no_relation"


@dataclass(frozen=True)
class RelationScore:
    precision: float  # percent
    recall: float
    f1: float
    guessed: int  # predictions other than no_relation
    gold: int  # golds other than no_relation
    correct: int

    def metrics(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}


def score_relations(gold: list[str], predicted: list[str], negative: str = NO_RELATION) -> RelationScore:
    if len(gold) != len(predicted):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold examples")
    guessed = sum(p != negative for p in predicted)
    n_gold = sum(g != negative for g in gold)
    correct = sum(p == g and g != negative for g, p in zip(gold, predicted, strict=True))
    precision = correct / guessed if guessed else 1.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return RelationScore(100 * precision, 100 * recall, 100 * f1, guessed, n_gold, correct)


def gold_relations(path: str | Path) -> list[str]:
    raw = read_json(path)
    if not isinstance(raw, list) or not all(isinstance(x, dict) and isinstance(x.get("relation"), str) for x in raw):
        raise SquadError(f"{path}: not TACRED JSON (expected a list of examples, each with a `relation`)")
    return [x["relation"] for x in raw]


def read_labels(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise SquadError(f"{path}: no such file")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate_files(gold_file: str | Path, pred_file: str | Path) -> RelationScore:
    gold, predicted = gold_relations(gold_file), read_labels(pred_file)
    if len(gold) != len(predicted):
        raise SquadError(f"{pred_file}: {len(predicted)} labels for the {len(gold)} examples of {gold_file}")
    return score_relations(gold, predicted)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.evaluate_tacred", description=__doc__.split("\n\n")[1])
    p.add_argument("gold_file", help="TACRED-layout JSON (a list of examples with `relation`)")
    p.add_argument("pred_file", help="one predicted label per line, in the gold file's order")
    args = p.parse_args(argv)
    print(json.dumps(evaluate_files(args.gold_file, args.pred_file).metrics()))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
