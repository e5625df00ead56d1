"""Shard access: every row of a shard directory, memory-mapped and checked, addressed by a global row id,
and the held-out split (`split_rows`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from contract.schema import ShardDirectory, ShardError, open_checked, read_manifest
from masking import Block, Scheme


class ShardSet:
    """Every row of every shard in a manifest, addressed by a global row id (memory-mapped, no copy)."""

    def __init__(self, directory: str | Path, expected_vocab_sha256: str = ""):
        """Every shard is checked against its manifest entry on open (contract.schema.open_checked), token ids
        against the vocabulary when a batch first reads them; sha256: `python -m trainer --verify-shards`."""
        self.manifest: ShardDirectory = read_manifest(directory)
        if expected_vocab_sha256 and expected_vocab_sha256 != self.manifest.vocab_sha256:
            raise ValueError(
                f"{directory}: shards were tokenized with vocabulary {self.manifest.vocab_sha256[:12]}..., "
                f"this run uses {expected_vocab_sha256[:12]}...; re-run the pipeline or point --data elsewhere"
            )
        self.chunks: list[dict[str, pa.Array]] = []  # per Arrow record batch: column name -> array
        self._chunk_origin: list[tuple[Path, int]] = []  # (shard file, its first row) per chunk, for messages
        for index, path in enumerate(self.manifest.shard_paths):
            table = open_checked(self.manifest, index)  # size, Arrow schema, rows, tokens vs the manifest
            first = 0
            for i in range(table.column("input_ids").num_chunks):
                self.chunks.append({name: table.column(name).chunk(i) for name in table.column_names})
                self._chunk_origin.append((path, first))
                first += len(self.chunks[-1]["input_ids"])
        rows = np.array([len(c["input_ids"]) for c in self.chunks], dtype=np.int64)
        if rows.sum() == 0:  # before any concatenate: an empty corpus is bad input, named as such
            totals = self.manifest.manifest.totals
            read, rejected = (totals.documents_read, totals.documents_rejected) if totals else (None, None)
            raise ValueError(
                f"{directory}: no blocks ({len(self.manifest.shard_paths)} shards, 0 rows; the pipeline read "
                f"{'?' if read is None else read} documents and rejected {'?' if rejected is None else rejected}, "
                f"see its dead_letter.jsonl)"
            )
        self.chunk_start = np.concatenate([[0], np.cumsum(rows)])
        self._ids = [(c["input_ids"].offsets.to_numpy(), c["input_ids"].values.to_numpy()) for c in self.chunks]
        self._ws_offsets = [c["word_start"].offsets.to_numpy() for c in self.chunks]
        self.lengths = np.concatenate([np.diff(offsets) for offsets, _ in self._ids]).astype(np.int64)
        self._ids_checked = np.zeros(len(self.chunks), dtype=bool)

    def __len__(self) -> int:
        return len(self.lengths)

    def _locate(self, row: int) -> tuple[int, int]:
        c = int(np.searchsorted(self.chunk_start, row, side="right")) - 1
        return c, row - int(self.chunk_start[c])

    def ids(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids int32, word_start bool) of one block, bare (no [CLS]/[SEP])."""
        c, i = self._locate(row)
        if not self._ids_checked[c]:
            self._check_ids(c)
        offsets, values = self._ids[c]
        a, b = int(offsets[i]), int(offsets[i + 1])
        # Arrow packs booleans into bits: this one slice is the only copy a row costs.
        start = int(self._ws_offsets[c][i])
        word_start = self.chunks[c]["word_start"].values.slice(start, b - a).to_numpy(zero_copy_only=False)
        return values[a:b], word_start

    def _check_ids(self, c: int) -> None:
        """Token ids of chunk `c` inside the vocabulary: once per chunk, the first time a batch reads it (a
        flipped byte that slipped past the cheap checks on open must not become an embedding lookup)."""
        offsets, values = self._ids[c]
        ids = values[int(offsets[0]) : int(offsets[-1])]
        bad = np.flatnonzero((ids < 0) | (ids >= self.manifest.vocab_size))
        if len(bad):
            row = int(np.searchsorted(offsets, int(offsets[0]) + bad[0], side="right")) - 1
            path, first = self._chunk_origin[c]
            raise ShardError(
                path, f"row {first + row} holds token id {int(ids[bad[0]])}, outside the vocabulary of "
                f"{self.manifest.vocab_size} ({len(bad)} such ids in its record batch)", self.manifest.directory,
            )
        self._ids_checked[c] = True

    def spans(self, row: int, column: str) -> tuple[np.ndarray, list[str] | None]:
        """(k, 2) int32 half-open piece spans of `entity_spans` / `noun_phrase_spans`, and entity labels."""
        c, i = self._locate(row)
        lst = self.chunks[c][column]
        offsets = lst.offsets.to_numpy()
        a, b = int(offsets[i]), int(offsets[i + 1])
        structs = lst.values.slice(a, b - a)
        se = np.stack([structs.field("start").to_numpy(), structs.field("end").to_numpy()], axis=1).astype(np.int32)
        labels = structs.field("label").to_pylist() if column == "entity_spans" else None
        return se.reshape(-1, 2), labels

    def block(self, row: int, scheme: Scheme, lo: int = 0, hi: int | None = None) -> Block:
        """Pieces [lo, hi) of row `row` (all of it by default) as the masker's input, keyed by the row id, with
        the annotation spans masking `scheme` reads that lie wholly inside, in the slice's coordinates."""
        ids, word_start = self.ids(row)
        if lo or hi is not None:
            ids, word_start = ids[lo:hi], word_start[lo:hi]
        column = Scheme(scheme).span_column
        if column is None:
            return Block(ids, word_start, row)
        spans, labels = self.spans(row, column)
        keep = (spans[:, 0] >= lo) & (spans[:, 1] <= lo + len(ids))
        spans = spans[keep] - lo
        if labels is None:
            return Block(ids, word_start, row, noun_phrase_spans=spans)
        return Block(ids, word_start, row, entity_spans=spans,
                     entity_labels=[t for t, k in zip(labels, keep, strict=True) if k])

    def doc_id(self, row: int) -> str:
        c, i = self._locate(row)
        return self.chunks[c]["doc_id"][i].as_py()

    def doc_ids(self) -> np.ndarray:
        """Every row's doc_id, in row order."""
        return np.concatenate([c["doc_id"].to_numpy(zero_copy_only=False) for c in self.chunks])


def split_rows(shards: ShardSet, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): whole documents held out, chosen by a hash of their doc_id, so the
    split does not depend on sharding, order or seed."""
    n = len(shards)
    if holdout_fraction <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(shards.doc_ids(), return_inverse=True)
    u = np.array([int.from_bytes(hashlib.sha256(d.encode()).digest()[:8], "big") / 2**64 for d in unique])
    held = u[inverse] < holdout_fraction
    return np.flatnonzero(~held), np.flatnonzero(held)

