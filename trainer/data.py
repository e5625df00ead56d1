"""Shards -> masked, padded batches: a deterministic, resumable stream shared by every rank.

The stream is an endless sequence of *global* micro-batches: epoch 0's batches, then epoch 1's, ...
Each epoch's batches are a pure function of (seed, epoch): shuffle the rows, sort windows of rows by
length (bucketing: little padding), cut them into batches by sequence count or token budget, shuffle
the batch order. Global batch j goes to rank j % world; within a rank, local batches go round-robin
to the DataLoader workers, which is exactly the order the DataLoader hands them back in. So:

- every row appears exactly once per epoch across all ranks and workers (nothing dropped at the epoch
  end: ranks simply cross into the next epoch at slightly different micro-batches);
- the data position is one integer, the number of global batches consumed; it does not depend on the
  world size or the number of workers, and resuming at it is exact;
- masks are a pure function of (seed, epoch, global row id) (masking/), so no RNG state lives in the
  workers.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from contract.schema import Manifest, ShardError, open_checked, read_manifest
from contract.tokenizer import Vocabulary, read_vocabulary
from masking import Masker
from trainer.config import DataConfig
from trainer.model import IGNORE

NUM_SPECIALS = {"single": 2, "pair": 3}  # [CLS] x [SEP]  /  [CLS] a [SEP] b [SEP]
IS_NEXT, NOT_NEXT = 0, 1  # HF's next_sentence_label convention


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class ShardSet:
    """Every row of every shard in a manifest, addressed by a global row id (memory-mapped, no copy)."""

    def __init__(self, directory: str | Path, expected_vocab_sha256: str = ""):
        """Every shard is checked against its manifest entry on open (contract.schema.open_checked), token ids
        against the vocabulary when a batch first reads them; sha256: `python -m trainer --verify-shards`."""
        self.manifest: Manifest = read_manifest(directory)
        if expected_vocab_sha256 and expected_vocab_sha256 != self.manifest.vocab_sha256:
            raise ValueError(
                f"{directory}: shards were tokenized with vocabulary {self.manifest.vocab_sha256[:12]}..., "
                f"this run uses {expected_vocab_sha256[:12]}...; re-run the pipeline or point --data elsewhere"
            )
        self.chunks: list[dict[str, pa.Array]] = []
        self._chunk_origin: list[tuple[Path, int]] = []  # (shard file, its first row) per chunk, for messages
        for index, path in enumerate(self.manifest.shard_paths):
            table = open_checked(self.manifest, index)  # size, Arrow schema, rows, tokens vs the manifest
            first = 0
            for i in range(table.column("input_ids").num_chunks):
                self.chunks.append({name: table.column(name).chunk(i) for name in table.column_names})
                self._chunk_origin.append((path, first))
                first += len(self.chunks[-1]["input_ids"])
        rows = np.array([len(c["input_ids"]) for c in self.chunks], dtype=np.int64)
        self.chunk_start = np.concatenate([[0], np.cumsum(rows)])
        self._ids = [(c["input_ids"].offsets.to_numpy(), c["input_ids"].values.to_numpy()) for c in self.chunks]
        self._ws_offsets = [c["word_start"].offsets.to_numpy() for c in self.chunks]
        self.lengths = np.concatenate([np.diff(offsets) for offsets, _ in self._ids]).astype(np.int64)
        if len(self.lengths) == 0:
            raise ValueError(f"{directory}: the shards hold no rows")
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

    def doc_id(self, row: int) -> str:
        c, i = self._locate(row)
        return self.chunks[c]["doc_id"][i].as_py()


def split_rows(shards: ShardSet, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): whole documents held out, chosen by a hash of their doc_id, so the
    split does not depend on sharding, order or seed."""
    n = len(shards)
    if holdout_fraction <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    doc_ids = np.concatenate([c["doc_id"].to_numpy(zero_copy_only=False) for c in shards.chunks])
    unique, inverse = np.unique(doc_ids, return_inverse=True)
    u = np.array([int.from_bytes(hashlib.sha256(d.encode()).digest()[:8], "big") / 2**64 for d in unique])
    held = u[inverse] < holdout_fraction
    return np.flatnonzero(~held), np.flatnonzero(held)


class BatchPlan:
    """The global micro-batches of each epoch (lists of row ids), a pure function of (seed, epoch)."""

    def __init__(self, seq_lengths: np.ndarray, rows: np.ndarray, cfg: DataConfig, seed: int, batch_tokens: int = 0):
        if len(rows) == 0:
            raise ValueError("no rows to train on (is data.holdout_fraction too large for this corpus?)")
        self.seq_lengths = seq_lengths  # per global row id, with the special tokens
        self.pool = rows  # the global row ids this plan draws from (the training split)
        self.cfg, self.seed = cfg, seed
        self.batch_tokens = batch_tokens  # padded-token budget per micro-batch; 0: cfg.batch_size sequences
        widest = _round_up(int(seq_lengths.max()), cfg.pad_to_multiple)
        if 0 < batch_tokens < widest:
            raise ValueError(
                f"a micro-batch's token budget {batch_tokens} (data.step_tokens / (world x grad_accum), or "
                f"data.batch_tokens) is smaller than one {widest}-token sequence; raise it or lower train.grad_accum"
            )

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a few epochs per process, freed with the plan
    def epoch(self, epoch: int) -> tuple[np.ndarray, ...]:
        cfg, lengths = self.cfg, self.seq_lengths
        rng = np.random.default_rng([self.seed, epoch, 0xB47C])
        order = self.pool[rng.permutation(len(self.pool))]
        if self.batch_tokens > 0:
            window = max(1, cfg.bucket_window * self.batch_tokens // int(lengths.max()))
        else:
            window = cfg.bucket_window * cfg.batch_size
        batches: list[np.ndarray] = []
        for w in range(0, len(order), window):
            rows = order[w : w + window]
            rows = rows[np.argsort(-lengths[rows], kind="stable")]  # longest first: bucket by length
            batches.extend(self._cut(rows))
        perm = rng.permutation(len(batches))  # mix buckets across the epoch
        return tuple(batches[i] for i in perm)

    def _cut(self, rows: np.ndarray) -> list[np.ndarray]:
        cfg = self.cfg
        if self.batch_tokens <= 0:
            return [rows[i : i + cfg.batch_size] for i in range(0, len(rows), cfg.batch_size)]
        out, start = [], 0
        while start < len(rows):  # rows are sorted longest first, so the first row fixes the padded length
            width = _round_up(int(self.seq_lengths[rows[start]]), cfg.pad_to_multiple)
            count = self.batch_tokens // width
            out.append(rows[start : start + count])
            start += count
        return out

    def locate(self, j: int) -> tuple[int, int]:
        """Global batch j -> (epoch, index within the epoch)."""
        epoch = 0
        while j >= len(self.epoch(epoch)):
            j -= len(self.epoch(epoch))
            epoch += 1
        return epoch, j

    def rows(self, j: int) -> tuple[int, np.ndarray]:
        epoch, i = self.locate(j)
        return epoch, self.epoch(epoch)[i]


def shard_vocab(manifest: Manifest) -> Vocabulary:
    """The shards' tokenizer, checked against the identity the manifest recorded for it."""
    vocab = read_vocabulary(manifest.tokenizer_path)
    if (vocab.size, vocab.sha256) != (manifest.vocab_size, manifest.vocab_sha256):
        raise ShardError(
            manifest.tokenizer_path, f"holds {vocab.size} tokens, sha256 {vocab.sha256[:12]}...; the manifest "
            f"recorded {manifest.vocab_size}, {manifest.vocab_sha256[:12]}...", manifest.directory,
        )
    return vocab


class BlockStream(IterableDataset):
    """This rank's share of the global batch stream, starting at global batch `start` (a multiple of world)."""

    def __init__(
        self, data_dir: str | Path, cfg: DataConfig, *, max_len: int, max_sbo_targets: int, seed: int,
        rank: int = 0, world: int = 1, start: int = 0, sbo: bool = True, grad_accum: int = 1,
    ):
        super().__init__()
        if start % world:
            raise ValueError(f"data position {start} is not a multiple of the world size {world}")
        self.data_dir, self.cfg, self.seed = Path(data_dir), cfg, seed
        self.rank, self.world, self.start = rank, world, start
        self.max_len, self.max_sbo_targets = max_len, max_sbo_targets
        self.sbo = sbo and cfg.mode == "single"  # SBO targets only for a model with the SBO head
        self.shards = ShardSet(data_dir, cfg.vocab_sha256)
        self.vocab = shard_vocab(self.shards.manifest)
        specials = NUM_SPECIALS[cfg.mode]
        if cfg.mode == "single" and int(self.shards.lengths.max()) + specials > max_len:
            raise ValueError(
                f"{data_dir}: blocks up to {int(self.shards.lengths.max())} pieces + [CLS]/[SEP] exceed "
                f"model.max_position {max_len}; re-cut the shards with a smaller block size"
            )
        seq_lengths = np.minimum(self.shards.lengths + specials, max_len)
        self.train_rows, self.heldout_rows = split_rows(self.shards, cfg.holdout_fraction)
        # world x grad_accum fixes the micro-batch budget of data.step_tokens (not the plan's rank split).
        self.plan = BatchPlan(seq_lengths, self.train_rows, cfg, seed, cfg.micro_batch_tokens(world, grad_accum))
        self._masker = None  # built lazily in each worker

    @property
    def masker(self):
        if self._masker is None:  # built lazily, in the worker that uses it
            self._masker = build_masker(
                self.cfg, self.vocab, self.shards.manifest.unigram_counts(), self.max_sbo_targets, self.seed
            )
        return self._masker

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        local = worker
        while True:
            j = self.start + self.rank + self.world * local
            epoch, rows = self.plan.rows(j)
            yield self.collate(epoch, rows)
            local += workers

    # -- one batch -------------------------------------------------------------------------------
    def collate(self, epoch: int, rows: np.ndarray) -> dict[str, torch.Tensor]:
        parts = [self._bare_single(int(r)) if self.cfg.mode == "single" else self._bare_pair(epoch, int(r)) for r in rows]
        batch = collate_blocks(parts, self.masker, self.vocab, self.cfg, self.max_len, epoch, rows, sbo=self.sbo)
        batch["row_ids"] = torch.from_numpy(rows.astype(np.int64))
        batch["epoch"] = torch.full((len(rows),), epoch, dtype=torch.int64)
        return batch

    def _bare_single(self, row: int) -> dict:
        ids, word_start = self.shards.ids(row)
        return {"ids": ids, "word_start": word_start, **self._spans_in(row, 0, len(ids), 0)}

    def _spans_in(self, row: int, lo: int, hi: int, shift: int) -> dict:
        """The row's annotation spans the scheme needs that lie wholly inside [lo, hi), moved by `shift`."""
        column = {"named_entity": "entity_spans", "noun_phrase": "noun_phrase_spans"}.get(self.cfg.masking.scheme)
        if column is None:
            return {}
        spans, labels = self.shards.spans(row, column)
        keep = (spans[:, 0] >= lo) & (spans[:, 1] <= hi)
        spans = spans[keep] + shift
        if column == "noun_phrase_spans":
            return {"noun_phrase_spans": spans}
        return {"entity_spans": spans, "entity_labels": [t for t, k in zip(labels, keep, strict=True) if k]}

    def _bare_pair(self, epoch: int, row: int) -> dict:
        """A + B as one bare sequence: A a prefix of the block cut at a word start; B its true continuation
        or, half the time, the start of a block from another document (BERT's NSP); from (seed, epoch, row)."""
        rng = np.random.default_rng([self.seed, epoch, row, 0x5E9])
        ids, word_start = self.shards.ids(row)
        budget = min(len(ids), self.max_len - 3)
        cuts = np.flatnonzero(word_start[1:budget]) + 1
        a = int(rng.choice(cuts)) if len(cuts) else max(1, budget // 2)
        pool = self.train_rows  # never borrow B from a held-out document
        if rng.random() < 0.5 or len(pool) == 1:
            b_ids, b_ws, nsp = ids[a:budget], word_start[a:budget], IS_NEXT
            b_spans = self._spans_in(row, a, budget, 0)  # B continues A: block coordinates already match
        else:
            doc, other = self.shards.doc_id(row), int(pool[rng.integers(len(pool))])
            for _ in range(10):  # a block of another document; give up after a few tries (tiny corpora)
                if self.shards.doc_id(other) != doc:
                    break
                other = int(pool[rng.integers(len(pool))])
            o_ids, o_ws = self.shards.ids(other)
            take = max(1, budget - a)
            b_ids, b_ws, nsp = o_ids[:take], o_ws[:take], NOT_NEXT
            b_spans = self._spans_in(other, 0, take, a)
        b_ws = b_ws.copy()
        b_ws[:1] = True  # B starts a word
        a_spans = self._spans_in(row, 0, a, 0)  # spans across the A/B cut are dropped
        spans = {k: np.concatenate([a_spans[k], b_spans[k]]) if k.endswith("spans") else a_spans[k] + b_spans[k]
                 for k in a_spans}
        return {
            "ids": np.concatenate([ids[:a], b_ids]).astype(np.int32),
            "word_start": np.concatenate([word_start[:a], b_ws]), "a": a, "nsp": nsp, **spans,
        }


def build_masker(cfg: DataConfig, vocab: Vocabulary, unigram_counts: np.ndarray | None, max_sbo_targets: int, seed: int):
    mcfg = cfg.masking_for(seed=seed, max_sbo_targets=max_sbo_targets)
    return Masker(mcfg, vocab_size=vocab.size, mask_id=vocab.mask, special_ids=vocab.specials, unigram_counts=unigram_counts)


def collate_blocks(parts: list[dict], masker, vocab: Vocabulary, cfg: DataConfig, max_len: int, epoch: int,
                   rows: np.ndarray, sbo: bool = True) -> dict[str, torch.Tensor]:
    """Bare blocks (dicts with ids, word_start, optional spans; pair mode: a, nsp) -> one padded batch.

    Masks in a batch are drawn in one vectorised masker call; rows are the blocks' global ids.
    """
    span_args = {key: [p[key] for p in parts] for key in ("entity_spans", "entity_labels", "noun_phrase_spans") if key in parts[0]}
    masked = masker.mask_batch(
        [p["ids"] for p in parts], [p["word_start"] for p in parts], epoch=epoch, block_indices=rows, **span_args
    )
    seqs = [_with_specials(p, mb, vocab, cfg.mode) for p, mb in zip(parts, masked, strict=True)]
    b = len(seqs)
    seq_len = min(_round_up(max(len(s["ids"]) for s in seqs), cfg.pad_to_multiple), max_len)
    most = max(len(s["mlm_pos"]) for s in seqs)
    # Fixed slot count per padded length (static shapes per bucket), grown only if a scheme overshoots.
    slots = _round_up(max(math.ceil(cfg.masking.mask_ratio * seq_len), most, 1), 8)
    out = {
        "input_ids": np.full((b, seq_len), vocab.pad, np.int64),
        "mlm_positions": np.zeros((b, slots), np.int64),
        "mlm_labels": np.full((b, slots), IGNORE, np.int64),
    }
    sbo = sbo and cfg.mode == "single"
    if sbo:
        out.update(
            sbo_left=np.zeros((b, slots), np.int64), sbo_right=np.zeros((b, slots), np.int64),
            sbo_rel=np.zeros((b, slots), np.int64), sbo_labels=np.full((b, slots), IGNORE, np.int64),
        )
    if cfg.mode == "pair":
        out["token_type_ids"] = np.zeros((b, seq_len), np.int64)
        out["nsp_labels"] = np.array([p["nsp"] for p in parts], np.int64)
    attention_mask = np.zeros((b, seq_len), bool)
    for i, s in enumerate(seqs):
        n, m = len(s["ids"]), len(s["mlm_pos"])
        out["input_ids"][i, :n] = s["ids"]
        attention_mask[i, :n] = True
        out["mlm_positions"][i, :m] = s["mlm_pos"]
        out["mlm_labels"][i, :m] = s["mlm_labels"]
        if sbo:
            k = len(s["sbo_labels"])
            for key in ("sbo_left", "sbo_right", "sbo_rel", "sbo_labels"):
                out[key][i, :k] = s[key]
        if cfg.mode == "pair":
            out["token_type_ids"][i, parts[i]["a"] + 2 : n] = 1
    if not attention_mask.all():  # no key at all when nothing is padded: SDPA's fastest path
        out["attention_mask"] = attention_mask
        # For unpadded (varlen) attention: where the real tokens sit in the flattened [b * seq_len] grid,
        # and the cumulative sequence lengths (computed here, in the worker: no host sync on the GPU side).
        out["token_index"] = np.flatnonzero(attention_mask)
        out["cu_seqlens"] = np.concatenate([[0], np.cumsum(attention_mask.sum(1))]).astype(np.int32)
    return {k: torch.from_numpy(a) for k, a in out.items()}


def _with_specials(part: dict, mb, v: Vocabulary, mode: str) -> dict[str, np.ndarray]:
    """Bare-block coordinates -> full sequence. Single: [CLS] x [SEP], every position +1 and the SBO
    boundaries -1 / n become [CLS] / [SEP] themselves. Pair: [CLS] A [SEP] B [SEP]."""
    if mode == "single":
        return {
            "ids": np.concatenate([[v.cls], mb.input_ids, [v.sep]]),
            "mlm_pos": mb.mlm_positions + 1, "mlm_labels": mb.mlm_labels,
            "sbo_left": mb.sbo_left + 1, "sbo_right": mb.sbo_right + 1,
            "sbo_rel": mb.sbo_rel, "sbo_labels": mb.sbo_labels,
        }
    a = part["a"]
    ids = np.concatenate([[v.cls], mb.input_ids[:a], [v.sep], mb.input_ids[a:], [v.sep]])
    pos = mb.mlm_positions + np.where(mb.mlm_positions < a, 1, 2)
    return {"ids": ids, "mlm_pos": pos, "mlm_labels": mb.mlm_labels}


def build_loader(stream: BlockStream, num_workers: int, pin_memory: bool) -> DataLoader:
    # batch_size=None: the stream yields whole batches. The generator keeps DataLoader's worker seeding
    # off the global torch RNG, so building a loader never shifts the dropout RNG (exact resume).
    return DataLoader(
        stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None, persistent_workers=False,
        generator=torch.Generator().manual_seed(stream.seed), worker_init_fn=_own_process_group if num_workers else None,
    )


def _own_process_group(_worker_id: int) -> None:
    # Schedulers (Slurm, Kubernetes, `kill -- -PGID`) SIGTERM the whole process group. A worker killed
    # by that makes the DataLoader raise in the main process before it can save; in their own group the
    # workers live on until the main process shuts them down (or exits: they watch their parent).
    os.setpgrp()
