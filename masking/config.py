"""`MaskingConfig`: every parameter of every masking scheme, validated once."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from numbers import Integral


class Scheme(enum.StrEnum):
    """The masking schemes of the paper's Table 6 (a str: compares and serialises as its name)."""

    SUBWORD = "subword"
    WHOLE_WORD = "whole_word"
    NAMED_ENTITY = "named_entity"
    NOUN_PHRASE = "noun_phrase"
    GEOMETRIC = "geometric"

    @property
    def span_column(self) -> str | None:
        """The shard column of annotation spans the scheme samples from (contract.schema); None: it reads none."""
        return _SPAN_COLUMN.get(self)


_SPAN_COLUMN = {Scheme.NAMED_ENTITY: "entity_spans", Scheme.NOUN_PHRASE: "noun_phrase_spans"}
SCHEMES = tuple(s.value for s in Scheme)

# spaCy labels for numbers and quantities: the paper samples only non-numerical entity mentions.
NUMERIC_ENTITY_LABELS = ("DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL")


@dataclass(frozen=True)
class MaskingConfig:
    """What to mask and how. Defaults are the paper's SpanBERT settings (arXiv 1907.10529 §3.1)."""

    scheme: Scheme = Scheme.GEOMETRIC
    """One of Scheme (the paper's Table 6); its name as a string is taken too."""
    mask_ratio: float = 0.15
    """Budget: this fraction of the block's maskable pieces (rounded half up, at least 1)."""
    geometric_p: float = 0.2
    """Span length in words ~ Geo(p), truncated to 1..max_span_words and renormalised."""
    max_span_words: int = 10
    mask_prob: float = 0.8
    """Per sampled span: all its pieces become [MASK] with this probability ..."""
    random_prob: float = 0.1
    """... or all become random unigram draws with this one; otherwise they stay unchanged."""
    linguistic_share: float = 0.5
    """named_entity / noun_phrase: share of the budget taken from the given spans."""
    excluded_entity_labels: tuple[str, ...] = NUMERIC_ENTITY_LABELS
    max_sbo_targets: int = 15
    """SBO targets per merged span (the first ones); size of the SBO relative-position table."""
    sbo_edge_spans: bool = True
    """Give SBO targets to spans touching the block edge ([CLS]/[SEP] are their boundaries)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme={self.scheme!r}: choose one of {SCHEMES}")
        object.__setattr__(self, "scheme", Scheme(self.scheme))  # frozen: the one normalisation
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio}: must lie in (0, 1); the paper uses 0.15")
        if not 0.0 < self.geometric_p <= 1.0:
            raise ValueError(f"geometric_p={self.geometric_p}: must lie in (0, 1]; the paper uses 0.2")
        if self.max_span_words < 1:
            raise ValueError(f"max_span_words={self.max_span_words}: must be >= 1; the paper uses 10")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1:
            raise ValueError(
                f"mask_prob={self.mask_prob}, random_prob={self.random_prob}: both must be >= 0 with "
                "a sum <= 1 (the rest is kept unchanged); the paper uses 0.8 and 0.1"
            )
        if not 0.0 <= self.linguistic_share <= 1.0:
            raise ValueError(
                f"linguistic_share={self.linguistic_share}: must lie in [0, 1]; the paper uses 0.5"
            )
        if isinstance(self.excluded_entity_labels, str):
            raise ValueError("excluded_entity_labels: give a tuple of labels, not one string")
        if self.max_sbo_targets < 1:
            raise ValueError(f"max_sbo_targets={self.max_sbo_targets}: must be >= 1 (the reference uses 15)")
        if not isinstance(self.seed, Integral) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed={self.seed!r}: must be an int in [0, 2**64)")

    @property
    def spans_from_annotation(self) -> bool:
        return self.scheme.span_column is not None
