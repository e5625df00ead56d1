"""The pipeline's one heavy stage: every planned input range is read, cleaned, batched, annotated,
tokenized, cut into blocks and written to its own shards as it streams (`ProcessRanges`).

Memory is bounded by design on every runner: no step groups documents or blocks. FnApiRunner keeps
the whole input of a grouping step in memory and Beam's Dask GroupByKey is a dask.bag groupby, so a
grouping of documents or blocks would hold the corpus; here the only grouping steps carry planned
ranges (the Reshuffle that spreads them over workers) and the small per-range results the manifest
is made of (one `RangeResult` per range and the dead letters). tests/pipeline/test_graph.py fails if
a grouping of anything else comes back.

The DoFn has one output: `RangeResult`s and `Rejection`s (dead letters) in one collection, told apart
by type where they are gathered (Beam 2.77's DaskRunner feeds every `with_outputs` tag to every
consumer, and drops `finish_bundle` output, so neither is used); no stage reads a side input.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from contract.schema import ShardInfo
from pipeline.counters import Counter, Counts
from pipeline.documents import CleanOptions, Document, Rejection, clean_document
from pipeline.encode import EncodedDoc, encode_segmented, rule_sentence_starts, safe_starts, to_blocks
from pipeline.inputs import ReadRange, read_range
from pipeline.shards import RangeShardWriter
from pipeline.wikidump import PageSkip, StreamBreak

NAMESPACE = "pipeline"


@dataclass(frozen=True)
class RangeSettings:
    """Everything a worker needs to turn one range into shards (pickled once into the DoFn)."""

    clean: CleanOptions
    tokenizer_json: str
    block_size: int
    output: str
    shard_input_bytes: int  # roll to a new shard part after this much input (pipeline.shards)
    annotate_model: str | None = None
    entities: bool = True  # False: the model has no NER (contract.annotate.ModelSpans)
    noun_chunks: bool = True  # False: the model gives no noun chunks
    chunk_chars: int = 100_000
    batch_docs: int = 32
    nlp_batch_size: int = 64


@dataclass
class RangeResult:
    """What one range contributes to the manifest: a few shard infos and counts. Kept this small on
    purpose (no unigram row: 29k counts per range would be the biggest thing the Dask runner gathers;
    the manifest step counts pieces from the written shards instead)."""

    range_index: int
    shards: list[ShardInfo]
    counts: Counts


# Heavy per-process state, built once per worker process and model rather than once per DoFn
# instance: runners that make a new DoFn instance per bundle (the DaskRunner does, per partition)
# would otherwise reload spaCy (seconds) and the tokenizer (~0.2 s) for every bundle. One entry
# each, so a long-lived worker keeps only the current job's model.
@functools.lru_cache(maxsize=1)
def _process_nlp(model: str) -> Any:
    from contract.annotate import load_nlp

    return load_nlp(model)


@functools.lru_cache(maxsize=1)
def _process_tokenizer(tokenizer_json: str) -> tuple[Any, Any]:
    from tokenizers import Tokenizer

    from pipeline.encode import continuation_table

    tok = Tokenizer.from_str(tokenizer_json)
    return tok, continuation_table(tok)


def annotate_batch(nlp: Any, batch: list[Document], chunk_chars: int, batch_size: int, counts: Counts,
                   entities: bool = True, noun_chunks: bool = True) -> list[Document]:
    """spaCy sentences, entities and noun chunks for a batch (one nlp.pipe); inputs stay unmutated."""
    from contract.annotate import annotate

    anns = annotate(nlp, [d.text for d in batch], chunk_chars, batch_size, entities=entities, noun_chunks=noun_chunks)
    counts.add(Counter.ENTITIES_FOUND, sum(len(a.entities) for a in anns))
    counts.add(Counter.NOUN_CHUNKS_FOUND, sum(len(a.noun_chunks) for a in anns))
    return [replace(d, annotation=a) for d, a in zip(batch, anns, strict=True)]


def tokenize_batch(
    tok: Any, continuation: Any, batch: list[Document], counts: Counts
) -> Iterator[EncodedDoc | Rejection]:
    """One encode_batch per batch of documents (each cut into its sentences, see pipeline.encode),
    in batch order; a document without pieces is a Rejection."""
    from contract.align import char_to_piece_spans

    annotated = any(d.annotation is not None for d in batch)
    starts = [
        safe_starts(d.text, d.annotation.sentence_starts if d.annotation else rule_sentence_starts(d.text))
        for d in batch
    ]
    encoded = encode_segmented(tok, [d.text for d in batch], starts, annotated, continuation)
    for doc, (ids, ws, ss, offsets) in zip(batch, encoded, strict=True):
        if len(ids) == 0:
            yield Rejection(doc.source, doc.doc_id, "no_tokens", "text yields no word pieces")
            continue
        out = EncodedDoc(doc.source, doc.doc_id, ids, ws, ss)
        if doc.annotation is not None and offsets is not None:
            ann = doc.annotation
            ents = char_to_piece_spans(offsets, [(s, e) for s, e, _ in ann.entities])
            out.entity_spans = [(*p, lab) for p, (_, _, lab) in zip(ents, ann.entities, strict=True) if p]
            nps = char_to_piece_spans(offsets, ann.noun_chunks)
            out.noun_phrase_spans = [p for p in nps if p]
            counts.add(Counter.SPANS_WITHOUT_PIECES, len(ents) - len(out.entity_spans) + len(nps) - len(out.noun_phrase_spans))
        yield out


class _ProcessRangeFn(beam.DoFn):
    """ReadRange -> its Rejections as they occur, then one RangeResult (its shards are written)."""

    def __init__(self, settings: RangeSettings) -> None:
        self.settings = settings
        self.tok: Any = None
        self.continuation: Any = None
        self.nlp: Any = None

    def setup(self) -> None:
        self.tok, self.continuation = _process_tokenizer(self.settings.tokenizer_json)
        if self.settings.annotate_model:
            self.nlp = _process_nlp(self.settings.annotate_model)

    def process(self, rng: ReadRange) -> Iterator[RangeResult | Rejection]:
        s = self.settings
        counts = Counts()
        writer = RangeShardWriter(s.output, rng.index, s.shard_input_bytes)
        batch: list[Document] = []
        sizes: list[int] = []  # input bytes of each document of `batch`
        try:
            for raw in read_range(rng):
                if isinstance(raw, PageSkip):  # a dump page that is not an article: counted, not a document
                    counts.skip(raw.reason.value)
                    continue
                counts.add(Counter.DOCUMENTS_READ)
                if isinstance(raw, StreamBreak):  # unreadable dump bytes: one dead letter per break
                    rejection = raw.rejection()
                    counts.reject(rejection.reason)
                    yield rejection
                    continue
                doc = clean_document(raw, s.clean)
                if isinstance(doc, Rejection):
                    counts.reject(doc.reason)
                    yield doc
                    continue
                for name, n in doc.flags.items():
                    counts.add_flag(name, n)
                batch.append(doc)
                sizes.append(len(raw.data))
                if len(batch) >= s.batch_docs:
                    yield from self._write_batch(batch, sizes, writer, counts)
                    batch, sizes = [], []
            if batch:
                yield from self._write_batch(batch, sizes, writer, counts)
            shards = writer.close()
        except BaseException:
            writer.abort()
            raise
        for counter, n in counts.by_counter.items():
            Metrics.counter(NAMESPACE, counter.value).inc(n)
        yield RangeResult(rng.index, shards, counts)

    def _write_batch(
        self, batch: list[Document], sizes: list[int], writer: RangeShardWriter, counts: Counts
    ) -> Iterator[Rejection]:
        s = self.settings
        if self.nlp is not None:
            batch = annotate_batch(self.nlp, batch, s.chunk_chars, s.nlp_batch_size, counts, s.entities, s.noun_chunks)
        # tokenize_batch yields one result per document, in batch order
        for size, out in zip(sizes, tokenize_batch(self.tok, self.continuation, batch, counts), strict=True):
            if isinstance(out, Rejection):
                counts.reject(out.reason)
                yield out
                continue
            rows, dropped = to_blocks(out, s.block_size - 2)  # room for [CLS] and [SEP]
            counts.add(Counter.DOCUMENTS_WRITTEN)
            counts.add(Counter.BLOCKS, rows.num_blocks)
            counts.add(Counter.TOKENS, len(out.input_ids))
            counts.add(Counter.WORDS, int(out.word_start.sum()))
            counts.add(Counter.ENTITY_SPANS, sum(len(x) for x in rows.entity_spans))
            for spans in rows.entity_spans:
                for span in spans:
                    counts.entity_labels[span[2]] = counts.entity_labels.get(span[2], 0) + 1
            counts.add(Counter.NOUN_PHRASE_SPANS, sum(len(x) for x in rows.noun_phrase_spans))
            for counter, n in dropped.items():
                counts.add(counter, n)
            writer.add(rows, size)


class ProcessRanges(beam.PTransform):
    """PBegin -> RangeResult per planned range and a Rejection per dead letter (one collection).

    The ranges are created, spread over the workers by a Reshuffle (a grouping of ReadRange
    elements only), and each processed whole by one DoFn call.
    """

    def __init__(self, ranges: list[ReadRange], settings: RangeSettings) -> None:
        super().__init__()
        self.ranges, self.settings = ranges, settings

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "CreateRanges" >> beam.Create(self.ranges)
            | "DistributeRanges" >> beam.Reshuffle()
            | "ProcessRange" >> beam.ParDo(_ProcessRangeFn(self.settings))
        )
