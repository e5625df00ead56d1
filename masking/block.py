"""`Block`: one bare block as the masker takes it, checked once where it is built.

Bare: no [CLS]/[SEP]; every position and span is a piece offset inside the block. (seed, epoch,
block_index) alone decides the block's mask, so the index travels with the block. The given spans are
half-open piece offsets [start, end); the named-entity scheme reads `entity_spans` (one label each),
the noun-phrase scheme reads `noun_phrase_spans`, the other schemes read neither.

Callers that know more about a block subclass it (`masking.corpus.TextBlock`: its document and
character offsets; the trainer's NSP `PairBlock`: where A ends), so the masker takes theirs as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field

import numpy as np

NO_SPANS = np.zeros((0, 2), np.int64)
NO_SPANS.flags.writeable = False  # the shared default: nobody may fill it in place


@dataclass(frozen=True, eq=False)
class Block:
    input_ids: np.ndarray  # int[n] piece ids (their range is checked against the vocabulary by the masker)
    word_start: np.ndarray  # bool[n] True where a piece begins a word
    block_index: int  # >= 0: keys the mask (the trainer's global row id)
    _: KW_ONLY
    entity_spans: np.ndarray = field(default_factory=lambda: NO_SPANS)  # int64[k, 2]
    entity_labels: Sequence[str] = ()  # k spaCy labels, one per entity span
    noun_phrase_spans: np.ndarray = field(default_factory=lambda: NO_SPANS)  # int64[j, 2]

    def __post_init__(self) -> None:
        # Only what is not an array already is converted: building blocks sits on the collator's hot path.
        ids, word_start = self.input_ids, self.word_start
        if type(ids) is not np.ndarray:
            object.__setattr__(self, "input_ids", ids := np.asarray(ids))
        if type(word_start) is not np.ndarray:
            object.__setattr__(self, "word_start", word_start := np.asarray(word_start, bool))
        if len(word_start) != len(ids):
            raise ValueError(
                f"block {self.block_index}: word_start has {len(word_start)} entries, input_ids {len(ids)}"
            )
        if self.block_index < 0:
            raise ValueError("epoch and block indices must be >= 0")
        entities = self.entity_spans
        if entities is not NO_SPANS:
            entities = self._spans("entity_spans")
        if len(self.entity_labels) != len(entities):
            raise ValueError(
                f"block {self.block_index}: {len(entities)} entity spans need as many entity_labels"
            )
        if type(self.entity_labels) is not tuple:
            object.__setattr__(self, "entity_labels", tuple(self.entity_labels))
        if self.noun_phrase_spans is not NO_SPANS:
            self._spans("noun_phrase_spans")

    def _spans(self, name: str) -> np.ndarray:
        """Field `name` as int64[k, 2] (plain lists are accepted), each span non-empty and inside the block."""
        spans = np.asarray(getattr(self, name), dtype=np.int64).reshape(-1, 2)
        object.__setattr__(self, name, spans)
        if len(spans):
            start, end = spans[:, 0], spans[:, 1]
            bad = (start < 0) | (end > len(self.input_ids)) | (start >= end)
            if bad.any():
                s, e = spans[int(np.flatnonzero(bad)[0])]
                raise ValueError(
                    f"block {self.block_index}: span [{int(s)}, {int(e)}) is empty or outside its "
                    f"{len(self.input_ids)} pieces; spans are half-open piece offsets inside the bare block"
                )
        return spans
