"""`make demo` / `python -m demo`: real Wikipedia text all the way to a trained, exported SpanBERT.

Every step is the project's own command-line tool, run as a user would run it, so the demo doubles as
a walk-through (each command is printed before it runs):

  1. corpus      real English Wikipedia: the dump excerpt inside the gensim wheel on PyPI + WikiExtractor
  2. vocabulary  python -m pipeline.vocab            (cased WordPiece trained on that text)
  3. shards      python -m pipeline                  (Beam, local runner, spaCy entities + noun phrases)
  4. masking     python -m masking.stats             (span lengths vs the paper's Fig. 2)
  5. training    python -m trainer                   (tiny SpanBERT, MLM + SBO, CPU, a few minutes)
  6. evaluation  python -m trainer.evaluate          (held-out MLM / SBO loss and accuracy, fixed masks)
  7. export      python -m trainer.export            (transformers BERT directory + SBO head)
  8. SQuAD       python -m finetune.split + python -m finetune squad  (the demo model fine-tuned for about a
                 minute on half of a committed SQuAD 1.1 excerpt, scored on the other half)
  9. report      demo-out/report.md with plots

Needs no ../shared: everything comes from PyPI, is committed (the SQuAD excerpt) or is built here.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from contract.schema import read_manifest
from demo.corpus import first_articles, wikipedia_sample

PY = sys.executable
SQUAD_EXCERPT = Path(__file__).resolve().parent / "squad" / "dev-v1.1-excerpt.json"  # package data


def step(title: str, args: list[str], capture: Path | None = None) -> None:
    """Run one project CLI, echoing the command; its stdout goes to the terminal or to `capture`."""
    print(f"\n[demo] {title}\n[demo] $ {' '.join(shlex.quote(a) for a in args)}", flush=True)
    t0 = time.perf_counter()
    if capture is None:
        subprocess.run(args, check=True)
    else:
        with open(capture, "w", encoding="utf-8") as out:
            subprocess.run(args, check=True, stdout=out)
    print(f"[demo] {title}: done in {time.perf_counter() - t0:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="working directory (reused as a cache)")
    p.add_argument("--vocab-size", type=int, default=8000, help="WordPiece vocabulary trained on the sample")
    p.add_argument("--train-minutes", type=float, default=3.0, help="CPU training budget")
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--workers", type=int, default=2, help="Beam workers for preprocessing")
    p.add_argument("--articles", type=int, default=0, help="use only the first N articles (0 = all 106)")
    p.add_argument("--squad-minutes", type=float, default=1.0, help="SQuAD fine-tuning budget")
    args = p.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    print("[demo] 1/9 corpus: real English Wikipedia from a registry package", flush=True)
    articles = wikipedia_sample()
    if args.articles:
        articles = [first_articles(articles, args.articles, out / "corpus" / f"first-{args.articles}.txt")]
    inputs = [f"wikiextractor:{a}" for a in articles]
    print(f"[demo] {len(articles)} WikiExtractor file(s): {', '.join(str(a) for a in articles)}")

    vocab_dir, shards, run, hf = out / "vocab", out / "shards", out / "run", out / "hf"
    step(
        "2/9 vocabulary: train a cased WordPiece vocabulary on the articles",
        [PY, "-m", "pipeline.vocab", *_flags("--input", inputs), "--output", str(vocab_dir),
         "--vocab-size", str(args.vocab_size), "--bert-layout"],
    )
    step(
        "3/9 shards: tokenize, cut blocks, annotate entities and noun phrases (Beam, local runner)",
        [PY, "-m", "pipeline", *_flags("--input", inputs), "--tokenizer", str(vocab_dir / "tokenizer.json"),
         "--output", str(shards), "--num-shards", "4", "--overwrite",
         "--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"],
    )
    vocab_size = read_manifest(shards).vocab_size
    step(
        "4/9 masking: geometric span masking on the shards vs the paper's span-length distribution",
        [PY, "-m", "masking.stats", "--shards", str(shards), "--scheme", "geometric", "--blocks", "2000",
         "--json", "--plot", str(out / "span_lengths.png")],
        capture=out / "masking_stats.json",
    )
    step(
        "5/9 training: tiny SpanBERT (MLM + SBO) on CPU",
        [PY, "-m", "trainer", "--config", "tiny", "--data", str(shards), "--out", str(run),
         "--max-steps", str(args.max_steps), "--set", f"model.vocab_size={vocab_size}",
         "--set", f"train.max_minutes={args.train_minutes}", "--set", "data.holdout_fraction=0.05"],
    )
    step(
        "6/9 evaluation: held-out MLM / SBO loss and accuracy with fixed masks",
        [PY, "-m", "trainer.evaluate", "--checkpoint", str(run), "--data", str(shards), "--json"],
        capture=out / "eval.json",
    )
    step("7/9 export: transformers BERT directory + SBO head", [PY, "-m", "trainer.export", str(run), str(hf)])
    squad = out / "squad"
    step("8/9 SQuAD: split the committed SQuAD 1.1 excerpt by article",
         [PY, "-m", "finetune.split", str(SQUAD_EXCERPT), "--out", str(squad / "split")])
    step(
        "8/9 SQuAD: fine-tune the demo model on one half, score the other (official v1.1 metric)",
        [PY, "-m", "finetune", "squad", "--model", str(run), "--train", str(squad / "split" / "train.json"),
         "--dev", str(squad / "split" / "heldout.json"), "--out", str(squad / "ft"), "--epochs", "3", "--eval-every", "1",
         "--max-minutes", str(args.squad_minutes), "--max-seq-length", "256", "--batch-size", "16", "--lr", "1e-3"],
    )
    step(
        "9/9 report",
        [PY, "-m", "demo.report", "--out", str(out), "--run", str(run), "--shards", str(shards), "--hf", str(hf),
         "--squad", str(squad / "ft")],
    )
    print(f"\n[demo] finished in {(time.perf_counter() - t0) / 60:.1f} min; open {out / 'report.md'}")
    return 0


def _flags(flag: str, values: list[str]) -> list[str]:
    return [x for v in values for x in (flag, v)]


if __name__ == "__main__":
    from contract.cli import run_main

    sys.exit(run_main(main))
