"""python -m finetune squad --model RUN_DIR|CHECKPOINT|HF_BERT_DIR --train FILE --dev FILE --out DIR [options]

Fine-tune a pre-trained encoder on SQuAD 1.1 / 2.0 and score it with the official metrics
(docs/finetune.md). The same command runs under `torchrun --nproc_per_node=N -m finetune squad ...`.
Related: `python -m finetune.split FILE --out DIR`, `python -m finetune.evaluate_squad DATA PRED`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.cli import run_main
from finetune.decode import DecodeConfig
from finetune.features import FeatureConfig


def _lrs(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr {text!r}: expected comma-separated numbers, e.g. 1e-5,2e-5") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"--lr {text!r}: expected positive numbers")
    return values


def squad_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("squad", help="fine-tune and score on SQuAD 1.1 / 2.0",
                       description="Fine-tune on SQuAD (paper Appendix B defaults) and score the dev file.")
    p.add_argument("--model", required=True, help="run directory, checkpoint file (step-N.pt) or transformers BERT directory")
    p.add_argument("--train", required=True, help="SQuAD JSON to train on (e.g. train.json of python -m finetune.split)")
    p.add_argument("--dev", required=True, help="SQuAD JSON to predict and score")
    p.add_argument("--out", required=True, type=Path,
                   help="predictions.json, na_prob.json (2.0), eval.json, config.json, metrics.jsonl, lr_sweep.json")
    p.add_argument("--version", choices=("1.1", "2.0"), help="default: 2.0 if the train file has is_impossible")
    p.add_argument("--lr", type=_lrs, default=(2e-5,), help="peak learning rate(s), comma-separated (paper: "
                   "5e-6,1e-5,2e-5,3e-5,5e-5); each is trained and scored, the best is reported (default 2e-5)")
    p.add_argument("--epochs", type=float, default=4.0, help="default 4 (paper)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (overrides --epochs)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="also stop each --lr value after this much training time")
    p.add_argument("--batch-size", type=int, default=32, help="global batch, over all ranks (default 32, paper)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up share of the steps (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--doc-stride", type=int, default=128, help="pieces between window starts (BERT's doc_stride)")
    p.add_argument("--max-query-length", type=int, default=64)
    p.add_argument("--n-best", type=int, default=20)
    p.add_argument("--max-answer-length", type=int, default=30, help="in word pieces")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--vocab", help="vocabulary for a run dir / checkpoint that has none beside it")
    p.add_argument("--data", help="the run's shard directory (its manifest names the vocabulary)")
    p.add_argument("--save-model", action="store_true",
                   help="write the best --lr model to OUT/model (transformers BertForQuestionAnswering)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune", description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="task", required=True)
    squad_parser(sub)
    args = p.parse_args(argv)
    from finetune.squad import FinetuneConfig, run  # after parsing: --help stays fast

    cfg = FinetuneConfig(
        model=args.model, train=args.train, dev=args.dev, version=args.version, lrs=args.lr, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, warmup=args.warmup, weight_decay=args.weight_decay,
        seed=args.seed, eval_batch_size=args.eval_batch_size, vocab=args.vocab, data=args.data,
        max_minutes=args.max_minutes, save_model=args.save_model,
        features=FeatureConfig(args.max_seq_length, args.doc_stride, args.max_query_length),
        decoding=DecodeConfig(args.n_best, args.max_answer_length),
    )
    run(cfg, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
