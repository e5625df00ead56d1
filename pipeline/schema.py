"""The shard contract (GUIDE §3): what the pipeline writes and the trainer / every ablation reads.

An output directory holds:
  shard-00000-of-00008.arrow ...  Arrow IPC *file* format (memory-mappable), one row per block
  manifest.json                   see `Manifest` below
  vocab.txt, tokenizer.json       the tokenizer, copied so a shard directory is self-contained
  unigram_counts.npy              int64[vocab_size]: piece counts over all written blocks
  dead_letter.jsonl               one JSON object per rejected document: source, doc_id, reason, detail
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

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
    return f"shard-{index:05d}-of-{num_shards:05d}.arrow"


@dataclass(frozen=True)
class Manifest:
    """manifest.json, read back. `raw` keeps every field the pipeline wrote."""

    directory: Path
    raw: dict[str, Any]

    @property
    def block_size(self) -> int:
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

    def unigram_counts(self) -> np.ndarray:
        counts = np.load(self.directory / self.raw["unigram_counts"])
        if counts.shape != (self.vocab_size,):
            raise ValueError(
                f"{self.directory}: unigram counts have shape {counts.shape}, expected ({self.vocab_size},)"
            )
        return counts


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
