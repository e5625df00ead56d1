"""Real text -> bare 510-piece blocks (with optional spaCy spans), for `masking.stats`, tests and the bench.

Each file is one document, decoded by the pipeline's rule (`contract.text`: UTF-8, else rejected with
its reason unless a fallback codec is given); blocks come from `contract.blocks.cut_blocks` without
sentence information. Entity mentions and noun chunks come from `contract.annotate` (the spans the
shards hold), aligned with `contract.align`. spaCy is loaded only by `contract.annotate.load_nlp`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.align import char_to_piece_spans
from contract.annotate import annotate as annotate_texts
from contract.blocks import cut_blocks
from contract.text import decode
from contract.tokenizer import word_starts
from masking.block import Block


@dataclass(frozen=True, eq=False, kw_only=True)
class TextBlock(Block):
    """A masker `Block` of real text (block_index: its place in the corpus), with where it came from."""

    char_offsets: np.ndarray  # int64[n, 2] into its document's text
    doc: int  # index into the paths it was read from


class RejectedText(ValueError):
    """A file the pipeline would dead-letter; the message is one line: `FILE: reason (detail)`."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        self.path, self.reason, self.detail = Path(path), reason, detail
        super().__init__(f"{path}: {reason} ({detail})")


def read_text(path: str | Path, encoding_fallback: str | None = None) -> str:
    """The file decoded by the pipeline's rule (RejectedText where it would reject the document);
    WikiExtractor's <doc> tag lines dropped."""
    decoded = decode(Path(path).read_bytes(), encoding_fallback)
    if decoded.text is None:
        raise RejectedText(path, decoded.reason or "", decoded.detail)
    lines = decoded.text.splitlines()
    return "\n".join(ln for ln in lines if not (ln.startswith("<doc ") or ln.startswith("</doc>")))


def encode(tokenizer: Any, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids, word_start (from the encoding's word ids), char offsets of one document."""
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, dtype=np.int32)
    return ids, word_starts(enc.word_ids), np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)


def text_blocks(
    tokenizer: Any,
    paths: Sequence[str | Path],
    max_blocks: int | None = None,
    max_pieces: int = 510,
    max_chars: int | None = None,
    encoding_fallback: str | None = None,
    rejected: list[RejectedText] | None = None,
) -> tuple[list[TextBlock], list[str]]:
    """Blocks of the files in order (stopping once `max_blocks` exist) and the documents' texts.

    `max_chars` keeps only the first lines of each file (up to that many characters): a quick slice.
    A file the pipeline would reject raises RejectedText, or, given a `rejected` list, is added to it
    and skipped (its text is "", so `doc` still indexes `paths`).
    """
    blocks: list[TextBlock] = []
    texts: list[str] = []
    for doc, path in enumerate(paths):
        try:
            text = read_text(path, encoding_fallback)
        except RejectedText as e:
            if rejected is None:
                raise
            rejected.append(e)
            texts.append("")
            continue
        if max_chars is not None and len(text) > max_chars:
            cut = text.rfind("\n", 0, max_chars + 1)  # a line ending exactly at the limit fits
            text = text[: cut if cut > 0 else max_chars]
        texts.append(text)
        ids, ws, offsets = encode(tokenizer, text)
        for s, e in cut_blocks(ws, None, max_pieces):
            blocks.append(TextBlock(ids[s:e], ws[s:e], len(blocks), char_offsets=offsets[s:e], doc=doc))
            if max_blocks is not None and len(blocks) >= max_blocks:
                return blocks, texts
    return blocks, texts


def annotate(blocks: Sequence[TextBlock], texts: Sequence[str], nlp: Any) -> list[TextBlock]:
    """The blocks with their entity and noun-chunk spans, from `contract.annotate` run on the lines the
    document's blocks cover (whole lines, so spaCy sees what the pipeline would); same order."""
    out = list(blocks)
    for doc in sorted({b.doc for b in blocks}):
        mine = [i for i, b in enumerate(blocks) if b.doc == doc and len(b.input_ids)]
        if not mine:
            continue
        text = texts[doc]
        lo = text.rfind("\n", 0, min(int(blocks[i].char_offsets[0, 0]) for i in mine)) + 1
        hi = text.find("\n", max(int(blocks[i].char_offsets[-1, 1]) for i in mine))
        hi = len(text) if hi < 0 else hi
        (ann,) = annotate_texts(nlp, [text[lo:hi]])
        ents = [(lo + s, lo + e, label) for s, e, label in ann.entities]
        chunks = [(lo + s, lo + e) for s, e in ann.noun_chunks]
        for i in mine:
            b = blocks[i]
            entity_spans, entity_labels = _inside(b, [(s, e) for s, e, _ in ents], [lab for *_, lab in ents])
            noun_phrase_spans, _ = _inside(b, chunks, [""] * len(chunks))
            out[i] = replace(b, entity_spans=entity_spans, entity_labels=entity_labels,
                             noun_phrase_spans=noun_phrase_spans)
    return out


def _inside(
    block: TextBlock, spans: Iterable[tuple[int, int]], labels: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """Piece spans of the character spans lying wholly inside the block."""
    lo, hi = int(block.char_offsets[0, 0]), int(block.char_offsets[-1, 1])
    keep = [(s, e, lab) for (s, e), lab in zip(spans, labels, strict=True) if s >= lo and e <= hi]
    pieces = char_to_piece_spans(block.char_offsets, [(s, e) for s, e, _ in keep])
    out = [(p, lab) for p, (_, _, lab) in zip(pieces, keep, strict=True) if p is not None]
    arr = np.asarray([p for p, _ in out], dtype=np.int64).reshape(-1, 2)
    return arr, [lab for _, lab in out]
