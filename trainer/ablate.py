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

With `--downstream squad2` (a comma-separated list of squad1, squad2, mrqa:FILE, tacred:FILE) every row's
checkpoint is also fine-tuned (`python -m finetune squad|mrqa|tacred`) on one half of each data file and
scored on the other half (`python -m finetune.split`: SQuAD by article, MRQA by context, TACRED by example
id; the paper splits MRQA's dev sets in half the same way): EM / F1 columns (TACRED: micro F1) beside the
held-out MLM loss, as the paper's Tables 6 and 7 rank rows. SQuAD files default to
../shared/data/squad/dev-v1.1.json / dev-v2.0.json; SQuAD 2.0 applies the null threshold tuned on the
held-out half (the reference's way), and the zero-threshold figures are kept in results.json.

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
DEFAULT_SQUAD1 = REPO.parent / "shared" / "data" / "squad" / "dev-v1.1.json"
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


@dataclass(frozen=True)
class Downstream:
    """One downstream column group: `task` (python -m finetune TASK), its data file, its column prefix."""

    task: str  # squad / mrqa / tacred
    file: Path
    prefix: str  # squad1, squad2, mrqa_<file stem>, tacred
    version: str | None = None  # SQuAD only

    @property
    def columns(self) -> tuple[str, ...]:
        return (f"{self.prefix}_f1",) if self.task == "tacred" else (f"{self.prefix}_em", f"{self.prefix}_f1")


def parse_downstream(text: str, squad1: Path, squad2: Path) -> list[Downstream]:
    """`none` or a comma-separated list of squad1, squad2, mrqa:FILE, tacred:FILE."""
    out: list[Downstream] = []
    for spec in (x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"):
        name, _, file = spec.partition(":")
        if spec in ("squad1", "squad2"):
            out.append(Downstream("squad", squad1 if spec == "squad1" else squad2, spec, "1.1" if spec == "squad1" else "2.0"))
        elif name in ("mrqa", "tacred") and file:
            stem = Path(file).name.split(".")[0].replace("-", "_")
            out.append(Downstream(name, Path(file), f"mrqa_{stem}" if name == "mrqa" else "tacred"))
        else:
            raise SystemExit(f"error: --downstream {spec!r}: expected squad1, squad2, mrqa:FILE or tacred:FILE")
    prefixes = [d.prefix for d in out]
    if len(set(prefixes)) != len(prefixes):
        raise SystemExit(f"error: --downstream {text!r}: a column group twice ({prefixes})")
    for d in out:
        if not d.file.is_file():
            raise SystemExit(f"error: --downstream {d.prefix}: {d.file}: no such file")
    return out


def downstream_split(ds: Downstream, args: argparse.Namespace) -> tuple[Path, Path]:
    """The held-out split of the task's file (train half, held-out half), made once per grid."""
    split = args.out / f"{ds.prefix}-split"
    suffix = ".jsonl.gz" if ds.task == "mrqa" else ".json"
    if not (split / f"heldout{suffix}").is_file():
        subprocess.run([sys.executable, "-m", "finetune.split", str(ds.file), "--out", str(split)], check=True)
    return split / f"train{suffix}", split / f"heldout{suffix}"


def finetune_row(row: Row, args: argparse.Namespace, run_dir: Path, ds: Downstream) -> dict[str, float]:
    """Fine-tune the row's checkpoint on the train half of the task's file and score the held-out half."""
    out = run_dir / ds.prefix
    if not (out / "eval.json").is_file():  # resumable: a scored row is not fine-tuned again
        train, heldout = downstream_split(ds, args)
        launcher = [sys.executable, "-m"]
        if args.nproc > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", "-m"]
        extra = args.tacred_args if ds.task == "tacred" else args.squad_args
        cmd = [*launcher, "finetune", ds.task, "--model", str(run_dir), "--train", str(train), "--dev", str(heldout),
               "--out", str(out), *(["--version", ds.version] if ds.version else []), *extra]
        print(f"[ablate] {row.name}: $ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    m = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    if ds.task == "tacred":
        return {f"{ds.prefix}_p": m["precision"], f"{ds.prefix}_r": m["recall"], f"{ds.prefix}_f1": m["f1"]}
    if ds.version == "2.0":  # eval.json: the tuned threshold applied; zero_threshold: at 0
        return {f"{ds.prefix}_em": m["exact"], f"{ds.prefix}_f1": m["f1"],
                f"{ds.prefix}_em_at_0": m["zero_threshold"]["exact"], f"{ds.prefix}_f1_at_0": m["zero_threshold"]["f1"]}
    return {f"{ds.prefix}_em": m["exact_match"], f"{ds.prefix}_f1": m["f1"]}


def write_results(out: Path, results: list[dict[str, Any]], downstream: list[Downstream] = ()) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    cols = ("own_mlm_loss", "own_mlm_acc", "geo_mlm_loss", "geo_mlm_acc", "geo_sbo_loss", "own_nsp_acc")
    cols += tuple(c for d in downstream for c in d.columns)
    lines = [
        "# Ablation grid (held-out documents, fixed masks)",
        "",
        "`own`: masked with the row's own scheme (its training task). `geo`: every row masked with the same",
        "geometric spans in one sequence (one yardstick). Loss in nats per masked token; lower is better.",
        "Downstream columns (`*_em` / `*_f1`, TACRED `tacred_f1`): fine-tuned on half of the task's file, scored on the",
        "other half with the official metric (SQuAD 2.0: no-answer threshold tuned there); higher is better.",
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
    p.add_argument("--downstream", default="none",
                   help="comma-separated: squad1, squad2, mrqa:FILE (.jsonl.gz), tacred:FILE (.json); each row is "
                        "fine-tuned on half of the file and scored on the other half (EM / F1 columns)")
    p.add_argument("--squad-file", type=Path, default=DEFAULT_SQUAD2,
                   help="the squad2 file, split by article into train / held-out halves (python -m finetune.split)")
    p.add_argument("--squad1-file", type=Path, default=DEFAULT_SQUAD1, help="the squad1 file, split the same way")
    small = [] if gpu else ["--max-steps", "150", "--max-seq-length", "256", "--batch-size", "16", "--lr", "1e-4",
                            "--eval-every", "0"]
    p.add_argument("--squad-args", default=" ".join(small),
                   help="extra `python -m finetune squad|mrqa` options; default on CPU: a short run "
                        f"({' '.join(small) or 'none'}), on GPU: the paper's recipe")
    small_tacred = [] if gpu else ["--max-steps", "150", "--batch-size", "16", "--lr", "1e-4", "--eval-every", "0"]
    p.add_argument("--tacred-args", default=" ".join(small_tacred),
                   help=f"extra `python -m finetune tacred` options; default on CPU: {' '.join(small_tacred) or 'none'}")
    args = p.parse_args(argv)
    args.squad_args = shlex.split(args.squad_args)
    args.tacred_args = shlex.split(args.tacred_args)
    downstream = parse_downstream(args.downstream, args.squad1_file, args.squad_file)

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
        for ds in downstream:
            result.update(finetune_row(row, args, run_dir, ds))
        results.append(result)
        print(f"[ablate] {row.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
        write_results(args.out, results, downstream)  # after every row: a partial grid is still a table
    plot_loss_curves({r.name: args.out / "runs" / r.name for r in rows}, args.out / "loss_curves.png",
                     title=f"ablation grid: {args.config}, {args.max_steps} steps")
    print(f"[ablate] wrote {args.out / 'results.md'}, results.json, loss_curves.png, span_lengths.png")
    return 0


if __name__ == "__main__":
    from contract.cli import run_main

    sys.exit(run_main(main))
