"""The shard contract (docs/pipeline.md, "Output directory"): what the pipeline writes and the trainer / every ablation reads.

An output directory holds:
  shard-00000-of-00008.arrow ...  Arrow IPC *file* format (memory-mappable), one row per block
  manifest.json                   see `Manifest` below
  vocab.txt, tokenizer.json       the tokenizer, copied so a shard directory is self-contained
  unigram_counts.npy              int64[vocab_size]: piece counts over all written blocks
  dead_letter.jsonl               one JSON object per rejected document: source, doc_id, reason, detail
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ShardInfo:
    """One shard's entry in the manifest: what the writer counted and hashed as it wrote the file."""

    file: str
    rows: int
    tokens: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "rows": self.rows, "tokens": self.tokens, "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ShardInfo:
        return cls(str(d["file"]), int(d["rows"]), int(d["tokens"]), int(d["bytes"]), str(d["sha256"]))


@dataclass(frozen=True)
class Manifest:
    """manifest.json, read back. `raw` keeps every field the pipeline wrote."""

    directory: Path
    raw: dict[str, Any]

    @property
    def shards(self) -> list[ShardInfo]:
        """The shard entries, read through the type the pipeline writes them with."""
        return [ShardInfo.from_json(s) for s in self.raw["shards"]]

    @property
    def block_size(self) -> int:
        """The pipeline's --block-size (a resume's RunPlan records it)."""
        return int(self.raw["block_size"])

    @property
    def vocab_sha256(self) -> str:
        return self.raw["tokenizer"]["vocab_sha256"]

    @property
    def vocab_size(self) -> int:
        return int(self.raw["tokenizer"]["vocab_size"])

    @property
    def shard_paths(self) -> list[Path]:
        return [self.directory / s["file"] for s in self.raw["shards"]]

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / self.raw["tokenizer"]["file"]

    @property
    def lowercase(self) -> bool:
        """The shards' tokenizer lower-cases (an uncased model): from the normaliser the manifest records."""
        norm = self.raw["tokenizer"].get("normalizer") or {}
        return bool(norm.get("lowercase", False))

    def spans_unavailable(self, column: str) -> str | None:
        """Why the shards hold no spans in `column` (entity_spans / noun_phrase_spans), or None when the
        pipeline annotated them. A masking scheme that reads the column must refuse such shards at start."""
        if self.raw.get("annotated") is False:  # (a manifest that does not say is trusted: older, or hand-made)
            return "the shards were written with --no-annotate"
        kind = {"entity_spans": "entities", "noun_phrase_spans": "noun_phrases"}[column]
        status = (self.raw.get("spacy") or {}).get(kind, "available")  # older manifests: annotated = available
        return None if status == "available" else f"{kind} {status} in spaCy model {self.raw['spacy'].get('model')}"

    def unigram_counts(self) -> np.ndarray:
        counts = np.load(self.directory / self.raw["unigram_counts"])
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
        if self.raw["tokenizer"].get("normalizer") is not None and vocab.lowercase != self.lowercase:
            # same pieces, other normaliser: the sha256 of the tokens cannot tell them apart
            raise ShardError(
                self.tokenizer_path, f"{'lower-cases' if vocab.lowercase else 'keeps case'}; the manifest recorded "
                f"a {'lower-casing' if self.lowercase else 'cased'} normaliser", self.directory,
            )
        return vocab


def summarize(raw: dict[str, Any], where: str) -> str:
    """The one human summary of a manifest (`python -m pipeline` prints it when done, `python -m
    pipeline.inspect` before verifying): settings, the document accounting, rejections per reason,
    cleaning and span counts, one line per shard. Reads no shard; `where` names the directory."""
    t, tok = raw["totals"], raw["tokenizer"]
    lines = [
        f"{where}: format {raw['format_version']}, block size {raw['block_size']}, annotated {raw.get('annotated')}, "
        f"vocab {tok['vocab_size']} ({tok['vocab_sha256'][:12]}…)",
        f"documents read {t.get('documents_read')} = written {t.get('documents_written')} + rejected "
        f"{t.get('documents_rejected')}; blocks {t['blocks']}, tokens {t['tokens']}, words {t.get('words')}, "
        f"shards {len(raw['shards'])}",
    ]
    lines += [f"  rejected {reason}: {n}" for reason, n in sorted(raw.get("rejections", {}).items())]
    lines += [f"  skipped {reason}: {n}" for reason, n in sorted(raw.get("skipped", {}).items())]
    lines += [f"  cleaned {k}: {v}" for k, v in raw.get("cleaning", {}).items() if v]
    sp = raw.get("spans", {})
    if raw.get("annotated"):
        lines.append(
            f"  spans: {sp.get('entity_spans')} entities, {sp.get('noun_phrase_spans')} noun phrases; dropped at"
            f" block edges {sp.get('entity_spans_dropped_at_block_edge')} / {sp.get('noun_phrase_spans_dropped_at_block_edge')}"
        )
    lines += [f"  {s['file']}: {s['rows']} rows, {s['tokens']} tokens, sha256 {s['sha256'][:16]}…" for s in raw["shards"]]
    return "\n".join(lines)


def read_manifest(directory: str | Path) -> Manifest:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {MANIFEST}; is this a shard directory written by `python -m pipeline`?")
    raw = json.loads(path.read_text(encoding="utf-8"))
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    return Manifest(directory, raw)


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


def hash_problems(manifest: Manifest) -> dict[Path, str]:
    """{shard path: what is wrong} for every shard whose bytes differ from the manifest (missing, size,
    sha256), found without decoding anything: a corrupt file can make Arrow itself fail, so this comes first."""
    problems = {}
    for entry, path in zip(manifest.raw["shards"], manifest.shard_paths, strict=True):
        if not path.is_file():
            problems[path] = f"missing (listed in {MANIFEST})"
            continue
        size, digest = file_sha256(path)
        if "bytes" in entry and size != entry["bytes"]:
            problems[path] = f"{size} bytes, {MANIFEST} says {entry['bytes']} (truncated or rewritten)"
        elif digest != entry["sha256"]:
            problems[path] = f"sha256 {digest[:12]}… != {MANIFEST} {entry['sha256'][:12]}… (corrupt or rewritten)"
    return problems


def open_checked(manifest: Manifest, index: int) -> pa.Table:
    """Memory-map shard `index` after the checks that cost no pass over the token data: it exists, has the
    manifest's size, is an Arrow file with the contract's columns, and its offsets are consistent with the
    manifest's row and token counts. ShardError (one line, naming the file) otherwise."""
    entry, path = manifest.raw["shards"][index], manifest.shard_paths[index]

    def fail(reason: str) -> ShardError:
        return ShardError(path, reason, manifest.directory)

    if not path.is_file():
        raise fail(f"missing (listed in {MANIFEST})")
    size = path.stat().st_size
    if "bytes" in entry and size != entry["bytes"]:
        raise fail(f"{size} bytes, {MANIFEST} says {entry['bytes']} (truncated or rewritten)")
    try:
        table = open_shard(path)
        table.validate(full=True)  # offsets and UTF-8 only (O(rows)); token values are checked as they are read
    except (pa.ArrowException, OSError) as e:
        raise fail(f"not a valid Arrow shard ({' '.join(str(e).split())})") from e
    for want in BLOCK_SCHEMA:
        got = table.schema.field(want.name).type if want.name in table.schema.names else None
        if got != want.type:
            raise fail(f"column {want.name!r} is {got or 'missing'}, the shard contract says {want.type}")
    if table.num_rows != entry["rows"]:
        raise fail(f"{table.num_rows} rows, {MANIFEST} says {entry['rows']}")
    tokens = sum(int(c.offsets[-1].as_py()) - int(c.offsets[0].as_py()) for c in table.column("input_ids").chunks)
    if "tokens" in entry and tokens != entry["tokens"]:
        raise fail(f"{tokens} tokens, {MANIFEST} says {entry['tokens']}")
    return table
