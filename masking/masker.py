"""`Masker`: the public entry point. A `Block` goes in, a `MaskedBlock` (MLM + SBO targets) comes out.

Coordinates are those of the bare block (no [CLS]/[SEP]). The per-block API runs the batch path on a
batch of one, so both give identical results; (seed, epoch, block.block_index) alone decides a block's mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from masking import rng
from masking.block import Block
from masking.config import MaskingConfig, Scheme
from masking.given import take_given_spans
from masking.layout import Layout, build_layout
from masking.replace import Replacer
from masking.sampler import SampledLengths, Selection, pmf_to_cdf, sample_spans, span_length_pmf
from masking.sbo import merge_spans

_ONE_WORD = np.ones(1)  # the length CDF of whole-word and subword masking: ℓ = 1


@dataclass(frozen=True)
class MaskedBlock:
    """One masked block; every array is int32 and indexes the bare block of n pieces."""

    input_ids: np.ndarray  # [n] after replacement
    mlm_positions: np.ndarray  # [m] ascending
    mlm_labels: np.ndarray  # [m] original ids
    sbo_positions: np.ndarray  # [k] subset of mlm_positions
    sbo_left: np.ndarray  # [k] left boundary: -1 is the token before the block ([CLS])
    sbo_right: np.ndarray  # [k] right boundary: n is the token after the block ([SEP])
    sbo_rel: np.ndarray  # [k] 1-based position in its merged span, <= max_sbo_targets
    sbo_labels: np.ndarray  # [k]
    spans: np.ndarray  # [s, 2] merged masked spans [start, end), ascending
    mlm_replacement: np.ndarray  # [m] 0 = [MASK], 1 = random token, 2 = unchanged (replace.MASK/RANDOM/KEEP)
    mlm_span: np.ndarray  # [m] id of the sampled span that masked the piece (the 80/10/10 unit)


@dataclass(frozen=True)
class MaskedBatch:
    """A batch of masked blocks in flat (CSR) form: block b's rows are [x_offsets[b], x_offsets[b+1])."""

    input_ids: np.ndarray
    offsets: np.ndarray  # int64[B+1]
    mlm_positions: np.ndarray
    mlm_labels: np.ndarray
    mlm_replacement: np.ndarray
    mlm_span: np.ndarray
    mlm_offsets: np.ndarray
    sbo_positions: np.ndarray
    sbo_left: np.ndarray
    sbo_right: np.ndarray
    sbo_rel: np.ndarray
    sbo_labels: np.ndarray
    sbo_offsets: np.ndarray
    spans: np.ndarray  # int32[S, 2]
    span_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def blocks(self) -> list[MaskedBlock]:
        def split(a: np.ndarray, off: np.ndarray) -> list[np.ndarray]:
            o = off.tolist()  # plain slicing: np.split costs ~5x more per piece
            return [a[o[i] : o[i + 1]] for i in range(len(o) - 1)]

        cols = {
            "input_ids": split(self.input_ids, self.offsets),
            "spans": split(self.spans, self.span_offsets),
        }
        for name in ("mlm_positions", "mlm_labels", "mlm_replacement", "mlm_span"):
            cols[name] = split(getattr(self, name), self.mlm_offsets)
        for name in ("sbo_positions", "sbo_left", "sbo_right", "sbo_rel", "sbo_labels"):
            cols[name] = split(getattr(self, name), self.sbo_offsets)
        names = [f.name for f in fields(MaskedBlock)]
        return [MaskedBlock(*row) for row in zip(*(cols[n] for n in names), strict=True)]


class Masker:
    def __init__(
        self,
        config: MaskingConfig,
        *,
        vocab_size: int,
        mask_id: int,
        special_ids: Sequence[int],
        unigram_counts: np.ndarray | None = None,
    ) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size={vocab_size}: must be >= 1")
        special = sorted({int(i) for i in special_ids} | {int(mask_id)})
        if special and (special[0] < 0 or special[-1] >= vocab_size):
            raise ValueError(f"special ids {special} must lie in [0, {vocab_size})")
        self.config = config
        self.vocab_size = vocab_size
        self.mask_id = int(mask_id)
        self.is_special = np.zeros(vocab_size, dtype=bool)
        self.is_special[special] = True  # [MASK] included: never masked, never sampled
        self.replacer = Replacer(
            mask_id=self.mask_id,
            is_special=self.is_special,
            unigram_counts=unigram_counts,
            mask_prob=config.mask_prob,
            random_prob=config.random_prob,
        )
        if config.scheme is Scheme.GEOMETRIC:
            self.length_cdf = pmf_to_cdf(span_length_pmf(config.geometric_p, config.max_span_words))
        else:
            self.length_cdf = _ONE_WORD
        self._excluded = frozenset(config.excluded_entity_labels)

    # -- public API ---------------------------------------------------------------------------

    def mask_block(self, block: Block, *, epoch: int) -> MaskedBlock:
        return self.mask_flat([block], epoch=epoch).blocks()[0]

    def mask_batch(
        self, blocks: Sequence[Block], *, epoch: int, sampled_lengths: SampledLengths | None = None
    ) -> list[MaskedBlock]:
        """Mask many blocks at once; block i gets exactly what mask_block(blocks[i], ...) gives."""
        return self.mask_flat(blocks, epoch=epoch, sampled_lengths=sampled_lengths).blocks()

    def mask_flat(
        self, blocks: Sequence[Block], *, epoch: int, sampled_lengths: SampledLengths | None = None
    ) -> MaskedBatch:
        """`mask_batch` without splitting into per-block objects (the fastest form for a collator)."""
        cfg = self.config
        if epoch < 0:
            raise ValueError("epoch and block indices must be >= 0")
        layout = build_layout(blocks, self.is_special, cfg.mask_ratio, every_piece_a_word=cfg.scheme is Scheme.SUBWORD)
        block_indices = np.fromiter((b.block_index for b in blocks), dtype=np.int64, count=len(blocks))
        keys = rng.block_keys(cfg.seed, epoch, block_indices)
        sel = Selection.empty(layout)
        if cfg.spans_from_annotation:
            given = self._given_spans(blocks)
            if given is not None:
                take_given_spans(layout, sel, *given, share=cfg.linguistic_share, keys=keys)
        sample_spans(layout, sel, self.length_cdf, keys, sampled_lengths)
        return self._finish(layout, sel, keys)

    # -- internals ----------------------------------------------------------------------------

    def _given_spans(self, blocks: Sequence[Block]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Flat (block, start, end) of the spans the scheme samples from, numeric entities dropped."""
        named_entity = self.config.scheme is Scheme.NAMED_ENTITY
        parts, owners = [], []
        for b, block in enumerate(blocks):
            spans = block.entity_spans if named_entity else block.noun_phrase_spans
            if not len(spans):
                continue
            if named_entity:
                spans = spans[[lab not in self._excluded for lab in block.entity_labels]]
            parts.append(spans)
            owners.append(np.full(len(spans), b, dtype=np.int64))
        if not parts:
            return None
        spans = np.concatenate(parts)
        return np.concatenate(owners), spans[:, 0], spans[:, 1]

    def _finish(self, layout: Layout, sel: Selection, keys: np.ndarray) -> MaskedBatch:
        words = np.flatnonzero(sel.masked)
        n = layout.word_len[words]
        first = np.cumsum(n) - n
        flat = np.repeat(layout.word_first_piece[words] - first, n) + np.arange(int(n.sum()))  # masked pieces
        block = np.repeat(layout.word_block[words], n)
        pos = flat - layout.offsets[block]
        span_id = np.repeat(sel.span_id[words], n)
        ids = layout.ids.copy()
        action = self.replacer.apply(ids, flat, block, pos, span_id, keys)
        labels = layout.ids[flat]

        t = merge_spans(layout.lengths, block, pos, self.config.max_sbo_targets, self.config.sbo_edge_spans)
        B = layout.n_blocks
        s = t.select
        i32 = np.int32
        return MaskedBatch(
            input_ids=ids,
            offsets=layout.offsets,
            mlm_positions=pos.astype(i32),
            mlm_labels=labels,
            mlm_replacement=action.astype(i32),
            mlm_span=span_id.astype(i32),
            mlm_offsets=_offsets(block, B),
            sbo_positions=pos[s].astype(i32),
            sbo_left=t.left[s].astype(i32),
            sbo_right=t.right[s].astype(i32),
            sbo_rel=t.rel[s].astype(i32),
            sbo_labels=labels[s],
            sbo_offsets=_offsets(block[s], B),
            spans=np.stack([t.span_start, t.span_end], axis=1).astype(i32),
            span_offsets=_offsets(t.span_block, B),
        )


def _offsets(owner: np.ndarray, n_blocks: int) -> np.ndarray:
    """CSR offsets from the (ascending) block number of each row."""
    out = np.zeros(n_blocks + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n_blocks), out=out[1:])
    return out
