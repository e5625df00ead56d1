"""The stage counters summed into the manifest: one enum, so a misspelt name fails where it is
written (an AttributeError at import or first use) instead of silently reading 0 in the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Counter(StrEnum):
    DOCUMENTS_READ = "documents_read"
    DOCUMENTS_WRITTEN = "documents_written"
    DOCUMENTS_REJECTED = "documents_rejected"
    BLOCKS = "blocks"
    TOKENS = "tokens"
    WORDS = "words"
    # cleaning (the flag names pipeline.documents.clean_document sets)
    NUL_BYTES_REMOVED = "nul_bytes_removed"
    MARKUP_REMOVED = "markup_removed"
    LINE_ENDINGS_NORMALISED = "line_endings_normalised"
    GUTENBERG_BOILERPLATE_STRIPPED = "gutenberg_boilerplate_stripped"
    DECODED_WITH_FALLBACK = "decoded_with_fallback"
    UNTERMINATED_WIKI_DOC = "unterminated_wiki_doc"
    # spans
    ENTITY_SPANS = "entity_spans"
    NOUN_PHRASE_SPANS = "noun_phrase_spans"
    ENTITY_SPANS_DROPPED_AT_BLOCK_EDGE = "entity_spans_dropped_at_block_edge"
    NOUN_PHRASE_SPANS_DROPPED_AT_BLOCK_EDGE = "noun_phrase_spans_dropped_at_block_edge"
    SPANS_WITHOUT_PIECES = "spans_without_pieces"
    ENTITIES_FOUND = "entities_found"
    NOUN_CHUNKS_FOUND = "noun_chunks_found"


CLEANING = (
    Counter.NUL_BYTES_REMOVED, Counter.MARKUP_REMOVED, Counter.LINE_ENDINGS_NORMALISED,
    Counter.GUTENBERG_BOILERPLATE_STRIPPED, Counter.DECODED_WITH_FALLBACK, Counter.UNTERMINATED_WIKI_DOC,
)
SPANS = (
    Counter.ENTITY_SPANS, Counter.NOUN_PHRASE_SPANS, Counter.ENTITY_SPANS_DROPPED_AT_BLOCK_EDGE,
    Counter.NOUN_PHRASE_SPANS_DROPPED_AT_BLOCK_EDGE, Counter.SPANS_WITHOUT_PIECES, Counter.ENTITIES_FOUND,
    Counter.NOUN_CHUNKS_FOUND,
)


@dataclass
class Counts:
    """Counter -> int, plus rejections per reason; summed per range, then over ranges."""

    by_counter: dict[Counter, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # wikidump pages that are not articles, by reason
    entity_labels: dict[str, int] = field(default_factory=dict)  # written entity spans per label

    def add(self, counter: Counter, n: int = 1) -> None:
        if n:
            self.by_counter[counter] = self.by_counter.get(counter, 0) + n

    def add_flag(self, name: str, n: int) -> None:
        """A cleaning flag by name: Counter(name) raises on a name the enum does not know."""
        self.add(Counter(name), n)

    def reject(self, reason: str) -> None:
        self.add(Counter.DOCUMENTS_REJECTED)
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def merge(self, other: Counts) -> None:
        for c, n in other.by_counter.items():
            self.add(c, n)
        for mine, theirs in ((self.rejected, other.rejected), (self.skipped, other.skipped),
                             (self.entity_labels, other.entity_labels)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n

    def __getitem__(self, counter: Counter) -> int:
        return self.by_counter.get(counter, 0)
