"""The pipeline's edges: reading inputs and writing shards, all through Beam's FileSystems layer
(local paths, gs://, s3://, hdfs:// alike).

Reading is splittable: every matched file becomes one or more byte ranges (WikiExtractor and JSONL
files are cut every `split_bytes`; a one-document-per-file text file is one range), planned when the
graph is built, so every runner sees them as separate elements (a runner that does not redistribute
on Reshuffle, like Dask's, parallelises over its initial partitions only). Each worker streams its
range line by line, so no worker holds more than one document at a time. The documents are then
grouped into batches by a GroupByKey (`transforms.BatchDocuments`), which spreads a single big input
file (one WikiExtractor dump) over every worker for the expensive stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from contract.rundir import WriteFailed
from contract.schema import (
    BLOCK_SCHEMA,
    DEAD_LETTER,
    ENTITY_SPAN,
    FORMAT_VERSION,
    MANIFEST,
    NOUN_PHRASE_SPAN,
    TOKENIZER_FILE,
    UNIGRAM_FILE,
    VOCAB_FILE,
    shard_name,
)
from pipeline import wikidump
from pipeline.documents import SPLITTABLE, InputSpec, RawDocument, Rejection, frame_file, split_format
from pipeline.encode import BlockRows

SPLIT_BYTES = 64 << 20
ROWS_PER_BATCH = 1024  # record batch size inside a shard (fixed, so bytes do not depend on runs)
_GLOB = re.compile(r"[*?\[]")
_OWN_FILES = re.compile(
    rf"^(shard-\d+-of-\d+\.arrow|.*\.tmp|{re.escape(MANIFEST)}|{re.escape(VOCAB_FILE)}|"
    rf"{re.escape(TOKENIZER_FILE)}|{re.escape(UNIGRAM_FILE)}|{re.escape(DEAD_LETTER)})$"
)


# ---------------------------------------------------------------------------------------------
# Inputs


def parse_input(spec: str, default_format: str) -> InputSpec:
    """'FORMAT:GLOB' or a bare GLOB (then `default_format`); an unknown FORMAT is a ValueError (split_format)."""
    fmt, pattern = split_format(spec, default_format)
    return InputSpec(fmt, _absolute(pattern))


def _absolute(pattern: str) -> str:
    import os

    return pattern if "://" in pattern else os.path.abspath(pattern)


def source_base(pattern: str) -> str:
    """Prefix stripped from matched paths to name a document's source: everything before the
    directory that holds the glob, so 'data/books/gutenberg/*.txt' names 'gutenberg/emma.txt'."""
    m = _GLOB.search(pattern)
    literal_dir = pattern[: pattern.rfind("/", 0, m.start() if m else len(pattern))]
    return literal_dir[: literal_dir.rfind("/") + 1]


@dataclass(frozen=True)
class ReadRange:
    fmt: str
    path: str
    source: str
    start: int
    end: int | None  # None: to the end of the file


def match_inputs(specs: Iterable[InputSpec]) -> list[tuple[InputSpec, list[Any]]]:
    """FileSystems.match every pattern; raises when one matches nothing (a typo must not look like
    an empty corpus)."""
    out = []
    for spec in specs:
        found = sorted(FileSystems.match([spec.pattern])[0].metadata_list, key=lambda m: m.path)
        if not found:
            raise FileNotFoundError(f"--input {spec.fmt}:{spec.pattern} matches no file")
        out.append((spec, found))
    return out


def plan_ranges(matched: list[tuple[InputSpec, list[Any]]], split_bytes: int) -> list[ReadRange]:
    """Byte ranges of every matched file (the output of `match_inputs`)."""
    return [r for spec, metas in matched for r in _file_ranges(spec, metas, split_bytes)]


def _file_ranges(spec: InputSpec, metas: list[Any], split_bytes: int) -> Iterator[ReadRange]:
    base = source_base(spec.pattern)
    for meta in metas:
        source = meta.path[len(base) :] if meta.path.startswith(base) else meta.path.rsplit("/", 1)[-1]
        if spec.fmt == wikidump.FORMAT:  # cut at bz2 stream starts, by the dump's index
            yield from (ReadRange(spec.fmt, meta.path, source, s, e) for s, e in wikidump.plan_dump(meta.path, meta.size_in_bytes, split_bytes))
            continue
        compressed = CompressionTypes.detect_compression_type(meta.path) != CompressionTypes.UNCOMPRESSED
        if not SPLITTABLE[spec.fmt] or compressed or meta.size_in_bytes <= split_bytes:
            yield ReadRange(spec.fmt, meta.path, source, 0, None)
            continue
        for start in range(0, meta.size_in_bytes, split_bytes):
            end = start + split_bytes
            yield ReadRange(spec.fmt, meta.path, source, start, end if end < meta.size_in_bytes else None)


class _ReadRangeFn(beam.DoFn):
    def process(self, rng: ReadRange) -> Iterator[RawDocument]:
        raw = rng.fmt == wikidump.FORMAT  # the dump reader decompresses itself, stream by stream
        with FileSystems.open(rng.path, compression_type=CompressionTypes.UNCOMPRESSED if raw else CompressionTypes.AUTO) as f:
            yield from frame_file(rng.fmt, f, rng.source, rng.start, rng.end)


class ReadDocuments(beam.PTransform):
    """PBegin -> RawDocument for every document of the planned ranges (`plan_ranges`)."""

    def __init__(self, ranges: list[ReadRange]) -> None:
        super().__init__()
        self.ranges = ranges

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "CreateRanges" >> beam.Create(self.ranges)
            | "DistributeRanges" >> beam.Reshuffle()
            | "ReadRanges" >> beam.ParDo(_ReadRangeFn())
        )


# ---------------------------------------------------------------------------------------------
# Output directory


def join(directory: str, name: str) -> str:
    return FileSystems.join(directory, name)


def prepare_output(directory: str, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless `overwrite`; with it, delete what an earlier run
    wrote (so no stale shard survives a change of --num-shards) but refuse foreign files."""
    if not FileSystems.exists(directory):
        FileSystems.mkdirs(directory)
        return
    found = [m.path for m in FileSystems.match([join(directory, "*")])[0].metadata_list]
    if not found:
        return
    if not overwrite:
        raise FileExistsError(f"{directory} is not empty ({len(found)} files); pass --overwrite to replace it")
    foreign = [p for p in found if not _OWN_FILES.match(p.rsplit("/", 1)[-1])]
    if foreign:
        raise FileExistsError(f"{directory} holds files this pipeline did not write, e.g. {foreign[0]}; refusing to mix")
    manifest = [p for p in found if p.endswith("/" + MANIFEST)]
    FileSystems.delete(manifest)  # first, so an interrupted delete never leaves a valid-looking dir
    FileSystems.delete([p for p in found if p not in manifest])


def write_atomic(path: str, data: bytes) -> None:
    """Write under a temporary name, then rename: no partial file is ever visible as `path`."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with FileSystems.create(tmp) as f:
            f.write(data)
        FileSystems.rename([tmp], [path])
    except OSError as e:  # a full disk / I/O error: no partial file left behind, one line naming the file
        with contextlib.suppress(Exception):
            FileSystems.delete([tmp])
        raise WriteFailed(path, e) from None


# ---------------------------------------------------------------------------------------------
# Shards


def blocks_table(docs: list[BlockRows]) -> pa.Table:
    """Columnar build (one numpy concatenate per column), not row-by-row Python objects."""
    ids = [a for d in docs for a in d.input_ids]
    offsets = _offsets([len(a) for a in ids])
    ents = [s for d in docs for s in d.entity_spans]
    nps = [s for d in docs for s in d.noun_phrase_spans]
    ent_flat = [s for row in ents for s in row]
    np_flat = [s for row in nps for s in row]
    entity_col = pa.ListArray.from_arrays(
        _offsets([len(r) for r in ents]),
        pa.StructArray.from_arrays(
            [
                pa.array([s[0] for s in ent_flat], pa.int32()),
                pa.array([s[1] for s in ent_flat], pa.int32()),
                pa.array([s[2] for s in ent_flat], pa.string()),
            ],
            fields=list(ENTITY_SPAN),
        ),
    )
    np_col = pa.ListArray.from_arrays(
        _offsets([len(r) for r in nps]),
        pa.StructArray.from_arrays(
            [pa.array([s[0] for s in np_flat], pa.int32()), pa.array([s[1] for s in np_flat], pa.int32())],
            fields=list(NOUN_PHRASE_SPAN),
        ),
    )
    columns = [
        pa.ListArray.from_arrays(offsets, pa.array(_concat(ids, np.int32))),
        pa.ListArray.from_arrays(offsets, pa.array(_concat([a for d in docs for a in d.word_start], np.bool_))),
        entity_col,
        np_col,
        pa.array([d.doc_id for d in docs for _ in range(d.num_blocks)], pa.string()),
        pa.array([i for d in docs for i in range(d.num_blocks)], pa.int32()),
        pa.array([d.num_blocks for d in docs for _ in range(d.num_blocks)], pa.int32()),
    ]
    return pa.Table.from_arrays(columns, schema=BLOCK_SCHEMA)


def _offsets(lengths: list[int]) -> pa.Array:
    out = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=out[1:])
    return pa.array(out)


def _concat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


def ipc_file_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, BLOCK_SCHEMA) as writer:
        writer.write_table(table, max_chunksize=ROWS_PER_BATCH)
    return sink.getvalue().to_pybytes()


def _doc_order(d: BlockRows) -> tuple[str, bytes]:
    # doc_id first; the pieces break ties, so even duplicate ids sort the same on every run.
    return d.doc_id, d.input_ids[0].tobytes() if d.num_blocks else b""


class _WriteShardFn(beam.DoFn):
    def __init__(self, output: str, num_shards: int, vocab_size: int) -> None:
        self.output, self.num_shards, self.vocab_size = output, num_shards, vocab_size

    def process(self, item: tuple[int, dict[str, Iterable[Any]]]) -> Iterator[dict[str, Any]]:
        index, grouped = item
        docs = sorted(grouped["blocks"], key=_doc_order)
        table = blocks_table(docs)
        data = ipc_file_bytes(table)
        name = shard_name(index, self.num_shards)
        write_atomic(join(self.output, name), data)
        ids = table.column("input_ids").combine_chunks().values.to_numpy()
        yield {
            "index": index,
            "file": name,
            "rows": table.num_rows,
            "tokens": int(len(ids)),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "unigram": np.bincount(ids, minlength=self.vocab_size).astype(np.int64),
        }


class WriteShards(beam.PTransform):
    """(shard index, BlockRows) -> one Arrow IPC file per shard (empty shards included) -> shard info."""

    def __init__(self, output: str, num_shards: int, vocab_size: int) -> None:
        super().__init__()
        self.output, self.num_shards, self.vocab_size = output, num_shards, vocab_size

    def expand(self, keyed_blocks: beam.PCollection) -> beam.PCollection:
        indices = keyed_blocks.pipeline | "CreateShardIndices" >> beam.Create([(i, None) for i in range(self.num_shards)])
        return (
            {"index": indices, "blocks": keyed_blocks}
            | "GroupByShard" >> beam.CoGroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShardFn(self.output, self.num_shards, self.vocab_size))
        )


# ---------------------------------------------------------------------------------------------
# Manifest, dead letters, tokenizer copies


def build_manifest(
    base: dict[str, Any], shards: list[dict[str, Any]], stats: dict[str, int], dead_letters: int
) -> dict[str, Any]:
    """The manifest (GUIDE §3) from shard infos and summed stats; raises if a document is unaccounted."""
    read, written, rejected = (stats.get(k, 0) for k in ("documents_read", "documents_written", "documents_rejected"))
    rows, tokens = sum(s["rows"] for s in shards), sum(s["tokens"] for s in shards)
    problems = []
    if read != written + rejected:
        problems.append(f"documents_read {read} != written {written} + rejected {rejected}")
    if rejected != dead_letters:
        problems.append(f"{rejected} rejections but {dead_letters} dead-letter records")
    if rows != stats.get("blocks", 0) or tokens != stats.get("tokens", 0):
        problems.append(f"shards hold {rows} blocks / {tokens} tokens, stages counted {stats.get('blocks')} / {stats.get('tokens')}")
    if problems:
        raise RuntimeError("accounting failed: " + "; ".join(problems))
    span_keys = ("entity_spans", "noun_phrase_spans", "entity_spans_dropped_at_block_edge",
                 "noun_phrase_spans_dropped_at_block_edge", "spans_without_pieces", "entities_found", "noun_chunks_found")
    cleaning_keys = ("nul_bytes_removed", "markup_removed", "line_endings_normalised", "gutenberg_boilerplate_stripped",
                     "decoded_with_fallback", "unterminated_wiki_doc")
    return {
        **base,
        "format_version": FORMAT_VERSION,
        "shards": [{k: s[k] for k in ("file", "rows", "tokens", "bytes", "sha256")} for s in sorted(shards, key=lambda s: s["index"])],
        "unigram_counts": UNIGRAM_FILE,
        "dead_letter": DEAD_LETTER,
        "totals": {
            "documents_read": read,
            "documents_written": written,
            "documents_rejected": rejected,
            "blocks": rows,
            "tokens": tokens,
            "words": stats.get("words", 0),
        },
        "rejections": {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("rejected.")},
        "skipped": {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("skipped.")},  # wikidump pages
        "cleaning": {k: stats.get(k, 0) for k in cleaning_keys},
        "spans": {k: stats.get(k, 0) for k in span_keys} | {
            # written entity spans per label (transforms.ENTITY_LABEL); masking.stats reports them too
            "entity_labels": {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("entity_label.")},
        },
    }


@dataclass
class ManifestInputs:
    """Everything the manifest is made of, gathered into one element."""

    shards: list[dict[str, Any]]
    stats: dict[str, int]
    dead: list[Rejection]


class _GatherFn(beam.CombineFn):
    """("shard", info) / ("stat", (name, n)) / ("dead", Rejection) -> one ManifestInputs, stats summed."""

    def create_accumulator(self) -> ManifestInputs:
        return ManifestInputs([], {}, [])

    def add_input(self, acc: ManifestInputs, part: tuple[str, Any]) -> ManifestInputs:
        kind, value = part
        if kind == "shard":
            acc.shards.append(value)
        elif kind == "stat":
            acc.stats[value[0]] = acc.stats.get(value[0], 0) + value[1]
        else:
            acc.dead.append(value)
        return acc

    def merge_accumulators(self, accs: Iterable[ManifestInputs]) -> ManifestInputs:
        out = self.create_accumulator()
        for acc in accs:
            out.shards += acc.shards
            out.dead += acc.dead
            for name, n in acc.stats.items():
                out.stats[name] = out.stats.get(name, 0) + n
        return out

    def extract_output(self, acc: ManifestInputs) -> ManifestInputs:
        return acc


def _finalize(
    gathered: ManifestInputs,
    *,
    output: str,
    base: dict[str, Any],
    vocab_txt: str,
    tokenizer_json: str,
) -> Iterator[dict[str, Any]]:
    shards, dead = gathered.shards, gathered.dead
    manifest = build_manifest(base, shards, dict(sorted(gathered.stats.items())), len(dead))
    unigram = np.sum([s["unigram"] for s in shards], axis=0) if shards else np.zeros(base["tokenizer"]["vocab_size"], np.int64)
    buf = io.BytesIO()
    np.save(buf, unigram.astype(np.int64))
    lines = sorted(r.to_json() for r in dead)
    write_atomic(join(output, UNIGRAM_FILE), buf.getvalue())
    write_atomic(join(output, VOCAB_FILE), vocab_txt.encode("utf-8"))
    write_atomic(join(output, TOKENIZER_FILE), tokenizer_json.encode("utf-8"))
    write_atomic(join(output, DEAD_LETTER), "".join(line + "\n" for line in lines).encode("utf-8"))
    # Last: a directory with a manifest is complete.
    write_atomic(join(output, MANIFEST), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    yield manifest


class WriteManifest(beam.PTransform):
    """Shard infos + stats + dead letters -> the side files and manifest.json (written last).

    The three collections are flattened and combined into one element, the main input of the
    final step: no side inputs (the DaskRunner recomputes a side input's whole producer graph).
    """

    def __init__(self, output: str, base: dict[str, Any], vocab_txt: str, tokenizer_json: str) -> None:
        super().__init__()
        self.kwargs = {"output": output, "base": base, "vocab_txt": vocab_txt, "tokenizer_json": tokenizer_json}

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection, beam.PCollection]) -> beam.PCollection:
        shards, stats, dead = inputs
        parts = [
            shards | "TagShards" >> beam.Map(lambda s: ("shard", s)),
            stats | "TagStats" >> beam.Map(lambda s: ("stat", s)),
            dead | "TagDeadLetters" >> beam.Map(lambda d: ("dead", d)),
        ]
        # WriteShards emits one info per shard, empty ones too, so the combined input is never empty.
        return (
            parts
            | "MergeParts" >> beam.Flatten()
            | "Gather" >> beam.CombineGlobally(_GatherFn()).without_defaults()
            | "Finalize" >> beam.FlatMap(_finalize, **self.kwargs)
        )


def read_text(path: str) -> str:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read().decode("utf-8")
