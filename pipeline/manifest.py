"""The manifest: the per-range results gathered into one element, the accounting checked, then the
side files and manifest.json written (manifest last: a directory with a manifest is complete)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np

from contract.schema import (
    DEAD_LETTER,
    FORMAT_VERSION,
    MANIFEST,
    TOKENIZER_FILE,
    UNIGRAM_FILE,
    VOCAB_FILE,
    Manifest,
    ShardInfo,
    SpacyInfo,
    SpanCounts,
    TokenizerInfo,
    Totals,
)
from pipeline.counters import CLEANING, SPANS, Counter, Counts
from pipeline.documents import Rejection
from pipeline.outdir import join, remove_temporaries, write_atomic
from pipeline.shards import piece_counts
from pipeline.transforms import RangeResult


@dataclass(frozen=True)
class ManifestBase:
    """The manifest's fields the planner fixes before anything is read (pipeline.run.plan_job)."""

    block_size: int
    annotated: bool
    spacy: SpacyInfo | None  # None: --no-annotate
    tokenizer: TokenizerInfo
    options: dict[str, Any]  # our flags as given (the command line: free-form, so a plain dict)


def build_manifest(base: ManifestBase, shards: list[ShardInfo], counts: Counts, dead_letters: int) -> Manifest:
    """The manifest from shard infos and summed counts; raises if a document or block is unaccounted."""
    read, written, rejected = counts[Counter.DOCUMENTS_READ], counts[Counter.DOCUMENTS_WRITTEN], counts[Counter.DOCUMENTS_REJECTED]
    rows, tokens = sum(s.rows for s in shards), sum(s.tokens for s in shards)
    problems = []
    if read != written + rejected:
        problems.append(f"documents_read {read} != written {written} + rejected {rejected}")
    if rejected != dead_letters:
        problems.append(f"{rejected} rejections but {dead_letters} dead-letter records")
    if rows != counts[Counter.BLOCKS] or tokens != counts[Counter.TOKENS]:
        problems.append(f"shards hold {rows} blocks / {tokens} tokens, stages counted "
                        f"{counts[Counter.BLOCKS]} / {counts[Counter.TOKENS]}")
    if problems:
        raise RuntimeError("accounting failed: " + "; ".join(problems))
    return Manifest(
        format_version=FORMAT_VERSION,
        block_size=base.block_size,
        annotated=base.annotated,
        spacy=base.spacy,
        tokenizer=base.tokenizer,
        options=base.options,
        shards=tuple(sorted(shards, key=lambda s: s.file)),
        unigram_counts=UNIGRAM_FILE,
        dead_letter=DEAD_LETTER,
        totals=Totals(documents_read=read, documents_written=written, documents_rejected=rejected, blocks=rows,
                      tokens=tokens, words=counts[Counter.WORDS]),
        rejections=dict(sorted(counts.rejected.items())),
        skipped=dict(sorted(counts.skipped.items())),  # wikidump pages
        cleaning={c.value: counts[c] for c in CLEANING},
        # written entity spans per label; masking.stats reports them too
        spans=SpanCounts(**{c.value: counts[c] for c in SPANS}, entity_labels=dict(sorted(counts.entity_labels.items()))),
    )


@dataclass
class Gathered:
    """Everything the manifest is made of, summed as it arrives (never a list of blocks)."""

    ranges: set[int] = field(default_factory=set)
    shards: list[ShardInfo] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    dead: list[Rejection] = field(default_factory=list)

    def add_range(self, r: RangeResult) -> None:
        if r.range_index in self.ranges:  # each range's result exactly once, whatever the runner retried
            raise RuntimeError(f"range {r.range_index} reported twice")
        self.ranges.add(r.range_index)
        self.shards += r.shards
        self.counts.merge(r.counts)

    def merge(self, other: Gathered) -> None:
        if self.ranges & other.ranges:
            raise RuntimeError(f"ranges {sorted(self.ranges & other.ranges)[:5]} reported twice")
        self.ranges |= other.ranges
        self.shards += other.shards
        self.counts.merge(other.counts)
        self.dead += other.dead


class _GatherFn(beam.CombineFn):
    """RangeResult / Rejection -> one Gathered."""

    def create_accumulator(self) -> Gathered:
        return Gathered()

    def add_input(self, acc: Gathered, part: RangeResult | Rejection) -> Gathered:
        if isinstance(part, RangeResult):
            acc.add_range(part)
        else:
            acc.dead.append(part)
        return acc

    def merge_accumulators(self, accs: Iterable[Gathered]) -> Gathered:
        out = Gathered()
        for acc in accs:
            out.merge(acc)
        return out

    def extract_output(self, acc: Gathered) -> Gathered:
        return acc


def _finalize(
    gathered: Gathered, *, output: str, base: ManifestBase, num_ranges: int, vocab_txt: str, tokenizer_json: str
) -> Iterator[Manifest]:
    missing = sorted(set(range(num_ranges)) - gathered.ranges)
    if missing:
        raise RuntimeError(f"accounting failed: {len(missing)} of {num_ranges} planned ranges reported nothing, e.g. {missing[:5]}")
    manifest = build_manifest(base, gathered.shards, gathered.counts, len(gathered.dead))
    tokens = sum(s.tokens for s in manifest.shards)  # = totals.tokens (build_manifest checked)
    vocab_size = base.tokenizer.vocab_size
    unigram = np.zeros(vocab_size, np.int64)
    for shard in gathered.shards:  # one shard at a time, memory-mapped
        unigram += piece_counts(join(output, shard.file), vocab_size)
    if int(unigram.sum()) != tokens:
        raise RuntimeError(f"accounting failed: the shards hold {int(unigram.sum())} pieces, their writers counted "
                           f"{tokens}")
    buf = io.BytesIO()
    np.save(buf, unigram.astype(np.int64))
    lines = sorted(r.to_json() for r in gathered.dead)
    remove_temporaries(output)  # every range has finished: what is left is from failed attempts
    write_atomic(join(output, UNIGRAM_FILE), buf.getvalue())
    write_atomic(join(output, VOCAB_FILE), vocab_txt.encode("utf-8"))
    write_atomic(join(output, TOKENIZER_FILE), tokenizer_json.encode("utf-8"))
    write_atomic(join(output, DEAD_LETTER), "".join(line + "\n" for line in lines).encode("utf-8"))
    # Last: a directory with a manifest is complete.
    write_atomic(join(output, MANIFEST), manifest.to_bytes())
    yield manifest


class WriteManifest(beam.PTransform):
    """RangeResults + dead letters (one collection) -> the side files and manifest.json (written last).

    Combined into one element, the main input of the final step: no side inputs (the DaskRunner
    recomputes a side input's whole producer graph).
    """

    def __init__(self, output: str, base: ManifestBase, num_ranges: int, vocab_txt: str, tokenizer_json: str) -> None:
        super().__init__()
        self.kwargs = {"output": output, "base": base, "num_ranges": num_ranges, "vocab_txt": vocab_txt,
                       "tokenizer_json": tokenizer_json}

    def expand(self, results: beam.PCollection) -> beam.PCollection:
        # Every range emits a RangeResult, so the combined input is never empty.
        return (
            results
            | "Gather" >> beam.CombineGlobally(_GatherFn()).without_defaults()
            | "Finalize" >> beam.FlatMap(_finalize, **self.kwargs)
        )
