"""python -m finetune {squad,mrqa,tacred} --model RUN_DIR|CHECKPOINT|HF_BERT_DIR --train FILE --dev FILE --out DIR [options]

Fine-tune a pre-trained encoder on SQuAD 1.1 / 2.0, an MRQA set or TACRED and score it with the official
metrics (docs/finetune.md). The same command runs under `torchrun --nproc_per_node=N -m finetune ...`.
Related: `python -m finetune.split FILE --out DIR`, `python -m finetune.evaluate_squad DATA PRED`,
`python -m finetune.evaluate_mrqa DATA.jsonl.gz PRED.json`, `python -m finetune.evaluate_tacred GOLD.json PRED.txt`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.cli import run_main
from finetune.decode import DecodeConfig
from finetune.features import FeatureConfig
from finetune.loop import LoopConfig
from finetune.optim import OptimizerKind


def _numbers(kind: type, flag: str, example: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected comma-separated numbers, e.g. {example}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected positive numbers")
        return values
    return parse


# Per task: the reference's defaults (Appendix B; run_squad.py / run_mrqa.py / run_tacred.py).
DEFAULTS = {
    "squad": {"epochs": 4.0, "eval_every": 0.1, "max_seq_length": 512},
    "mrqa": {"epochs": 4.0, "eval_every": 0.2, "max_seq_length": 512},
    "tacred": {"epochs": 3.0, "eval_every": 0.1, "max_seq_length": 128},
}


def _common(p: argparse.ArgumentParser, task: str) -> None:
    dflt = DEFAULTS[task]
    p.add_argument("--model", required=True, help="run directory, checkpoint file (step-N.pt) or transformers BERT directory")
    p.add_argument("--out", required=True, type=Path, help="predictions, eval.json, config.json, metrics.jsonl, "
                   "evals.jsonl, lr_sweep.json, one directory per (batch size, lr) cell")
    p.add_argument("--lr", type=_numbers(float, "--lr", "1e-5,2e-5"), default=(2e-5,),
                   help="peak learning rate(s), comma-separated (paper: 5e-6,1e-5,2e-5,3e-5,5e-5); default 2e-5")
    p.add_argument("--batch-size", type=_numbers(int, "--batch-size", "16,32"), default=(32,),
                   help="global batch(es) over all ranks, comma-separated: a grid with --lr, every cell reported "
                        "(paper: 16,32); default 32")
    p.add_argument("--epochs", type=float, default=dflt["epochs"], help=f"default {dflt['epochs']:g} (the reference)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (overrides --epochs)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="also stop each cell after this much training time (dev evaluations not counted)")
    p.add_argument("--eval-every", type=float, default=dflt["eval_every"],
                   help="score dev every N steps (N >= 1) or every fraction N of an epoch (N < 1), and at the end; "
                        f"0 = at the end only; the best evaluation is kept (default {dflt['eval_every']:g}: the reference's "
                        f"{round(1 / dflt['eval_every'])} per epoch)")
    p.add_argument("--optimizer", choices=[k.value for k in OptimizerKind], default=OptimizerKind.ADAMW.value,
                   help="adamw (bias-corrected, global clipping; default) or bertadam (the reference's: no bias "
                        "correction, per-parameter clipping)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up share of the steps (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seq-length", type=int, default=dflt["max_seq_length"])
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--vocab", help="vocabulary for a run dir / checkpoint that has none beside it")
    p.add_argument("--data", help="the run's shard directory (its manifest names the vocabulary)")
    p.add_argument("--save-model", action="store_true",
                   help="write the best evaluation's model to OUT/model (a transformers directory)")


def _qa(p: argparse.ArgumentParser) -> None:
    p.add_argument("--doc-stride", type=int, default=128, help="pieces between window starts (BERT's doc_stride)")
    p.add_argument("--max-query-length", type=int, default=64)
    p.add_argument("--n-best", type=int, default=20)
    p.add_argument("--max-answer-length", type=int, default=30, help="in word pieces")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune", description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="task", required=True)
    sq = sub.add_parser("squad", help="fine-tune and score on SQuAD 1.1 / 2.0",
                        description="Fine-tune on SQuAD (paper Appendix B defaults) and score the dev file.")
    sq.add_argument("--train", required=True, help="SQuAD JSON to train on (e.g. train.json of python -m finetune.split)")
    sq.add_argument("--dev", required=True, help="SQuAD JSON to predict and score")
    sq.add_argument("--version", choices=("1.1", "2.0"), help="default: 2.0 if the train file has is_impossible")
    mr = sub.add_parser("mrqa", help="fine-tune and score on an MRQA set (gzipped JSONL)",
                        description="Fine-tune on an MRQA shared-task file and score the dev file (MRQA official EM / F1).")
    mr.add_argument("--train", required=True, help="MRQA .jsonl.gz to train on")
    mr.add_argument("--dev", required=True, help="MRQA .jsonl.gz to predict and score")
    tc = sub.add_parser("tacred", help="fine-tune and score on TACRED (JSON)",
                        description="Fine-tune a relation classifier on TACRED's JSON layout and score micro P/R/F1.")
    tc.add_argument("--train", required=True, help="TACRED-layout JSON to train on")
    tc.add_argument("--dev", required=True, help="TACRED-layout JSON to predict and score")
    for task, sp in (("squad", sq), ("mrqa", mr), ("tacred", tc)):
        _common(sp, task)
        if task != "tacred":
            _qa(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loop = LoopConfig(lrs=args.lr, batch_sizes=args.batch_size, epochs=args.epochs, max_steps=args.max_steps,
                      warmup=args.warmup, weight_decay=args.weight_decay, optimizer=OptimizerKind(args.optimizer),
                      eval_every=args.eval_every, seed=args.seed, max_minutes=args.max_minutes, save_model=args.save_model)
    if args.task == "tacred":
        from finetune.tacred import TacredConfig  # after parsing: --help stays fast
        from finetune.tacred import run as run_tacred

        run_tacred(TacredConfig(model=args.model, train=args.train, dev=args.dev, loop=loop, max_seq_length=args.max_seq_length,
                                eval_batch_size=args.eval_batch_size, vocab=args.vocab, data=args.data), args.out)
        return 0
    from finetune.squad import FinetuneConfig, run

    run(FinetuneConfig(model=args.model, train=args.train, dev=args.dev, task=args.task, version=getattr(args, "version", None),
                       loop=loop, eval_batch_size=args.eval_batch_size, vocab=args.vocab, data=args.data,
                       features=FeatureConfig(args.max_seq_length, args.doc_stride, args.max_query_length),
                       decoding=DecodeConfig(args.n_best, args.max_answer_length)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
