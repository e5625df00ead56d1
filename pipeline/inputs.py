"""Inputs: `--input [FORMAT:]GLOB` -> matched files -> planned byte ranges -> raw documents, all
through Beam's FileSystems layer (local paths, gs://, s3://, hdfs:// alike).

Reading is splittable: every matched file becomes one or more byte ranges, planned when the graph is
built (a glob that matches nothing fails before any worker starts, and every runner sees the ranges
as separate elements to distribute; a runner that does not redistribute on Reshuffle, like Dask's,
parallelises over its initial partitions only). A range is then read, and processed, by one DoFn
call (pipeline.transforms.ProcessRanges) as a stream: no worker holds more than a batch of documents.

The seam for an input format: an `InputFormat` decides how one file is planned into ranges (`plan`)
and how one range is read into records (`read`); `INPUT_FORMATS` maps format names to them
(`wikidump`: pipeline/wikidump.py's `plan_dump` / `frame_dump`). Everything downstream of `read_range`
is format-blind except for the two non-document records a dump yields (`PageSkip`, `StreamBreak`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import wikidump
from pipeline.documents import FORMATS, SPLITTABLE, InputSpec, RawDocument, frame_file, split_format

SPLIT_BYTES = 64 << 20
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ReadRange:
    """One planned unit of work: the documents that begin in [start, end) of one file.

    `index` is the range's position in the whole read plan (inputs in command-line order, files
    sorted by path, ranges by offset): it names the range's shards, so output names depend only on
    the inputs and --split-bytes, never on which worker ran what or when.
    """

    fmt: str
    path: str
    source: str
    start: int
    end: int | None  # None: to the end of the file
    index: int = 0


@dataclass(frozen=True)
class FileMeta:
    """What planning knows about one matched file."""

    path: str
    size: int
    compressed: bool


@dataclass(frozen=True)
class InputFormat:
    """How one input format is planned and read (see the module docstring)."""

    # file -> [(start, end or None)], in offset order; must cover the file exactly once
    plan: Callable[[FileMeta, int], list[tuple[int, int | None]]]
    # (range, open binary stream) -> the documents that begin inside the range
    read: Callable[[ReadRange, BinaryIO], Iterator[RawDocument]]
    raw_bytes: bool = False  # True: the reader decompresses itself (open the file as stored)


def _byte_ranges(splittable: bool) -> Callable[[FileMeta, int], list[tuple[int, int | None]]]:
    def plan(meta: FileMeta, split_bytes: int) -> list[tuple[int, int | None]]:
        if not splittable or meta.compressed or meta.size <= split_bytes:
            return [(0, None)]
        starts = range(0, meta.size, split_bytes)
        return [(s, s + split_bytes if s + split_bytes < meta.size else None) for s in starts]

    return plan


def _framed(fmt: str) -> Callable[[ReadRange, BinaryIO], Iterator[RawDocument]]:
    # frame_file: a file that frames into no document is a counted dead letter, never silence
    return lambda rng, stream: frame_file(fmt, stream, rng.source, rng.start, rng.end)


INPUT_FORMATS: dict[str, InputFormat] = {f: InputFormat(_byte_ranges(SPLITTABLE[f]), _framed(f)) for f in FORMATS}
# Wikipedia's dumps: cut at bz2 stream starts by the dump's index, decompressed stream by stream.
INPUT_FORMATS[wikidump.FORMAT] = InputFormat(
    lambda meta, split_bytes: wikidump.plan_dump(meta.path, meta.size, split_bytes), _framed(wikidump.FORMAT), raw_bytes=True
)


def parse_input(spec: str, default_format: str) -> InputSpec:
    """'FORMAT:GLOB' or a bare GLOB (then `default_format`); an unknown FORMAT is a ValueError (split_format)."""
    fmt, pattern = split_format(spec, default_format)
    return InputSpec(fmt, _absolute(pattern))


def _absolute(pattern: str) -> str:
    return pattern if "://" in pattern else os.path.abspath(pattern)


def source_base(pattern: str) -> str:
    """Prefix stripped from matched paths to name a document's source: everything before the
    directory that holds the glob, so 'data/books/gutenberg/*.txt' names 'gutenberg/emma.txt'."""
    m = _GLOB.search(pattern)
    literal_dir = pattern[: pattern.rfind("/", 0, m.start() if m else len(pattern))]
    return literal_dir[: literal_dir.rfind("/") + 1]


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
    """Byte ranges of every matched file (the output of `match_inputs`), numbered in plan order."""
    planned = [r for spec, metas in matched for r in _file_ranges(spec, metas, split_bytes)]
    return [ReadRange(r.fmt, r.path, r.source, r.start, r.end, i) for i, r in enumerate(planned)]


def _file_ranges(spec: InputSpec, metas: list[Any], split_bytes: int) -> Iterator[ReadRange]:
    base = source_base(spec.pattern)
    fmt = INPUT_FORMATS[spec.fmt]
    for meta in metas:
        source = meta.path[len(base) :] if meta.path.startswith(base) else meta.path.rsplit("/", 1)[-1]
        compressed = CompressionTypes.detect_compression_type(meta.path) != CompressionTypes.UNCOMPRESSED
        for start, end in fmt.plan(FileMeta(meta.path, meta.size_in_bytes, compressed), split_bytes):
            yield ReadRange(spec.fmt, meta.path, source, start, end)


def read_range(rng: ReadRange) -> Iterator[RawDocument]:
    """The documents of one planned range, streamed."""
    fmt = INPUT_FORMATS[rng.fmt]
    compression = CompressionTypes.UNCOMPRESSED if fmt.raw_bytes else CompressionTypes.AUTO
    with FileSystems.open(rng.path, compression_type=compression) as f:
        yield from fmt.read(rng, f)
