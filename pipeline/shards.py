"""The shard writer: the blocks of one planned input range, streamed into Arrow IPC files.

A range writes one or more shards, `shard-RRRRR-PPPP.arrow` (R: the range's index in the read plan,
P: the part within the range), rolling to the next part once the documents written into the current
one held `target_input_bytes` of input. Rows are written in record batches of ROWS_PER_BATCH as they
come, so the writer holds at most one record batch of blocks whatever the shard's size; a range that
yields no block still writes one (empty) shard, so every range is accounted for in the manifest.

Safe under bundle retries and duplicate attempts: each attempt writes under its own temp name, the
checksum is taken from the bytes as they are written, the temp file is read back and checked against
it before the rename, and the final name and bytes depend only on the range's input, so two
attempts that both finish rename identical files to the same name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from contract.rundir import HashingWriter
from contract.schema import (
    BLOCK_SCHEMA,
    ENTITY_SPAN,
    NOUN_PHRASE_SPAN,
    ShardInfo,
    range_shard_name,
    stream_sha256,
)
from pipeline.encode import BlockRows
from pipeline.outdir import join, temp_name

ROWS_PER_BATCH = 1024  # record batch size inside a shard (fixed, so bytes do not depend on runs)


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


def piece_counts(path: str, vocab_size: int) -> np.ndarray:
    """int64[vocab_size]: how often each piece occurs in one shard (memory-mapped, one batch at a time)."""
    counts = np.zeros(vocab_size, np.int64)
    with pa.memory_map(path, "r") as source:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            ids = reader.get_batch(i).column("input_ids").flatten().to_numpy()
            counts += np.bincount(ids, minlength=vocab_size)
    return counts


def sha256_of(path: str) -> tuple[int, str]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return stream_sha256(f)


class _OpenShard:
    def __init__(self, path: str) -> None:
        self.path, self.tmp = path, temp_name(path)
        self.file = FileSystems.create(self.tmp)
        self.sink = HashingWriter(self.file)  # closed by finish(), after the writer
        self.writer = pa.ipc.new_file(self.sink, BLOCK_SCHEMA)
        self.rows = self.tokens = self.input_bytes = 0

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table, max_chunksize=ROWS_PER_BATCH)
        self.rows += table.num_rows
        ids = table.column("input_ids")
        self.tokens += sum(len(c.flatten()) for c in ids.chunks)  # .values ignores a slice

    def finish(self) -> ShardInfo:
        self.writer.close()
        self.file.close()
        size, digest = sha256_of(self.tmp)  # what is on storage, not what we meant to write
        if (size, digest) != (self.sink.size, self.sink.sha.hexdigest()):
            raise OSError(f"{self.tmp}: read back {size} bytes, sha256 {digest[:12]}…; wrote {self.sink.size}, "
                          f"{self.sink.sha.hexdigest()[:12]}…")
        FileSystems.rename([self.tmp], [self.path])
        return ShardInfo(self.path.rsplit("/", 1)[-1], self.rows, self.tokens, size, digest)


class RangeShardWriter:
    """BlockRows of one range, in input order -> its shard files (see the module docstring)."""

    def __init__(self, output: str, range_index: int, target_input_bytes: int) -> None:
        self.output, self.range_index, self.target = output, range_index, max(1, target_input_bytes)
        self.shards: list[ShardInfo] = []
        self._open: _OpenShard | None = None
        self._pending: list[BlockRows] = []
        self._pending_rows = 0
        self._tail: pa.Table | None = None  # < ROWS_PER_BATCH rows built but not yet written

    def add(self, rows: BlockRows, input_bytes: int) -> None:
        """One document's blocks; `input_bytes` (its size in the input) drives the roll to a new part."""
        if self._open is None:
            self._open = _OpenShard(join(self.output, range_shard_name(self.range_index, len(self.shards))))
        self._pending.append(rows)
        self._pending_rows += rows.num_blocks
        self._open.input_bytes += input_bytes
        if self._pending_rows >= ROWS_PER_BATCH:
            self._flush(final=False)
        if self._open.input_bytes >= self.target:
            self._roll()

    def _flush(self, final: bool) -> None:
        """Write every whole record batch of the pending rows (all of them when `final`)."""
        assert self._open is not None
        parts = [t for t in (self._tail, blocks_table(self._pending) if self._pending else None) if t is not None]
        self._pending, self._pending_rows, self._tail = [], 0, None
        if not parts:
            return
        table = pa.concat_tables(parts).combine_chunks() if len(parts) > 1 else parts[0]
        whole = table.num_rows if final else table.num_rows - table.num_rows % ROWS_PER_BATCH
        if whole:
            self._open.write(table.slice(0, whole))
        if whole < table.num_rows:
            self._tail = table.slice(whole)

    def _roll(self) -> None:
        assert self._open is not None
        self._flush(final=True)
        self.shards.append(self._open.finish())
        self._open = None

    def close(self) -> list[ShardInfo]:
        """Finish the last part (or write the range's one empty shard); the range's shard infos."""
        if self._open is None and not self.shards:
            self._open = _OpenShard(join(self.output, range_shard_name(self.range_index, 0)))
        if self._open is not None:
            self._roll()
        return self.shards

    def abort(self) -> None:
        """Drop the open temp file (the bundle failed; a retry writes its own)."""
        if self._open is not None:
            try:
                self._open.writer.close()
                self._open.file.close()
                FileSystems.delete([self._open.tmp])
            except Exception:  # noqa: BLE001 - best effort; remove_temporaries sweeps what is left
                pass
            self._open = None
