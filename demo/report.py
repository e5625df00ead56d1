"""`python -m demo.report`: the demo's report.md, from what the earlier steps wrote (nothing recomputed
but the fill-mask examples, which show the exported model working in transformers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from contract.schema import read_manifest
from trainer.report import plot_loss_curves, read_metrics

# Sentences in the style of the Wikipedia sample; one word each is masked for the fill-mask example.
FILL_MASK = (
    "The city is the capital of the [MASK] and its largest city.",
    "He was born in London and studied at the [MASK] of Oxford.",
    "The river flows into the [MASK] Sea.",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.report", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--hf", type=Path, required=True)
    p.add_argument("--squad", type=Path, help="a `python -m finetune squad` output directory")
    args = p.parse_args(argv)
    out = args.out

    manifest = read_manifest(args.shards).manifest
    totals = manifest.totals
    stats = json.loads((out / "masking_stats.json").read_text(encoding="utf-8"))
    evaluation = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    metrics = read_metrics(args.run)
    plot_loss_curves({"tiny SpanBERT": args.run}, out / "loss.png", title="demo: tiny SpanBERT on Wikipedia (CPU)")
    first, last = metrics[0], metrics[-1]

    lines = [
        "# Demo report: tiny SpanBERT on real Wikipedia text",
        "",
        "## Data",
        f"- documents read {totals.documents_read}, written {totals.documents_written}, "
        f"rejected {totals.documents_rejected} (see `{args.shards}/dead_letter.jsonl`)",
        f"- {totals.blocks} blocks, {totals.tokens} word pieces, vocabulary of "
        f"{manifest.tokenizer.vocab_size} pieces trained on the same text",
        "",
        "## Masking (geometric spans, paper §3.1)",
        f"- masked fraction {stats['masked_fraction']:.4f} (paper: 15%)",
        f"- sampled span length mean {stats.get('mean_sampled_span_words', float('nan')):.3f} words "
        "(paper's truncated geometric: 3.797)",
        "- replacement of masked tokens: "
        + ", ".join(f"{k} {v:.3f}" for k, v in stats["replacement"].items())
        + " (paper: 0.8 / 0.1 / 0.1)",
        "",
        "![span lengths](span_lengths.png)",
        "",
        "## Training",
        f"- {last['step']} steps; MLM loss {first['mlm_loss']:.2f} → {last['mlm_loss']:.2f}, "
        f"SBO loss {first['sbo_loss']:.2f} → {last['sbo_loss']:.2f}; {last['tokens_per_s']:.0f} tokens/s",
        "",
        "![loss](loss.png)",
        "",
        "## Held-out evaluation (fixed masks)",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {_fmt(v)} |" for k, v in evaluation.items() if not isinstance(v, dict | list)),
        "",
        "## The exported model in transformers",
        f"`BertForMaskedLM.from_pretrained('{args.hf}')`, `pipeline('fill-mask')`, top 3:",
        "",
        *_fill_mask(args.hf),
        "",
        "(A few CPU minutes of a 2-layer model: expect frequent words, not knowledge.)",
        *(_squad(args.squad) if args.squad else []),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"[demo] report: {out / 'report.md'}")
    return 0


def _fill_mask(hf_dir: Path) -> list[str]:
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(hf_dir), tokenizer=str(hf_dir), device="cpu")
    rows = []
    for sentence in FILL_MASK:
        guesses = ", ".join(f"`{g['token_str']}` {g['score']:.2f}" for g in fill(sentence, top_k=3))
        rows.append(f"- {sentence} → {guesses}")
    return rows


def _squad(ft: Path) -> list[str]:
    m = json.loads((ft / "eval.json").read_text(encoding="utf-8"))
    sweep = json.loads((ft / "lr_sweep.json").read_text(encoding="utf-8"))
    cfg = json.loads((ft / "config.json").read_text(encoding="utf-8"))
    steps = next(r["steps"] for r in sweep["lrs"] if (r["lr"], r["batch_size"]) == (sweep["best_lr"], sweep["best_batch_size"]))
    return [
        "",
        "## SQuAD 1.1 fine-tuning (python -m finetune squad)",
        f"- the demo model fine-tuned for {steps} steps (about a minute, batch {sweep['best_batch_size']}, lr "
        f"{sweep['best_lr']:g}) on {cfg['train_windows']} windows of half the committed SQuAD 1.1 excerpt, scored "
        f"on the other half with the official metric: **EM {m['exact_match']:.2f} / F1 {m['f1']:.2f}** "
        "(paper, SpanBERT-large on the full data: 88.8 / 94.6 on test; a minute of a 2-layer model learns "
        "little more than where answers tend to be)",
    ]


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
