"""python -m finetune.evaluate_mrqa DATA.jsonl.gz PRED.json [--skip-no-answer]

The MRQA shared task's official scoring (mrqa_official_eval.py behaviour, our code): SQuAD v1.1's EM and
token F1 over each question's `answers`, the same normalisation (finetune.evaluate_squad), max over
answers. Prints {"exact_match": ..., "f1": ...} in percent.

A question without a prediction scores 0 and stays in the total (as the official script), unless
--skip-no-answer; either way the count is reported on stderr. Prediction ids not in DATA are an error
(the official script ignores them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from contract.cli import run_main
from finetune.evaluate_squad import Scored, read_predictions, score_golds
from finetune.mrqa import MrqaSet, load_mrqa


def score_mrqa(data: MrqaSet, predictions: dict[str, str], skip_no_answer: bool = False) -> Scored:
    golds = data.gold_pairs()
    if skip_no_answer:
        golds = [g for g in golds if g[0] in predictions]
    return score_golds(golds, predictions, "mrqa")


def evaluate_files(data_file: str | Path, pred_file: str | Path, skip_no_answer: bool = False) -> Scored:
    data = load_mrqa(data_file, training=False)
    predictions = read_predictions(pred_file, [g.qid for g in data.golds], data_file)
    return score_mrqa(data, predictions, skip_no_answer)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.evaluate_mrqa", description=__doc__.split("\n\n")[1])
    p.add_argument("data_file", help="MRQA gzipped JSONL (header line first)")
    p.add_argument("pred_file", help="predictions JSON: question id -> answer text")
    p.add_argument("--skip-no-answer", action="store_true", help="leave questions without a prediction out of the total")
    args = p.parse_args(argv)
    scored = evaluate_files(args.data_file, args.pred_file, args.skip_no_answer)
    if scored.missing and not args.skip_no_answer:
        print(f"{args.pred_file}: warning: {scored.missing} question(s) have no prediction: counted wrong "
              "(the official rule)", file=sys.stderr)
    print(json.dumps(scored.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
