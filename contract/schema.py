"""The shard contract (docs/pipeline.md, "Output directory"): what the pipeline writes and the trainer / every ablation reads.

An output directory holds:
  shard-00000-of-00008.arrow ...  Arrow IPC *file* format (memory-mappable), one row per block
  manifest.json                   see `Manifest` below (`read_manifest` opens a directory through it)
  vocab.txt, tokenizer.json       the tokenizer, copied so a shard directory is self-contained
  unigram_counts.npy              int64[vocab_size]: piece counts over all written blocks
  dead_letter.jsonl               one JSON object per rejected document: source, doc_id, reason, detail
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from contract.tokenizer import Vocabulary

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
UNIGRAM_FILE = "unigram_counts.npy"
DEAD_LETTER = "dead_letter.jsonl"

ENTITY_SPAN = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("label", pa.string())])
NOUN_PHRASE_SPAN = pa.struct([("start", pa.int32()), ("end", pa.int32())])

BLOCK_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),  # pieces without [CLS]/[SEP]
        ("word_start", pa.list_(pa.bool_())),  # same length: piece begins a word
        ("entity_spans", pa.list_(ENTITY_SPAN)),  # piece offsets, end exclusive, inside the block
        ("noun_phrase_spans", pa.list_(NOUN_PHRASE_SPAN)),
        ("doc_id", pa.string()),  # "<source file>#<id or title>"
        ("block_index", pa.int32()),  # position of the block in its document
        ("num_blocks", pa.int32()),  # blocks the document has (lets a reader check completeness)
    ]
)


def shard_name(index: int, num_shards: int) -> str:
    """The name shards had before range-local writing (still accepted by --overwrite)."""
    return f"shard-{index:05d}-of-{num_shards:05d}.arrow"


def range_shard_name(range_index: int, part: int) -> str:
    """Part `part` of the shards written from planned input range `range_index` (pipeline.shards)."""
    return f"shard-{range_index:05d}-{part:04d}.arrow"


class ManifestError(ValueError):
    """A field of manifest.json is missing or has the wrong type: one line naming the field (`read_manifest`
    adds the file's path)."""


_JSON_KINDS = {bool: "true/false", int: "an integer", str: "a string", dict: "an object", list: "a list"}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return next((name for kind, name in _JSON_KINDS.items() if isinstance(value, kind)), type(value).__name__)


class _Fields:
    """Typed reads of one JSON object's fields. Required: missing or ill-typed is a ManifestError naming the
    field; optional: absent or null gives the default, as the `.get` readers of older manifests did."""

    def __init__(self, obj: Any, where: str = ""):
        if not isinstance(obj, dict):
            raise ManifestError(f"{f'field {where!r}' if where else 'the manifest'} is {_json_kind(obj)}, expected an object")
        self.obj, self.where = obj, where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def req(self, key: str, kind: type) -> Any:
        if key not in self.obj:
            raise ManifestError(f"field {self.name(key)!r} is missing")
        return self._typed(key, self.obj[key], kind)

    def opt(self, key: str, kind: type, default: Any = None) -> Any:
        value = self.obj.get(key)
        return default if value is None else self._typed(key, value, kind)

    def _typed(self, key: str, value: Any, kind: type) -> Any:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(f"field {self.name(key)!r} is {_json_kind(value)}, expected {_JSON_KINDS[kind]}")
        return value

    def counts(self, key: str) -> dict[str, int] | None:
        """An optional {name: count} object."""
        value = self.opt(key, dict)
        if value is not None:
            inner = _Fields(value, self.name(key))
            for k in value:
                inner.req(k, int)
        return value

    def names(self, key: str) -> tuple[str, ...] | None:
        """An optional list of strings."""
        value = self.opt(key, list)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise ManifestError(f"field {self.name(key)!r} holds {', '.join(sorted({_json_kind(v) for v in value}))}, "
                                "expected strings")
        return None if value is None else tuple(value)


def _plain(value: Any) -> Any:
    """A record's field as JSON: records through their to_json, tuples as lists."""
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return dict(value)
    return value


class _Record:
    """A frozen dataclass written to manifest.json as an object of its fields, every one, by name."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class ShardInfo(_Record):
    """One shard's entry in the manifest: what the writer counted and hashed as it wrote the file."""

    file: str
    rows: int
    tokens: int
    bytes: int
    sha256: str

    @classmethod
    def from_json(cls, d: Any, where: str = "shards[]") -> ShardInfo:
        f = _Fields(d, where)
        return cls(f.req("file", str), f.req("rows", int), f.req("tokens", int), f.req("bytes", int),
                   f.req("sha256", str))


@dataclass(frozen=True)
class TokenizerInfo(_Record):
    """The tokenizer the shards were cut with: its copied file and its identity (see contract.tokenizer)."""

    file: str  # tokenizer.json beside the shards
    vocab_file: str  # vocab.txt beside the shards
    vocab_sha256: str  # tokens_sha256 of the id-ordered vocabulary
    vocab_size: int
    # The normaliser as tokenizer.json serialises it (HF tokenizers' own object, free-form); None: not recorded.
    normalizer: dict[str, Any] | None = None

    @property
    def lowercase(self) -> bool:
        """The tokenizer lower-cases (an uncased model), from the recorded normaliser."""
        return bool((self.normalizer or {}).get("lowercase", False))

    @classmethod
    def from_json(cls, d: Any, where: str = "tokenizer") -> TokenizerInfo:
        f = _Fields(d, where)
        return cls(f.req("file", str), f.req("vocab_file", str), f.req("vocab_sha256", str), f.req("vocab_size", int),
                   f.opt("normalizer", dict))


AVAILABLE = "available"  # a span kind the spaCy model gives; otherwise "unavailable (reason)"


@dataclass(frozen=True)
class SpacyInfo(_Record):
    """The spaCy model that annotated the shards (contract.annotate.ModelSpans.as_manifest). Every field may be
    absent in older manifests (which recorded only model and excluded): a span kind not recorded is available."""

    model: str | None = None
    lang: str | None = None
    version: str | None = None
    excluded: tuple[str, ...] | None = None  # pipeline components left out
    entities: str = AVAILABLE
    noun_phrases: str = AVAILABLE
    entity_labels: tuple[str, ...] | None = None  # the NER component's labels
    label_scheme: str | None = None  # "ontonotes", "wikiner", "none" or "other"
    default_excluded_entity_labels: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, d: Any, where: str = "spacy") -> SpacyInfo:
        f = _Fields(d, where)
        return cls(
            model=f.opt("model", str), lang=f.opt("lang", str), version=f.opt("version", str),
            excluded=f.names("excluded"), entities=f.opt("entities", str, AVAILABLE),
            noun_phrases=f.opt("noun_phrases", str, AVAILABLE), entity_labels=f.names("entity_labels"),
            label_scheme=f.opt("label_scheme", str),
            default_excluded_entity_labels=f.names("default_excluded_entity_labels"),
        )


@dataclass(frozen=True)
class Totals(_Record):
    """The document and block accounting. Blocks and tokens are what every reader checks; the others may be
    absent in a hand-made manifest (a summary then says None)."""

    blocks: int
    tokens: int
    documents_read: int | None = None
    documents_written: int | None = None
    documents_rejected: int | None = None
    words: int | None = None

    @classmethod
    def from_json(cls, d: Any, where: str = "totals") -> Totals:
        f = _Fields(d, where)
        return cls(f.req("blocks", int), f.req("tokens", int), f.opt("documents_read", int),
                   f.opt("documents_written", int), f.opt("documents_rejected", int), f.opt("words", int))


@dataclass(frozen=True)
class SpanCounts(_Record):
    """Span counts over the written blocks (the pipeline's span counters); each may be absent in a hand-made
    manifest (a summary then says None)."""

    entity_spans: int | None = None
    noun_phrase_spans: int | None = None
    entity_spans_dropped_at_block_edge: int | None = None
    noun_phrase_spans_dropped_at_block_edge: int | None = None
    spans_without_pieces: int | None = None
    entities_found: int | None = None
    noun_chunks_found: int | None = None
    entity_labels: dict[str, int] | None = None  # written entity spans per label (masking.stats reports them too)

    @classmethod
    def from_json(cls, d: Any, where: str = "spans") -> SpanCounts:
        f = _Fields(d, where)
        ints = {x.name: f.opt(x.name, int) for x in fields(cls) if x.name != "entity_labels"}
        return cls(**ints, entity_labels=f.counts("entity_labels"))


@dataclass(frozen=True)
class Manifest(_Record):
    """manifest.json: what the pipeline wrote, written (`to_bytes`) and read (`from_json`) through this type.

    Required: format_version, block_size, tokenizer, shards, unigram_counts. The rest may be absent in older or
    hand-made manifests and reads as its default: annotated None (not said: the spans are trusted), spacy None,
    totals / spans None, empty rejections / skipped / cleaning / options.
    """

    format_version: int
    block_size: int  # the pipeline's --block-size (a resume's RunPlan records it)
    tokenizer: TokenizerInfo
    shards: tuple[ShardInfo, ...]
    unigram_counts: str  # the .npy file beside the shards
    annotated: bool | None = None
    spacy: SpacyInfo | None = None  # None: --no-annotate
    # The command line as given (our flags but --output/--overwrite): free-form by nature, so a plain dict.
    options: dict[str, Any] = field(default_factory=dict)
    totals: Totals | None = None
    rejections: dict[str, int] = field(default_factory=dict)  # dead-lettered documents per reason
    skipped: dict[str, int] = field(default_factory=dict)  # wikidump pages that are not articles, per reason
    cleaning: dict[str, int] = field(default_factory=dict)  # documents per cleaning flag (pipeline.counters)
    spans: SpanCounts | None = None
    dead_letter: str | None = None  # the dead-letter file beside the shards

    @classmethod
    def from_json(cls, d: Any) -> Manifest:
        """The record from manifest.json's parsed object; ManifestError (one line, naming the field) when a
        required field is missing or any field has the wrong type."""
        f = _Fields(d)
        spacy, totals, spans = f.opt("spacy", dict), f.opt("totals", dict), f.opt("spans", dict)
        return cls(
            format_version=f.req("format_version", int),
            block_size=f.req("block_size", int),
            tokenizer=TokenizerInfo.from_json(f.req("tokenizer", dict)),
            shards=tuple(ShardInfo.from_json(s, f"shards[{i}]") for i, s in enumerate(f.req("shards", list))),
            unigram_counts=f.req("unigram_counts", str),
            annotated=f.opt("annotated", bool),
            spacy=None if spacy is None else SpacyInfo.from_json(spacy),
            options=f.opt("options", dict, {}),
            totals=None if totals is None else Totals.from_json(totals),
            rejections=f.counts("rejections") or {},
            skipped=f.counts("skipped") or {},
            cleaning=f.counts("cleaning") or {},
            spans=None if spans is None else SpanCounts.from_json(spans),
            dead_letter=f.opt("dead_letter", str),
        )

    def to_bytes(self) -> bytes:
        """manifest.json's bytes (sorted keys, two-space indent, a final newline)."""
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode("utf-8")

    def spans_unavailable(self, column: str) -> str | None:
        """Why the shards hold no spans in `column` (entity_spans / noun_phrase_spans), or None when the
        pipeline annotated them. A masking scheme that reads the column must refuse such shards at start."""
        if self.annotated is False:  # (a manifest that does not say is trusted: older, or hand-made)
            return "the shards were written with --no-annotate"
        kind = {"entity_spans": "entities", "noun_phrase_spans": "noun_phrases"}[column]
        spacy = self.spacy or SpacyInfo()  # older manifests: annotated = available
        status = getattr(spacy, kind)
        return None if status == AVAILABLE else f"{kind} {status} in spaCy model {spacy.model}"


@dataclass(frozen=True)
class ShardDirectory:
    """A shard directory opened through its manifest (`read_manifest`): the record, and the files it names
    found where the directory lies."""

    directory: Path
    manifest: Manifest

    @property
    def shards(self) -> list[ShardInfo]:
        return list(self.manifest.shards)

    @property
    def block_size(self) -> int:
        return self.manifest.block_size

    @property
    def vocab_sha256(self) -> str:
        return self.manifest.tokenizer.vocab_sha256

    @property
    def vocab_size(self) -> int:
        return self.manifest.tokenizer.vocab_size

    @property
    def lowercase(self) -> bool:
        """The shards' tokenizer lower-cases (an uncased model): from the normaliser the manifest records."""
        return self.manifest.tokenizer.lowercase

    @property
    def shard_paths(self) -> list[Path]:
        return [self.directory / s.file for s in self.manifest.shards]

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / self.manifest.tokenizer.file

    def spans_unavailable(self, column: str) -> str | None:
        return self.manifest.spans_unavailable(column)

    def unigram_counts(self) -> np.ndarray:
        counts = np.load(self.directory / self.manifest.unigram_counts)
        if counts.shape != (self.vocab_size,):
            raise ValueError(
                f"{self.directory}: unigram counts have shape {counts.shape}, expected ({self.vocab_size},)"
            )
        return counts

    def vocabulary(self) -> Vocabulary:
        """The tokenizer file this manifest names (vocab.txt or tokenizer.json), checked against the identity
        it recorded: a swapped or edited file is a ShardError, never read as if it fitted."""
        from contract.tokenizer import read_vocabulary  # tokenizers only for the callers that need it

        vocab = read_vocabulary(self.tokenizer_path)
        if (vocab.size, vocab.sha256) != (self.vocab_size, self.vocab_sha256):
            raise ShardError(
                self.tokenizer_path, f"holds {vocab.size} tokens, sha256 {vocab.sha256[:12]}...; the manifest "
                f"recorded {self.vocab_size}, {self.vocab_sha256[:12]}...", self.directory,
            )
        if self.manifest.tokenizer.normalizer is not None and vocab.lowercase != self.lowercase:
            # same pieces, other normaliser: the sha256 of the tokens cannot tell them apart
            raise ShardError(
                self.tokenizer_path, f"{'lower-cases' if vocab.lowercase else 'keeps case'}; the manifest recorded "
                f"a {'lower-casing' if self.lowercase else 'cased'} normaliser", self.directory,
            )
        return vocab


def summarize(manifest: Manifest, where: str) -> str:
    """The one human summary of a manifest (`python -m pipeline` prints it when done, `python -m
    pipeline.inspect` before verifying): settings, the document accounting, rejections per reason,
    cleaning and span counts, one line per shard. Reads no shard; `where` names the directory."""
    m, t, tok = manifest, manifest.totals, manifest.tokenizer
    lines = [
        f"{where}: format {m.format_version}, block size {m.block_size}, annotated {m.annotated}, "
        f"vocab {tok.vocab_size} ({tok.vocab_sha256[:12]}…)",
        f"documents read {t.documents_read} = written {t.documents_written} + rejected "
        f"{t.documents_rejected}; blocks {t.blocks}, tokens {t.tokens}, words {t.words}, "
        f"shards {len(m.shards)}" if t else f"no totals recorded; shards {len(m.shards)}",
    ]
    lines += [f"  rejected {reason}: {n}" for reason, n in sorted(m.rejections.items())]
    lines += [f"  skipped {reason}: {n}" for reason, n in sorted(m.skipped.items())]
    lines += [f"  cleaned {k}: {v}" for k, v in m.cleaning.items() if v]
    sp = m.spans or SpanCounts()
    if m.annotated:
        lines.append(
            f"  spans: {sp.entity_spans} entities, {sp.noun_phrase_spans} noun phrases; dropped at"
            f" block edges {sp.entity_spans_dropped_at_block_edge} / {sp.noun_phrase_spans_dropped_at_block_edge}"
        )
    lines += [f"  {s.file}: {s.rows} rows, {s.tokens} tokens, sha256 {s.sha256[:16]}…" for s in m.shards]
    return "\n".join(lines)


def read_manifest(directory: str | Path) -> ShardDirectory:
    """The shard directory through its manifest; FileNotFoundError without one, ValueError (one line, naming
    the file and the field) when it is not one this code reads."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {MANIFEST}; is this a shard directory written by `python -m pipeline`?")
    raw = json.loads(path.read_text(encoding="utf-8"))
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    try:
        return ShardDirectory(directory, Manifest.from_json(raw))
    except ManifestError as e:
        raise ManifestError(f"{path}: {e}") from None


def open_shard(path: str | Path) -> pa.Table:
    """Memory-map one shard (no copy into process memory)."""
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all()


# -- integrity: a shard is checked against its manifest entry before anything trusts it -----------------
class ShardError(ValueError):
    """A shard disagrees with its manifest; the message is one line naming the file and what to do."""

    def __init__(self, path: str | Path, reason: str, directory: str | Path):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}; {check_hint(directory)}")


def check_hint(directory: str | Path) -> str:
    return (f"check with `python -m pipeline.inspect {directory}` and rebuild with "
            f"`python -m pipeline ... --output {directory} --overwrite`")


def stream_sha256(f: BinaryIO) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of what is left to read in `f`, streamed (a shard or checkpoint never
    sits in memory whole). The caller opens the file: locally, or through Beam's FileSystems."""
    h, size = hashlib.sha256(), 0
    while chunk := f.read(1 << 24):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


def file_sha256(path: str | Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a local file."""
    with open(path, "rb") as f:
        return stream_sha256(f)


def hash_problems(shards: ShardDirectory) -> dict[Path, str]:
    """{shard path: what is wrong} for every shard whose bytes differ from the manifest (missing, size,
    sha256), found without decoding anything: a corrupt file can make Arrow itself fail, so this comes first."""
    problems = {}
    for entry, path in zip(shards.shards, shards.shard_paths, strict=True):
        if not path.is_file():
            problems[path] = f"missing (listed in {MANIFEST})"
            continue
        size, digest = file_sha256(path)
        if size != entry.bytes:
            problems[path] = f"{size} bytes, {MANIFEST} says {entry.bytes} (truncated or rewritten)"
        elif digest != entry.sha256:
            problems[path] = f"sha256 {digest[:12]}… != {MANIFEST} {entry.sha256[:12]}… (corrupt or rewritten)"
    return problems


def open_checked(shards: ShardDirectory, index: int) -> pa.Table:
    """Memory-map shard `index` after the checks that cost no pass over the token data: it exists, has the
    manifest's size, is an Arrow file with the contract's columns, and its offsets are consistent with the
    manifest's row and token counts. ShardError (one line, naming the file) otherwise."""
    entry, path = shards.manifest.shards[index], shards.shard_paths[index]

    def fail(reason: str) -> ShardError:
        return ShardError(path, reason, shards.directory)

    if not path.is_file():
        raise fail(f"missing (listed in {MANIFEST})")
    size = path.stat().st_size
    if size != entry.bytes:
        raise fail(f"{size} bytes, {MANIFEST} says {entry.bytes} (truncated or rewritten)")
    try:
        table = open_shard(path)
        table.validate(full=True)  # offsets and UTF-8 only (O(rows)); token values are checked as they are read
    except (pa.ArrowException, OSError) as e:
        raise fail(f"not a valid Arrow shard ({' '.join(str(e).split())})") from e
    for want in BLOCK_SCHEMA:
        got = table.schema.field(want.name).type if want.name in table.schema.names else None
        if got != want.type:
            raise fail(f"column {want.name!r} is {got or 'missing'}, the shard contract says {want.type}")
    if table.num_rows != entry.rows:
        raise fail(f"{table.num_rows} rows, {MANIFEST} says {entry.rows}")
    tokens = sum(int(c.offsets[-1].as_py()) - int(c.offsets[0].as_py()) for c in table.column("input_ids").chunks)
    if tokens != entry.tokens:
        raise fail(f"{tokens} tokens, {MANIFEST} says {entry.tokens}")
    return table
