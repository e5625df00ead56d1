"""Documents -> word pieces -> blocks (plain Python + numpy; the Beam DoFns call these).

A document is tokenised as a list of *segments* (its sentences) in one `encode_batch` call per
batch of documents. Segments are cut only where the BERT pre-tokeniser would split anyway (at
whitespace or punctuation), so the pieces are exactly those of the whole document, while sentence
starts come for free (the first piece of each segment) and many short inputs keep every tokenizer
thread busy where one whole book would not.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers

from contract.blocks import cut_blocks
from contract.tokenizer import word_starts
from pipeline.counters import Counter


def _char_class(codepoints: list[int]) -> str:
    """A regex character class body of `codepoints` (sorted), as ranges."""
    out, i = [], 0
    while i < len(codepoints):
        j = i
        while j + 1 < len(codepoints) and codepoints[j + 1] == codepoints[j] + 1:
            j += 1
        out.append(re.escape(chr(codepoints[i])) + (f"-{re.escape(chr(codepoints[j]))}" if j > i else ""))
        i = j + 1
    return "".join(out)


# Every Unicode upper- and titlecase letter (categories Lu, Lt; all lie below U+20000): É, À, Ä, Ω, Я, ...
_UPPER = _char_class([c for c in range(0x20000) if unicodedata.category(chr(c)) in ("Lu", "Lt")])
_OPENING = "\"'\u201c\u2018(\\[\u00ab\u201e\u201a\u00bf\u00a1"  # " ' “ ‘ ( [ « „ ‚ ¿ ¡
_CLOSING = "\"'\u201d\u2019)\\]\u00bb"  # " ' ” ’ ) ] »
_NO_BREAK = "\u00a0\u202f"  # French typography: (narrow) no-break space before ? ! : ; » and after «

# The cheap sentence rule (used with --no-annotate; spaCy's sentences replace it otherwise):
# a sentence starts at the beginning of a paragraph (after a blank line) or after ". ", "! ", "? "
# (closing quotes/brackets allowed, each after an optional no-break space: "?\u00a0»"; » also after a
# plain space) when the next word starts with an uppercase letter of any script, a digit or an opening
# quote (« „ ‚ ¿ ¡ too, optionally followed by a no-break space, « also by a plain one: "«\u00a0Oui").
# A no-break space before the terminator ("Quoi\u202f?") needs nothing: the terminator is matched.
# Plain spaces around ASCII quotes stay as before, so English text is cut exactly as it always was.
# The terminator is consumed rather than looked behind for: the same match ends (the regex engine
# then only tries the second branch at ".!?" instead of at every character; 2-3x faster).
_RULE = re.compile(
    rf"\n[ \t]*\n\s*|[.!?](?:[ {_NO_BREAK}]?\u00bb|[{_NO_BREAK}]?[{_CLOSING}])*\s+"
    rf"(?=(?:\u00ab[ {_NO_BREAK}]?|[{_OPENING}][{_NO_BREAK}]?)?[{_UPPER}0-9])"
)


def rule_sentence_starts(text: str) -> list[int]:
    """Character offsets where sentences start (always includes 0)."""
    return [0, *(m.end() for m in _RULE.finditer(text) if m.end() < len(text))]


def _is_punct(ch: str) -> bool:
    # BERT's definition: ASCII symbols count as punctuation, plus Unicode category P*.
    o = ord(ch)
    if 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def safe_starts(text: str, starts: Sequence[int]) -> list[int]:
    """Sorted, de-duplicated segment starts, dropping any that would split a pre-token.

    A cut at `s` cannot change BERT pre-tokenisation when the character before or at `s` is
    whitespace or punctuation. Inlined with the cheap whitespace test first: ~10^5 starts per batch,
    and every rule start (and nearly every spaCy one) follows whitespace.
    """
    out = [0]
    n = len(text)
    for s in sorted(set(starts)):
        if 0 < s < n and s > out[-1]:
            a, b = text[s - 1], text[s]
            if a.isspace() or b.isspace() or _is_punct(a) or _is_punct(b):
                out.append(s)
    return out


@dataclass
class EncodedDoc:
    source: str
    doc_id: str
    input_ids: np.ndarray  # int32 [n]
    word_start: np.ndarray  # bool [n]
    sentence_start: np.ndarray  # bool [n]
    entity_spans: list[tuple[int, int, str]] = field(default_factory=list)  # document piece offsets
    noun_phrase_spans: list[tuple[int, int]] = field(default_factory=list)


def continuation_table(tok: Tokenizer) -> np.ndarray | None:
    """bool[vocab]: the piece continues a word. Only for WordPiece behind BERT's pre-tokeniser, where
    "starts a word" is exactly "has no ## prefix" (the reference's definition too; [UNK] stands for
    a whole word). None for any other tokenizer: then word ids are read per encoding."""
    if not isinstance(tok.model, models.WordPiece) or not isinstance(tok.pre_tokenizer, pre_tokenizers.BertPreTokenizer):
        return None
    prefix = tok.model.continuing_subword_prefix
    table = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=bool)
    for piece, i in tok.get_vocab(with_added_tokens=True).items():
        table[i] = piece.startswith(prefix)
    return table


def encode_segmented(
    tok: Tokenizer,
    texts: Sequence[str],
    starts: Sequence[Sequence[int]],
    with_offsets: bool,
    continuation: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Tokenise each text cut at its segment starts; returns (ids, word_start, sentence_start, offsets).

    `continuation` (from `continuation_table`) turns word starts into one vectorised lookup; the
    per-segment Python work is then a few list operations, which matters with ~10^5 segments.
    """
    pieces: list[str] = []
    counts: list[int] = []  # segments per text
    for text, st in zip(texts, starts, strict=True):
        b = [*st, len(text)]
        counts.append(len(st))
        pieces.extend(map(text.__getitem__, map(slice, b[:-1], b[1:])))
    # (encode_batch_fast, which skips offsets, measured no faster on sentence-sized segments.)
    encs = tok.encode_batch(pieces, add_special_tokens=False)
    # One conversion for the whole batch, then numpy slicing per text: each Encoding's `.ids`
    # builds a Python list, so read it exactly once.
    id_lists = [e.ids for e in encs]
    seg_len = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    all_ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=int(seg_len.sum()))
    del id_lists
    all_ws = ~continuation[all_ids] if continuation is not None else None
    seg_end = np.cumsum(seg_len)
    out = []
    k = 0
    for text_starts, n_seg in zip(starts, counts, strict=True):
        lengths = seg_len[k : k + n_seg]
        lo = int(seg_end[k - 1]) if k else 0
        hi = int(seg_end[k + n_seg - 1]) if n_seg else lo
        ids = all_ids[lo:hi]
        if all_ws is not None:
            ws = all_ws[lo:hi]
        else:
            segs = encs[k : k + n_seg]
            ws = np.concatenate([word_starts(e.word_ids) for e in segs]) if segs else np.zeros(0, bool)
        ss = np.zeros(len(ids), dtype=bool)
        seg_first = (np.cumsum(lengths) - lengths)[lengths > 0]
        ss[seg_first] = True
        offs = None
        if with_offsets:
            shifted = [
                np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2) + s0
                for e, s0 in zip(encs[k : k + n_seg], text_starts, strict=False)
            ]
            offs = np.concatenate(shifted) if shifted else np.zeros((0, 2), dtype=np.int64)
        k += n_seg
        out.append((ids, ws, ss, offs))
    return out


@dataclass
class BlockRows:
    """A document's blocks, ready for a shard (columns as in `contract.schema.BLOCK_SCHEMA`)."""

    doc_id: str
    input_ids: list[np.ndarray]
    word_start: list[np.ndarray]
    entity_spans: list[list[tuple[int, int, str]]]
    noun_phrase_spans: list[list[tuple[int, int]]]

    @property
    def num_blocks(self) -> int:
        return len(self.input_ids)


def to_blocks(doc: EncodedDoc, max_pieces: int, min_fill: float = 0.5) -> tuple[BlockRows, dict[Counter, int]]:
    """Cut a document into blocks (contract.blocks rule) and move its spans into them.

    A span is kept in the block that wholly contains it; one that crosses a block edge is dropped
    and counted (masking needs spans inside a block).
    """
    ranges = cut_blocks(doc.word_start, doc.sentence_start, max_pieces, min_fill)
    block_starts = np.array([s for s, _ in ranges], dtype=np.int64)
    ents: list[list[tuple[int, int, str]]] = [[] for _ in ranges]
    nps: list[list[tuple[int, int]]] = [[] for _ in ranges]
    dropped = {Counter.ENTITY_SPANS_DROPPED_AT_BLOCK_EDGE: 0, Counter.NOUN_PHRASE_SPANS_DROPPED_AT_BLOCK_EDGE: 0}
    for spans, dest, key in (
        (doc.entity_spans, ents, Counter.ENTITY_SPANS_DROPPED_AT_BLOCK_EDGE),
        (doc.noun_phrase_spans, nps, Counter.NOUN_PHRASE_SPANS_DROPPED_AT_BLOCK_EDGE),
    ):
        for span in spans:
            s, e = span[0], span[1]
            b = int(np.searchsorted(block_starts, s, side="right")) - 1
            bs, be = ranges[b]
            if e > be:
                dropped[key] += 1
                continue
            dest[b].append((s - bs, e - bs, *span[2:]))
    rows = BlockRows(
        doc.doc_id,
        [doc.input_ids[s:e] for s, e in ranges],
        [doc.word_start[s:e] for s, e in ranges],
        ents,
        nps,
    )
    return rows, dropped
