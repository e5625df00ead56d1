"""Collation: bare blocks (masking.Block) -> masked (one vectorised masker call) -> sequences with their special tokens ->
one padded batch of tensors, the `Batch` the model takes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch

from contract.tokenizer import Vocabulary
from masking import Block, MaskedBlock, Masker
from trainer.config import DataConfig, Objective
from trainer.data.plan import round_up


def num_specials(objective: Objective) -> int:
    """Special tokens per sequence: [CLS] x [SEP], or [CLS] a [SEP] b [SEP] for the NSP (pair) objective."""
    return 3 if objective.nsp else 2


IGNORE = -100  # the label of an unused slot (torch's cross_entropy ignore_index default): no target there


class Batch(TypedDict, total=False):
    """One micro-batch as `model(batch)` takes it: B rows padded to width S, M masked slots per row (a fixed
    count per padded width; unused slots hold position 0 and label IGNORE). Every tensor is int64 unless noted."""

    input_ids: torch.Tensor  # [B, S] the sequences, [PAD] after each
    mlm_positions: torch.Tensor  # [B, M] sequence positions of the masked pieces
    mlm_labels: torch.Tensor  # [B, M] their original ids
    sbo_left: torch.Tensor  # [B, M] objective mlm+sbo: the span's left boundary ([CLS] at the edge)
    sbo_right: torch.Tensor  # [B, M] its right boundary ([SEP] at the edge)
    sbo_rel: torch.Tensor  # [B, M] 1-based position of the target in its span
    sbo_labels: torch.Tensor  # [B, M] the target's original id
    token_type_ids: torch.Tensor  # [B, S] objective mlm+nsp (pairs): 1 from B's first piece through the last [SEP]
    nsp_labels: torch.Tensor  # [B] objective mlm+nsp: IS_NEXT / NOT_NEXT
    attention_mask: torch.Tensor  # [B, S] bool; absent when no row is padded (SDPA's fastest path)
    token_index: torch.Tensor  # [T] with attention_mask: flat indices of the real tokens in the [B * S] grid
    cu_seqlens: torch.Tensor  # [B + 1] int32, with attention_mask: cumulative real lengths (varlen attention)
    row_ids: torch.Tensor  # [B] global row ids (BlockStream)
    epoch: torch.Tensor  # [B] the epoch the rows were planned in (BlockStream)


@dataclass(frozen=True, eq=False, kw_only=True)
class PairBlock(Block):
    """Objective mlm+nsp: A + B as one masker block (bare: the collator adds [CLS] A [SEP] B [SEP])."""

    a_len: int  # A = input_ids[:a_len], B = input_ids[a_len:]
    nsp: int  # IS_NEXT / NOT_NEXT


@dataclass(frozen=True)
class FullSequence:
    """One masked block with its special tokens, every position in sequence coordinates."""

    ids: np.ndarray
    mlm_positions: np.ndarray
    mlm_labels: np.ndarray
    b_start: int | None = None  # pair mode: B's first position (token type 1 from here through the last [SEP])
    # single mode: SBO boundaries, relative positions and labels; the edges -1 / n are [CLS] / [SEP] themselves
    sbo_left: np.ndarray | None = None
    sbo_right: np.ndarray | None = None
    sbo_rel: np.ndarray | None = None
    sbo_labels: np.ndarray | None = None


def with_specials(block: Block, mb: MaskedBlock, v: Vocabulary) -> FullSequence:
    """Bare-block coordinates -> full sequence. Single: [CLS] x [SEP], every position +1. Pair (a PairBlock):
    [CLS] A [SEP] B [SEP], positions in A +1, in B +2."""
    if not isinstance(block, PairBlock):
        return FullSequence(
            np.concatenate([[v.cls], mb.input_ids, [v.sep]]), mb.mlm_positions + 1, mb.mlm_labels,
            sbo_left=mb.sbo_left + 1, sbo_right=mb.sbo_right + 1, sbo_rel=mb.sbo_rel, sbo_labels=mb.sbo_labels,
        )
    a = block.a_len
    ids = np.concatenate([[v.cls], mb.input_ids[:a], [v.sep], mb.input_ids[a:], [v.sep]])
    pos = mb.mlm_positions + np.where(mb.mlm_positions < a, 1, 2)
    return FullSequence(ids, pos, mb.mlm_labels, b_start=a + 2)


def collate_blocks(blocks: Sequence[Block], masker: Masker, vocab: Vocabulary, cfg: DataConfig, max_len: int,
                   epoch: int, objective: Objective = Objective.MLM_SBO) -> Batch:
    """Bare blocks (PairBlocks for objective mlm+nsp; their block_index, the global row id, keys the masks) ->
    one padded batch, masked in one vectorised masker call, with the targets of `objective`'s heads.
    `row_ids` / `epoch` are the stream's to add."""
    masked = masker.mask_batch(blocks, epoch=epoch)
    seqs = [with_specials(b, mb, vocab) for b, mb in zip(blocks, masked, strict=True)]
    b = len(seqs)
    seq_len = min(round_up(max(len(s.ids) for s in seqs), cfg.pad_to_multiple), max_len)
    most = max(len(s.mlm_positions) for s in seqs)
    # Fixed slot count per padded length (static shapes per bucket), grown only if a scheme overshoots.
    slots = round_up(max(math.ceil(masker.config.mask_ratio * seq_len), most, 1), 8)
    pair, sbo = objective.nsp, objective.sbo

    def grid(width: int, fill: int = 0) -> np.ndarray:
        return np.full((b, width), fill, np.int64)

    input_ids, attention_mask = grid(seq_len, vocab.pad), np.zeros((b, seq_len), bool)
    mlm_positions, mlm_labels = grid(slots), grid(slots, IGNORE)
    sbo_left, sbo_right, sbo_rel, sbo_labels = grid(slots), grid(slots), grid(slots), grid(slots, IGNORE)
    token_type_ids = grid(seq_len)
    for i, s in enumerate(seqs):
        n, m = len(s.ids), len(s.mlm_positions)
        input_ids[i, :n] = s.ids
        attention_mask[i, :n] = True
        mlm_positions[i, :m] = s.mlm_positions
        mlm_labels[i, :m] = s.mlm_labels
        if sbo:
            k = len(s.sbo_labels)
            sbo_left[i, :k], sbo_right[i, :k], sbo_rel[i, :k], sbo_labels[i, :k] = (
                s.sbo_left, s.sbo_right, s.sbo_rel, s.sbo_labels)
        if pair:
            token_type_ids[i, s.b_start : n] = 1

    t = torch.from_numpy
    batch = Batch(input_ids=t(input_ids), mlm_positions=t(mlm_positions), mlm_labels=t(mlm_labels))
    if sbo:
        batch.update(sbo_left=t(sbo_left), sbo_right=t(sbo_right), sbo_rel=t(sbo_rel), sbo_labels=t(sbo_labels))
    if pair:
        batch.update(token_type_ids=t(token_type_ids), nsp_labels=t(np.array([bb.nsp for bb in blocks], np.int64)))
    if not attention_mask.all():  # no key at all when nothing is padded: SDPA's fastest path
        # For unpadded (varlen) attention: where the real tokens sit in the flattened [b * seq_len] grid,
        # and the cumulative sequence lengths (computed here, in the worker: no host sync on the GPU side).
        batch.update(
            attention_mask=t(attention_mask), token_index=t(np.flatnonzero(attention_mask)),
            cu_seqlens=t(np.concatenate([[0], np.cumsum(attention_mask.sum(1))]).astype(np.int32)),
        )
    return batch
