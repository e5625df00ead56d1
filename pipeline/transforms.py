"""The pipeline's composite PTransforms that do no I/O (reading and writing live in pipeline.io).

Each stage sends rejected documents to a `dead_letter` collection and its event counts to a `stats`
collection (as (name, n) pairs): the manifest's accounting is computed from data, so it is exact on
every runner, and the same counts also go to Beam metrics for monitoring.

Written for every Beam runner, Dask's included (see docs/pipeline.md, "Runners"): a stage's DoFn has
one output whose side elements are wrapped in `Side`, split by one selecting FlatMap per collection
(Beam 2.77's DaskRunner feeds every `with_outputs` tag to every consumer); batches are formed by a
GroupByKey, not in `finish_bundle` (whose output that runner drops); no stage reads a side input.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from contract.annotate import AVAILABLE
from pipeline.documents import CleanOptions, Document, RawDocument, Rejection, clean_document
from pipeline.encode import EncodedDoc, encode_segmented, rule_sentence_starts, safe_starts, to_blocks
from pipeline.wikidump import PageSkip, StreamBreak

NAMESPACE = "pipeline"
MAIN = "main"
STATS = "stats"
DEAD_LETTER = "dead_letter"
ENTITY_LABEL = "entity_label."  # stats prefix: written entity spans of one label


@dataclass(frozen=True)
class Side:
    """An element a stage sends to its `tag` collection (STATS or DEAD_LETTER) instead of downstream."""

    tag: str
    value: Any


def count(name: str, n: int = 1) -> Side:
    """Count an event both as a Beam metric and as a `stats` element for the manifest."""
    Metrics.counter(NAMESPACE, name).inc(n)
    return Side(STATS, (name, n))


def reject(rej: Rejection) -> Iterator[Side]:
    yield count("documents_rejected")
    yield count(f"rejected.{rej.reason}")
    yield Side(DEAD_LETTER, rej)


def shard_of(doc_id: str, num_shards: int) -> int:
    """Stable across processes and machines (unlike hash(), which is salted per process)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big") % num_shards


class _CleanFn(beam.DoFn):
    def __init__(self, opts: CleanOptions) -> None:
        self.opts = opts

    def process(self, raw: RawDocument | PageSkip | StreamBreak) -> Iterator[Any]:
        if isinstance(raw, PageSkip):  # not an article: counted, not a document
            yield count(f"skipped.{raw.reason.value}")
            return
        yield count("documents_read")
        if isinstance(raw, StreamBreak):  # unreadable dump bytes: one dead letter per break
            yield from reject(raw.rejection())
            return
        out = clean_document(raw, self.opts)
        if isinstance(out, Rejection):
            yield from reject(out)
            return
        for name, n in sorted(out.flags.items()):
            yield count(name, n)
        yield out


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


class _AnnotateFn(beam.DoFn):
    """spaCy once per worker process, one nlp.pipe per batch of documents."""

    def __init__(self, model: str, chunk_chars: int, batch_size: int, entities: bool = True, noun_chunks: bool = True) -> None:
        self.model, self.chunk_chars, self.batch_size = model, chunk_chars, batch_size
        self.entities, self.noun_chunks = entities, noun_chunks  # False: the model lacks them (contract.annotate.ModelSpans)
        self.nlp: Any = None

    def setup(self) -> None:
        self.nlp = _process_nlp(self.model)

    def process(self, batch: list[Document]) -> Iterator[Any]:
        from contract.annotate import annotate

        anns = annotate(self.nlp, [d.text for d in batch], self.chunk_chars, self.batch_size,
                        entities=self.entities, noun_chunks=self.noun_chunks)
        yield count("entities_found", sum(len(a.entities) for a in anns))
        yield count("noun_chunks_found", sum(len(a.noun_chunks) for a in anns))
        yield [replace(d, annotation=a) for d, a in zip(batch, anns, strict=True)]  # inputs stay unmutated


class _TokenizeFn(beam.DoFn):
    """One encode_batch per batch of documents (each cut into its sentences, see pipeline.encode)."""

    def __init__(self, tokenizer_json: str) -> None:
        self.tokenizer_json = tokenizer_json
        self.tok: Any = None
        self.continuation: Any = None

    def setup(self) -> None:
        self.tok, self.continuation = _process_tokenizer(self.tokenizer_json)

    def process(self, batch: list[Document]) -> Iterator[Any]:
        from contract.align import char_to_piece_spans

        annotated = any(d.annotation is not None for d in batch)
        starts = [
            safe_starts(d.text, d.annotation.sentence_starts if d.annotation else rule_sentence_starts(d.text))
            for d in batch
        ]
        encoded = encode_segmented(self.tok, [d.text for d in batch], starts, annotated, self.continuation)
        for doc, (ids, ws, ss, offsets) in zip(batch, encoded, strict=True):
            if len(ids) == 0:
                yield from reject(Rejection(doc.source, doc.doc_id, "no_tokens", "text yields no word pieces"))
                continue
            out = EncodedDoc(doc.source, doc.doc_id, ids, ws, ss)
            if doc.annotation is not None and offsets is not None:
                ann = doc.annotation
                ents = char_to_piece_spans(offsets, [(s, e) for s, e, _ in ann.entities])
                out.entity_spans = [(*p, lab) for p, (_, _, lab) in zip(ents, ann.entities, strict=True) if p]
                nps = char_to_piece_spans(offsets, ann.noun_chunks)
                out.noun_phrase_spans = [p for p in nps if p]
                empty = len(ents) - len(out.entity_spans) + len(nps) - len(out.noun_phrase_spans)
                if empty:
                    yield count("spans_without_pieces", empty)
            yield out


class _BuildBlocksFn(beam.DoFn):
    def __init__(self, block_size: int, num_shards: int) -> None:
        self.max_pieces, self.num_shards = block_size - 2, num_shards  # room for [CLS] and [SEP]

    def process(self, doc: EncodedDoc) -> Iterator[Any]:
        rows, dropped = to_blocks(doc, self.max_pieces)
        yield count("documents_written")
        yield count("blocks", rows.num_blocks)
        yield count("tokens", len(doc.input_ids))
        yield count("words", int(doc.word_start.sum()))
        yield count("entity_spans", sum(len(s) for s in rows.entity_spans))
        for label, n in sorted(Counter(span[2] for spans in rows.entity_spans for span in spans).items()):
            yield count(f"{ENTITY_LABEL}{label}", n)  # per-label counts of the written spans, for the manifest
        yield count("noun_phrase_spans", sum(len(s) for s in rows.noun_phrase_spans))
        for name, n in dropped.items():
            if n:
                yield count(name, n)
        yield shard_of(doc.doc_id, self.num_shards), rows


def _main(element: Any) -> Iterator[Any]:
    if not isinstance(element, Side):
        yield element


def _side(element: Any, tag: str) -> Iterator[Any]:
    if isinstance(element, Side) and element.tag == tag:
        yield element.value


def _outputs(pcoll: beam.PCollection, fn: beam.DoFn, label: str) -> dict[str, beam.PCollection]:
    """Run `fn` and split its output into the main, `stats` and `dead_letter` collections."""
    mixed = pcoll | label >> beam.ParDo(fn)
    return {
        MAIN: mixed | f"{label}Main" >> beam.FlatMap(_main),
        STATS: mixed | f"{label}Stats" >> beam.FlatMap(_side, STATS),
        DEAD_LETTER: mixed | f"{label}DeadLetters" >> beam.FlatMap(_side, DEAD_LETTER),
    }


class CleanDocuments(beam.PTransform):
    """RawDocument -> Document: decode (or dead-letter invalid UTF-8), parse JSON, clean."""

    def __init__(self, opts: CleanOptions) -> None:
        super().__init__()
        self.opts = opts

    def expand(self, raw: beam.PCollection) -> dict[str, beam.PCollection]:
        return _outputs(raw, _CleanFn(self.opts), "Clean")


def _cut_batches(group: tuple[int, Iterable[Document]], batch_docs: int) -> Iterator[list[Document]]:
    docs = sorted(group[1], key=lambda d: d.doc_id)  # batch membership independent of arrival order
    for i in range(0, len(docs), batch_docs):
        yield docs[i : i + batch_docs]


class BatchDocuments(beam.PTransform):
    """Document -> batches (lists) of at most `batch_docs` Documents.

    Documents are grouped by a stable hash of their id into `groups` groups (a GroupByKey, which
    also spreads them over the workers) and each group is cut into batches. Unlike BatchElements
    this emits nothing from finish_bundle, and a batch's membership does not depend on bundling.
    """

    def __init__(self, batch_docs: int, groups: int) -> None:
        super().__init__()
        self.batch_docs, self.groups = batch_docs, groups

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        return (
            docs
            | "KeyByGroup" >> beam.Map(lambda d, n: (shard_of(d.doc_id, n), d), self.groups)
            | "GroupDocuments" >> beam.GroupByKey()
            | "CutBatches" >> beam.FlatMap(_cut_batches, self.batch_docs)
        )


class AnnotateDocuments(beam.PTransform):
    """Batches of Documents -> the same batches with spaCy sentences, entities, noun chunks."""

    def __init__(self, model: str, chunk_chars: int, batch_size: int = 64, entities: bool = True,
                 noun_chunks: bool = True) -> None:
        super().__init__()
        self.fn = _AnnotateFn(model, chunk_chars, batch_size, entities, noun_chunks)

    def expand(self, batches: beam.PCollection) -> dict[str, beam.PCollection]:
        return _outputs(batches, self.fn, "Annotate")


class TokenizeDocuments(beam.PTransform):
    """Batches of Documents -> EncodedDoc (pieces, word starts, sentence starts, piece spans)."""

    def __init__(self, tokenizer_json: str) -> None:
        super().__init__()
        self.tokenizer_json = tokenizer_json

    def expand(self, batches: beam.PCollection) -> dict[str, beam.PCollection]:
        return _outputs(batches, _TokenizeFn(self.tokenizer_json), "Tokenize")


class BuildBlocks(beam.PTransform):
    """EncodedDoc -> (shard index, BlockRows): blocks of <= block_size - 2 pieces, spans inside."""

    def __init__(self, block_size: int, num_shards: int) -> None:
        super().__init__()
        self.block_size, self.num_shards = block_size, num_shards

    def expand(self, docs: beam.PCollection) -> dict[str, beam.PCollection]:
        return _outputs(docs, _BuildBlocksFn(self.block_size, self.num_shards), "CutBlocks")


class Preprocess(beam.PTransform):
    """RawDocument -> shard-keyed blocks, plus the merged `stats` and `dead_letter` collections."""

    def __init__(
        self,
        clean: CleanOptions,
        tokenizer_json: str,
        block_size: int,
        num_shards: int,
        annotate_model: str | None,
        chunk_chars: int,
        batch_docs: int,
        batch_groups: int = 1,
        spans: Any = None,
    ) -> None:
        super().__init__()
        self.clean, self.tokenizer_json = clean, tokenizer_json
        self.block_size, self.num_shards = block_size, num_shards
        self.annotate_model, self.chunk_chars, self.batch_docs = annotate_model, chunk_chars, batch_docs
        self.batch_groups = batch_groups
        self.spans = spans  # contract.annotate.ModelSpans of annotate_model: which span kinds it gives

    def expand(self, raw: beam.PCollection) -> dict[str, beam.PCollection]:
        stages: list[dict[str, beam.PCollection]] = []
        stages.append(raw | "CleanDocuments" >> CleanDocuments(self.clean))
        batches = stages[-1][MAIN] | "BatchDocuments" >> BatchDocuments(self.batch_docs, self.batch_groups)
        if self.annotate_model:
            ents = self.spans is None or self.spans.entities == AVAILABLE
            nps = self.spans is None or self.spans.noun_phrases == AVAILABLE
            stages.append(batches | "AnnotateDocuments" >> AnnotateDocuments(
                self.annotate_model, self.chunk_chars, entities=ents, noun_chunks=nps))
            batches = stages[-1][MAIN]
        stages.append(batches | "TokenizeDocuments" >> TokenizeDocuments(self.tokenizer_json))
        stages.append(stages[-1][MAIN] | "BuildBlocks" >> BuildBlocks(self.block_size, self.num_shards))
        return {
            "shard_to_blocks": stages[-1][MAIN],
            STATS: [s[STATS] for s in stages] | "MergeStats" >> beam.Flatten(),
            DEAD_LETTER: [s[DEAD_LETTER] for s in stages] | "MergeDeadLetters" >> beam.Flatten(),
        }

