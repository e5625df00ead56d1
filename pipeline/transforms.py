"""The pipeline's composite PTransforms that do no I/O (reading and writing live in pipeline.io).

Each stage sends rejected documents to a tagged `dead_letter` output and its event counts to a
tagged `stats` output (as (name, n) pairs): the manifest's accounting is computed from data, so it
is exact on every runner, and the same counts also go to Beam metrics for monitoring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from pipeline.documents import CleanOptions, Document, RawDocument, Rejection, clean_document
from pipeline.encode import EncodedDoc, encode_segmented, rule_sentence_starts, safe_starts, to_blocks

NAMESPACE = "pipeline"
STATS = "stats"
DEAD_LETTER = "dead_letter"


def count(name: str, n: int = 1) -> TaggedOutput:
    """Count an event both as a Beam metric and as a `stats` element for the manifest."""
    Metrics.counter(NAMESPACE, name).inc(n)
    return TaggedOutput(STATS, (name, n))


def reject(rej: Rejection) -> Iterator[TaggedOutput]:
    yield count("documents_rejected")
    yield count(f"rejected.{rej.reason}")
    yield TaggedOutput(DEAD_LETTER, rej)


def shard_of(doc_id: str, num_shards: int) -> int:
    """Stable across processes and machines (unlike hash(), which is salted per process)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big") % num_shards


class _CleanFn(beam.DoFn):
    def __init__(self, opts: CleanOptions) -> None:
        self.opts = opts

    def process(self, raw: RawDocument) -> Iterator[Any]:
        yield count("documents_read")
        out = clean_document(raw, self.opts)
        if isinstance(out, Rejection):
            yield from reject(out)
            return
        for name, n in sorted(out.flags.items()):
            yield count(name, n)
        yield out


class _AnnotateFn(beam.DoFn):
    """spaCy once per worker (setup), one nlp.pipe per batch of documents."""

    def __init__(self, model: str, chunk_chars: int, batch_size: int) -> None:
        self.model, self.chunk_chars, self.batch_size = model, chunk_chars, batch_size
        self.nlp: Any = None

    def setup(self) -> None:
        from pipeline.annotate import load_nlp

        self.nlp = load_nlp(self.model)

    def process(self, batch: list[Document]) -> Iterator[Any]:
        from pipeline.annotate import annotate

        anns = annotate(self.nlp, [d.text for d in batch], self.chunk_chars, self.batch_size)
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
        from tokenizers import Tokenizer

        from pipeline.encode import continuation_table

        self.tok = Tokenizer.from_str(self.tokenizer_json)
        self.continuation = continuation_table(self.tok)

    def process(self, batch: list[Document]) -> Iterator[Any]:
        from pipeline.align import char_to_piece_spans

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
        yield count("noun_phrase_spans", sum(len(s) for s in rows.noun_phrase_spans))
        for name, n in dropped.items():
            if n:
                yield count(name, n)
        yield shard_of(doc.doc_id, self.num_shards), rows


def _outputs(pcoll: beam.PCollection, fn: beam.DoFn, label: str) -> dict[str, beam.PCollection]:
    res = pcoll | label >> beam.ParDo(fn).with_outputs(STATS, DEAD_LETTER, main="main")
    return {"main": res.main, STATS: res[STATS], DEAD_LETTER: res[DEAD_LETTER]}


class CleanDocuments(beam.PTransform):
    """RawDocument -> Document: decode (or dead-letter invalid UTF-8), parse JSON, clean."""

    def __init__(self, opts: CleanOptions) -> None:
        super().__init__()
        self.opts = opts

    def expand(self, raw: beam.PCollection) -> dict[str, beam.PCollection]:
        return _outputs(raw, _CleanFn(self.opts), "Clean")


class AnnotateDocuments(beam.PTransform):
    """Batches of Documents -> the same batches with spaCy sentences, entities, noun chunks."""

    def __init__(self, model: str, chunk_chars: int, batch_size: int = 64) -> None:
        super().__init__()
        self.fn = _AnnotateFn(model, chunk_chars, batch_size)

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
    ) -> None:
        super().__init__()
        self.clean, self.tokenizer_json = clean, tokenizer_json
        self.block_size, self.num_shards = block_size, num_shards
        self.annotate_model, self.chunk_chars, self.batch_docs = annotate_model, chunk_chars, batch_docs

    def expand(self, raw: beam.PCollection) -> dict[str, beam.PCollection]:
        stages: list[dict[str, beam.PCollection]] = []
        stages.append(raw | "CleanDocuments" >> CleanDocuments(self.clean))
        # Batch membership depends on bundling, but every result depends on one document only,
        # so output stays deterministic.
        batches = stages[-1]["main"] | "BatchDocuments" >> beam.BatchElements(
            min_batch_size=self.batch_docs, max_batch_size=self.batch_docs
        )
        if self.annotate_model:
            stages.append(batches | "AnnotateDocuments" >> AnnotateDocuments(self.annotate_model, self.chunk_chars))
            batches = stages[-1]["main"]
        stages.append(batches | "TokenizeDocuments" >> TokenizeDocuments(self.tokenizer_json))
        stages.append(stages[-1]["main"] | "BuildBlocks" >> BuildBlocks(self.block_size, self.num_shards))
        return {
            "shard_to_blocks": stages[-1]["main"],
            STATS: [s[STATS] for s in stages] | "MergeStats" >> beam.Flatten(),
            DEAD_LETTER: [s[DEAD_LETTER] for s in stages] | "MergeDeadLetters" >> beam.Flatten(),
        }


def sum_stats(stats: beam.PCollection) -> beam.PCollection:
    return stats | "SumStats" >> beam.CombinePerKey(sum)
