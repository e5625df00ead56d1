"""`python -m masking.stats`: mask real text (or shards) and report what the paper's Fig. 2 and §3.1 show.

    python -m masking.stats --vocab ../shared/data/vocab/bert-base-cased-vocab.txt \\
        --text ../shared/data/wiki/enwiki-sample-extracted.txt --scheme geometric --blocks 2000 --seed 0 --json

Blocks are 510 pieces (each file one document, `contract.blocks.cut_blocks`, no sentence
information). When the text has fewer blocks than --blocks, it is reused with fresh block indices
(another draw of the masks, as in a later epoch). Random replacement tokens follow the unigram
counts of the text itself (of the manifest with --shards).

Files are decoded by the pipeline's rule (`contract.text`): a file the pipeline would dead-letter (not
UTF-8) is skipped and reported, on stderr and in the output (`rejected`), never decoded by a guess;
`--encoding-fallback latin-1` decodes it instead, as the pipeline's flag does. If every file is
rejected: `error: FILE: reason`, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.tokenizer import Vocabulary
from masking import (
    KEEP,
    MASK,
    RANDOM,
    SCHEMES,
    Block,
    MaskedBatch,
    Masker,
    MaskingConfig,
    SampledLengths,
    Scheme,
)
from masking.corpus import RejectedText
from masking.sampler import GIVEN_SPAN_ID, span_length_pmf

BATCH = 256


@dataclass
class Source:
    """What is masked: the blocks, their vocabulary, the unigram counts for random replacement, and the
    files rejected on the way (reported, never dropped silently)."""

    blocks: list[Block]
    vocab: Vocabulary
    unigram: np.ndarray
    rejected: list[RejectedText] = field(default_factory=list)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    cfg = MaskingConfig(scheme=args.scheme, seed=args.seed)
    if args.shards:
        src = _from_shards(args.shards, args.blocks, cfg)
    else:
        if not args.vocab:
            parser.error("--text needs --vocab")
        src = _from_text(args.vocab, args.text, args.blocks, cfg, args.encoding_fallback)
    if not src.blocks:
        if src.rejected:  # nothing usable remains: `error: FILE: reason`, exit 2
            more = f" (and {len(src.rejected) - 1} more files rejected)" if len(src.rejected) > 1 else ""
            raise ValueError(f"{src.rejected[0]}{more}")
        raise ValueError("no blocks: the input is empty")
    for r in src.rejected:
        print(f"rejected {r}", file=sys.stderr)
    masker = Masker(
        cfg,
        vocab_size=src.vocab.size,
        mask_id=src.vocab.mask,
        special_ids=list(src.vocab.specials),
        unigram_counts=src.unigram,
    )
    report = measure(masker, src.blocks, args.blocks, epoch=args.epoch)
    report.update(entity_label_counts(src.blocks, cfg))
    report["rejected"] = {str(r.path): r.reason for r in src.rejected}
    report["rejected_files"] = len(src.rejected)
    if args.plot:
        plot(report, args.plot)
    try:
        print(json.dumps(report) if args.json else format_table(report), flush=True)
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m masking.stats", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", type=Path, help="plain-text files (WikiExtractor output is fine)")
    src.add_argument("--shards", type=Path, help="a shard directory written by `python -m pipeline`")
    p.add_argument("--vocab", type=Path, help="BERT vocab.txt or a tokenizer.json (needed with --text)")
    p.add_argument("--encoding-fallback", default=None, metavar="CODEC",
                   help="--text: decode invalid UTF-8 with CODEC (e.g. latin-1) instead of rejecting the file")
    p.add_argument("--scheme", choices=SCHEMES, default="geometric", help="masking scheme (Table 6)")
    p.add_argument("--blocks", type=int, default=2000, help="blocks to mask (the text is reused if shorter)")
    p.add_argument("--seed", type=int, default=0, help="masking seed (train.seed of a run)")
    p.add_argument("--epoch", type=int, default=0, help="epoch whose masks are drawn (0 = the first)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument(
        "--plot", type=Path, help="PNG of the realised and sampled span lengths vs the paper's P(ℓ)"
    )
    return p


def _from_text(
    vocab: Path, paths: Sequence[Path], n_blocks: int, cfg: MaskingConfig, encoding_fallback: str | None = None
) -> Source:
    from contract.annotate import load_nlp
    from contract.tokenizer import load_tokenizer
    from masking.corpus import annotate, text_blocks

    tok = load_tokenizer(vocab)
    rejected: list[RejectedText] = []
    blocks, texts = text_blocks(tok, paths, max_blocks=n_blocks, encoding_fallback=encoding_fallback, rejected=rejected)
    if cfg.spans_from_annotation and blocks:
        blocks = annotate(blocks, texts, load_nlp())
    vocab_size = tok.get_vocab_size()
    ids = [b.input_ids for b in blocks]
    unigram = np.bincount(np.concatenate(ids), minlength=vocab_size) if ids else np.ones(vocab_size)
    return Source(blocks, Vocabulary.of(tok, vocab), unigram, rejected)


def entity_label_counts(blocks: Sequence[Block], cfg: MaskingConfig) -> dict[str, Any]:
    """Entity spans per label over the distinct blocks, and which of those labels the scheme never samples."""
    counts = Counter(lab for b in blocks for lab in b.entity_labels)
    return {"entity_labels": dict(sorted(counts.items())),
            "excluded_entity_labels": sorted(set(counts) & set(cfg.excluded_entity_labels))}


def _from_shards(directory: Path, n_blocks: int, cfg: MaskingConfig) -> Source:
    from contract.schema import open_checked, read_manifest

    man = read_manifest(directory)
    column = cfg.scheme.span_column
    if column and (why := man.spans_unavailable(column)):  # not a silent fall-back to random words
        raise ValueError(f"{directory}: --scheme {cfg.scheme} reads {column}, but {why}; choose another scheme")
    blocks: list[Block] = []
    for index in range(len(man.shard_paths)):
        table = open_checked(man, index)  # checked against the manifest: a bad shard is named, not decoded
        cols = {
            name: table.column(name).to_pylist()
            for name in ("input_ids", "word_start", "entity_spans", "noun_phrase_spans")
        }
        for ids, ws, ents, nps in zip(
            cols["input_ids"],
            cols["word_start"],
            cols["entity_spans"],
            cols["noun_phrase_spans"],
            strict=True,
        ):
            blocks.append(
                Block(
                    np.asarray(ids, np.int32),
                    np.asarray(ws, bool),
                    len(blocks),
                    entity_spans=np.asarray([(e["start"], e["end"]) for e in ents], np.int64).reshape(-1, 2),
                    entity_labels=[e["label"] for e in ents],
                    noun_phrase_spans=np.asarray([(e["start"], e["end"]) for e in nps], np.int64).reshape(
                        -1, 2
                    ),
                )
            )
            if len(blocks) >= n_blocks:
                break
        if len(blocks) >= n_blocks:
            break
    # The file the manifest names (a vocab.txt or a tokenizer.json), checked against its recorded identity.
    return Source(blocks, man.vocabulary(), man.unigram_counts())


def measure(masker: Masker, blocks: Sequence[Block], n_blocks: int, epoch: int = 0) -> dict[str, Any]:
    """Mask `n_blocks` blocks (cycling through `blocks`) and summarise."""
    rec = SampledLengths.new()
    pieces = masked = sbo = from_given = 0
    actions = np.zeros(3, np.int64)
    span_words: list[np.ndarray] = []
    span_pieces: list[np.ndarray] = []
    for lo in range(0, n_blocks, BATCH):
        index = np.arange(lo, min(lo + BATCH, n_blocks))
        # Reused blocks get fresh block indices: another draw of their masks, as in a later epoch.
        tbs = [replace(blocks[i % len(blocks)], block_index=int(i)) for i in index]
        mb = masker.mask_flat(tbs, epoch=epoch, sampled_lengths=rec)
        pieces += len(mb.input_ids)
        masked += len(mb.mlm_positions)
        sbo += len(mb.sbo_positions)
        from_given += int((mb.mlm_span >= GIVEN_SPAN_ID).sum())
        actions += np.bincount(mb.mlm_replacement, minlength=3)
        words, lengths = _span_lengths(mb, np.concatenate([t.word_start for t in tbs]))
        span_words.append(words)
        span_pieces.append(lengths)
    cfg = masker.config
    words = np.concatenate(span_words)
    lengths = np.concatenate(span_pieces)
    pmf = span_length_pmf(cfg.geometric_p, cfg.max_span_words)
    report: dict[str, Any] = {
        "scheme": cfg.scheme,
        "seed": cfg.seed,
        "blocks": n_blocks,
        "distinct_blocks": min(n_blocks, len(blocks)),
        "pieces": pieces,
        "masked_fraction": masked / max(1, pieces),
        "replacement": {
            k: float(actions[v] / max(1, masked))
            for k, v in (("mask", MASK), ("random", RANDOM), ("keep", KEEP))
        },
        "spans_per_block": len(words) / max(1, n_blocks),
        "span_length_words_hist": _hist(words),
        "span_length_pieces_hist": _hist(lengths),
        "mean_span_words": _mean(words),
        "mean_span_pieces": _mean(lengths),
        "sbo_targets_fraction": sbo / max(1, masked),
        "paper_p": {str(i + 1): float(p) for i, p in enumerate(pmf)},
        "paper_mean": float((np.arange(1, len(pmf) + 1) * pmf).sum()),
    }
    if cfg.scheme is Scheme.GEOMETRIC:
        sampled, realised = rec.all_sampled(), rec.all_realised()
        report["sampled_span_length_hist"] = _hist(sampled)
        report["mean_sampled_span_words"] = _mean(sampled)
        report["sampled_tv_to_paper"] = 0.5 * float(
            np.abs(np.bincount(sampled, minlength=len(pmf) + 1)[1:] / max(1, len(sampled)) - pmf).sum()
        )
        report["unmerged_span_length_words_hist"] = _hist(realised)
        report["mean_unmerged_span_words"] = _mean(realised)
    if cfg.spans_from_annotation:
        report["given_span_fraction"] = from_given / max(1, masked)
    return report


def _span_lengths(mb: MaskedBatch, word_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Words and pieces of each merged span (a span starting mid-word counts that word too)."""
    owner = np.repeat(np.arange(len(mb)), np.diff(mb.span_offsets))
    s = mb.offsets[owner] + mb.spans[:, 0]
    e = mb.offsets[owner] + mb.spans[:, 1]
    starts_before = np.concatenate([[0], np.cumsum(word_start)])
    words = starts_before[e] - starts_before[s] + ~word_start[s]
    return words.astype(np.int64), (e - s).astype(np.int64)


def _hist(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    counts = np.bincount(values)
    return {str(k): float(c / len(values)) for k, c in enumerate(counts) if c}


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def format_table(r: dict[str, Any]) -> str:
    rep = r["replacement"]
    lines = [
        f"scheme {r['scheme']}  seed {r['seed']}  blocks {r['blocks']} ({r['distinct_blocks']} distinct)  "
        f"pieces {r['pieces']}",
        f"masked fraction        {r['masked_fraction']:.4f}",
        f"replacement            mask {rep['mask']:.3f}  random {rep['random']:.3f}  keep {rep['keep']:.3f}",
        f"merged spans / block   {r['spans_per_block']:.2f}",
        f"mean merged span       {r['mean_span_words']:.3f} words, {r['mean_span_pieces']:.3f} pieces",
        f"SBO targets / masked   {r['sbo_targets_fraction']:.4f}",
    ]
    if "mean_sampled_span_words" in r:
        lines += [
            f"mean sampled ℓ         {r['mean_sampled_span_words']:.3f} (paper P: {r['paper_mean']:.3f}), "
            f"TV to P {r['sampled_tv_to_paper']:.4f}",
            f"mean span before merge {r['mean_unmerged_span_words']:.3f} words",
        ]
    if "given_span_fraction" in r:
        lines.append(f"from given spans       {r['given_span_fraction']:.4f}")
    if r.get("entity_labels"):
        excluded = set(r.get("excluded_entity_labels", ()))
        lines.append("entity spans by label   " + "  ".join(
            f"{lab} {n}{' (excluded)' if lab in excluded else ''}" for lab, n in r["entity_labels"].items()))
    if r.get("rejected_files"):
        lines.append(f"rejected files         {r['rejected_files']}: "
                     + ", ".join(f"{path} ({why})" for path, why in r["rejected"].items()))
    lines.append("")
    lines.append(f"{'ℓ':>3} {'paper P':>8} {'sampled':>8} {'merged (words)':>15} {'merged (pieces)':>16}")
    top = max(int(k) for k in (r["span_length_words_hist"] or {"1": 0}))
    for ell in range(1, min(top, 20) + 1):
        k = str(ell)
        lines.append(
            f"{ell:>3} {r['paper_p'].get(k, 0.0):>8.4f} {r.get('sampled_span_length_hist', {}).get(k, 0.0):>8.4f} "
            f"{r['span_length_words_hist'].get(k, 0.0):>15.4f} {r['span_length_pieces_hist'].get(k, 0.0):>16.4f}"
        )
    return "\n".join(lines)


def plot(r: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = 15
    ell = np.arange(1, top + 1)

    def series(h: dict[str, float]) -> np.ndarray:
        return np.array([h.get(str(i), 0.0) for i in ell])

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.27
    ax.bar(
        ell - width,
        series(r["paper_p"]),
        width,
        label=f"paper P(ℓ) (mean {r['paper_mean']:.3f})",
        color="0.3",
    )
    if "sampled_span_length_hist" in r:
        ax.bar(
            ell,
            series(r["sampled_span_length_hist"]),
            width,
            label=f"sampled ℓ (mean {r['mean_sampled_span_words']:.3f})",
            color="tab:blue",
        )
    ax.bar(
        ell + width,
        series(r["span_length_words_hist"]),
        width,
        label=f"merged spans (mean {r['mean_span_words']:.3f})",
        color="tab:orange",
    )
    ax.set(
        xlabel="span length (words)",
        ylabel="fraction of spans",
        xticks=ell,
        title=f"{r['scheme']}: span length in words, {r['blocks']} blocks",
    )
    ax.legend()
    bx.bar(
        np.arange(1, 31),
        [r["span_length_pieces_hist"].get(str(i), 0.0) for i in range(1, 31)],
        color="tab:green",
    )
    bx.set(
        xlabel="merged span length (pieces)",
        ylabel="fraction of spans",
        title=f"pieces (mean {r['mean_span_pieces']:.2f}); masked fraction {r['masked_fraction']:.4f}",
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    from contract.cli import run_main

    raise SystemExit(run_main(main))
