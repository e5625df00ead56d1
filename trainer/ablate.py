"""`make ablate` / `python -m trainer.ablate --data SHARDS`: the paper's ablation grid on ONE set of shards.

Rows (paper §5–6):
- Table 6, masking schemes, each "based on bi-sequence training with NSP" as in the paper:
  subword tokens, whole words, named entities, noun phrases, geometric spans;
- Table 7, objectives on top of span masking: 2seq + NSP (= Table 6's geometric row), 1seq, 1seq + SBO;
- the systems compared in Tables 1–5: Google BERT (subword + NSP = Table 6's subword row; "Our BERT" is
  the same objective better tuned, so the same row here), Our BERT-1seq (subword, one sequence, no NSP),
  SpanBERT (geometric, 1seq + SBO = Table 7's last row).
That is 8 distinct trainings. Every row uses the same shards, the same held-out documents, the same
steps, model size and seed; only masking scheme and objectives change.

Each row is evaluated twice on the held-out documents (trainer/evaluate.py, fixed masks): with its own
masking scheme (its training task) and with the same geometric span masks for every row (one yardstick:
span prediction, the paper's thesis). Results: results.json, results.md, loss_curves.png, and
span_lengths.png (the shards' geometric masking against the paper's Fig. 2).

With `--downstream squad2` every row's checkpoint is also fine-tuned on SQuAD 2.0 (`python -m finetune
squad`, on an article split of --squad-file, by default ../shared/data/squad/dev-v2.0.json) and scored with
the official v2.0 metric: EM / F1 columns beside the held-out MLM loss, as the paper's Tables 6 and 7
rank rows (threshold tuned on the held-out half: the official best_exact / best_f1).

Runs are resumable: re-running the command continues unfinished rows (`--resume auto`) and skips
finished ones, so a long GPU ablation survives interruption.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.config import load_config
from trainer.evaluate import evaluate_checkpoint
from trainer.model import OBJECTIVES
from trainer.report import plot_loss_curves

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SQUAD2 = REPO.parent / "shared" / "data" / "squad" / "dev-v2.0.json"

PAIR_NSP = ("model.objective=mlm+nsp",)
SINGLE = ("model.objective=mlm",)
SINGLE_SBO = ("model.objective=mlm+sbo",)


@dataclass(frozen=True)
class Row:
    name: str
    paper: tuple[str, ...]  # which rows of the paper's tables this run stands for
    scheme: str
    objectives: tuple[str, ...]

    @property
    def overrides(self) -> list[str]:
        return [f"data.masking.scheme={self.scheme}", *self.objectives]


ROWS = (
    Row("subword-2seq-nsp", ("Table 6: Subword Tokens", "Google BERT / Our BERT"), "subword", PAIR_NSP),
    Row("whole_word-2seq-nsp", ("Table 6: Whole Words",), "whole_word", PAIR_NSP),
    Row("named_entity-2seq-nsp", ("Table 6: Named Entities",), "named_entity", PAIR_NSP),
    Row("noun_phrase-2seq-nsp", ("Table 6: Noun Phrases",), "noun_phrase", PAIR_NSP),
    Row("geometric-2seq-nsp", ("Table 6: Geometric Spans", "Table 7: Span Masking (2seq) + NSP"), "geometric", PAIR_NSP),
    Row("geometric-1seq", ("Table 7: Span Masking (1seq)",), "geometric", SINGLE),
    Row("geometric-1seq-sbo", ("Table 7: Span Masking (1seq) + SBO", "SpanBERT"), "geometric", SINGLE_SBO),
    Row("subword-1seq", ("Our BERT-1seq",), "subword", SINGLE),
)


def train_row(row: Row, args: argparse.Namespace, run_dir: Path) -> None:
    launcher = [sys.executable, "-m"]
    if args.nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", "-m"]
    cmd = [
        *launcher, "trainer", "--config", args.config, "--data", str(args.data), "--out", str(run_dir),
        "--max-steps", str(args.max_steps), "--resume", "auto",
        *(x for o in [*row.overrides, f"data.holdout_fraction={args.holdout_fraction}", *args.set] for x in ("--set", o)),
    ]
    print(f"[ablate] {row.name}: $ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    subprocess.run(cmd, check=True)


def squad_split(args: argparse.Namespace) -> Path:
    """The article split of --squad-file (train.json / heldout.json), made once per grid."""
    split = args.out / "squad2-split"
    if not (split / "heldout.json").is_file():
        subprocess.run([sys.executable, "-m", "finetune.split", str(args.squad_file), "--out", str(split)], check=True)
    return split


def finetune_row(row: Row, args: argparse.Namespace, run_dir: Path, split: Path) -> dict[str, float]:
    """Fine-tune the row's checkpoint on the split's train half, score the held-out half (SQuAD 2.0)."""
    out = run_dir / "squad2"
    if not (out / "eval.json").is_file():  # resumable: a scored row is not fine-tuned again
        launcher = [sys.executable, "-m"]
        if args.nproc > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", "-m"]
        cmd = [*launcher, "finetune", "squad", "--model", str(run_dir), "--train", str(split / "train.json"),
               "--dev", str(split / "heldout.json"), "--out", str(out), "--version", "2.0", *args.squad_args]
        print(f"[ablate] {row.name}: $ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    m = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    return {"squad2_em": m["best_exact"], "squad2_f1": m["best_f1"], "squad2_em_at_0": m["exact"], "squad2_f1_at_0": m["f1"]}


def write_results(out: Path, results: list[dict[str, Any]]) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    cols = ("own_mlm_loss", "own_mlm_acc", "geo_mlm_loss", "geo_mlm_acc", "geo_sbo_loss", "own_nsp_acc")
    if any("squad2_f1" in r for r in results):
        cols += ("squad2_em", "squad2_f1")
    lines = [
        "# Ablation grid (held-out documents, fixed masks)",
        "",
        "`own`: masked with the row's own scheme (its training task). `geo`: every row masked with the same",
        "geometric spans in one sequence (one yardstick). Loss in nats per masked token; lower is better.",
        "`squad2_em` / `squad2_f1`: SQuAD 2.0 after fine-tuning on half of the articles, scored on the other half",
        "(official v2.0 metric, best_exact / best_f1: no-answer threshold tuned there); higher is better.",
        "",
        "| run | paper rows | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for r in results:
        cells = [f"{r[c]:.4f}" if isinstance(r.get(c), float) else "—" for c in cols]
        lines.append(f"| {r['name']} | {'; '.join(r['paper'])} | " + " | ".join(cells) + " |")
    lines += ["", "![loss curves](loss_curves.png)", "", "![span lengths](span_lengths.png)", ""]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m trainer.ablate", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="one shard directory for every row")
    p.add_argument("--out", type=Path, default=Path("ablate-out"))
    p.add_argument("--config", default="base" if gpu else "tiny", help="model/optimizer preset for every row")
    p.add_argument("--max-steps", type=int, default=20_000 if gpu else 150)
    p.add_argument("--rows", default="all", help=f"comma-separated subset of: {', '.join(r.name for r in ROWS)}")
    p.add_argument("--holdout-fraction", type=float, default=0.05, help="documents held out for evaluation")
    p.add_argument("--eval-blocks", type=int, default=0, help="evaluate at most this many held-out blocks (0 = all)")
    p.add_argument("--nproc", type=int, default=max(1, torch.cuda.device_count()), help="torchrun processes per row")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="for every row")
    p.add_argument("--downstream", choices=("none", "squad2"), default="none",
                   help="squad2: also fine-tune every row on SQuAD 2.0 and add EM / F1 columns")
    p.add_argument("--squad-file", type=Path, default=DEFAULT_SQUAD2,
                   help="SQuAD 2.0 file split by article into train / held-out halves (python -m finetune.split)")
    small = [] if gpu else ["--max-steps", "150", "--max-seq-length", "256", "--batch-size", "16", "--lr", "1e-4"]
    p.add_argument("--squad-args", default=" ".join(small),
                   help="extra `python -m finetune squad` options; default on CPU: a short run "
                        f"({' '.join(small) or 'none'}), on GPU: the paper's recipe")
    args = p.parse_args(argv)
    args.squad_args = shlex.split(args.squad_args)

    rows = ROWS if args.rows == "all" else [r for r in ROWS if r.name in args.rows.split(",")]
    unknown = set(args.rows.split(",")) - {r.name for r in ROWS} if args.rows != "all" else set()
    if unknown or not rows:
        raise SystemExit(f"--rows: unknown {sorted(unknown)}; choose from {[r.name for r in ROWS]}")
    for row in rows:  # fail fast on a bad combination, before hours of training
        load_config(args.config, [*row.overrides, *args.set])
    args.out.mkdir(parents=True, exist_ok=True)

    with open(args.out / "masking_stats.json", "w", encoding="utf-8") as stats:
        subprocess.run(
            [sys.executable, "-m", "masking.stats", "--shards", str(args.data), "--scheme", "geometric",
             "--blocks", "2000", "--json", "--plot", str(args.out / "span_lengths.png")],
            check=True, stdout=stats,
        )
    if args.downstream == "squad2" and not args.squad_file.is_file():
        raise SystemExit(f"error: --squad-file {args.squad_file}: no such file (a SQuAD 2.0 JSON to split)")
    split = squad_split(args) if args.downstream == "squad2" else None
    results = []
    for row in rows:
        run_dir = args.out / "runs" / row.name
        train_row(row, args, run_dir)
        own = evaluate_checkpoint(run_dir, args.data, max_blocks=args.eval_blocks)
        geo = evaluate_checkpoint(
            run_dir, args.data, scheme="geometric", single_sequence=True, max_blocks=args.eval_blocks
        )
        result = {"name": row.name, "paper": list(row.paper), "scheme": row.scheme, "step": own["step"],
                  "heldout_blocks": own["blocks"],
                  **{f"own_{k}": v for k, v in own.items() if k.split("_")[0] in OBJECTIVES},
                  **{f"geo_{k}": v for k, v in geo.items() if k.split("_")[0] in OBJECTIVES}}
        if split is not None:
            result.update(finetune_row(row, args, run_dir, split))
        results.append(result)
        print(f"[ablate] {row.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
        write_results(args.out, results)  # after every row: a partial grid is still a table
    plot_loss_curves({r.name: args.out / "runs" / r.name for r in rows}, args.out / "loss_curves.png",
                     title=f"ablation grid: {args.config}, {args.max_steps} steps")
    print(f"[ablate] wrote {args.out / 'results.md'}, results.json, loss_curves.png, span_lengths.png")
    return 0


if __name__ == "__main__":
    from contract.cli import run_main

    sys.exit(run_main(main))
