"""`python -m pipeline.vocab`: train a WordPiece vocabulary (BERT normaliser and pre-tokeniser; cased, or uncased with --lowercase).

Reads the same inputs and cleaning as `python -m pipeline` (documents that the pipeline would
dead-letter are skipped and counted), and writes `vocab.txt` plus `tokenizer.json` into --output.
The special tokens come first, in BERT's order: [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4). With
--bert-layout the file mimics bert-base-cased: [PAD], [unused0..98], [UNK]=100, [CLS], [SEP],
[MASK]=103, so ids of the special tokens match Google's vocabularies. With --lowercase the normaliser is
bert-base-uncased's (lower-case, strip accents): give the pipeline the same flag with --vocab, or its
--tokenizer the tokenizer.json written here, which records the normaliser.

Deterministic: the same input gives the same bytes in every process (`learn_vocab` is the merge loop of
`tokenizers`' WordPieceTrainer with a fixed tie-break; the library's own breaks ties in hash order).

Single process on purpose: a vocabulary is trained on a sample (tens of MB of text), not the corpus.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer

from contract.cli import run_main
from contract.tokenizer import SPECIAL_TOKENS, bert_wordpiece, vocab_list
from pipeline.documents import FORMATS, CleanOptions, Document, RawDocument, clean_document
from pipeline.inputs import match_inputs, parse_input, plan_ranges, read_range

_WHOLE_FILE = 1 << 62  # split_bytes: single-process, so one range per file


def iter_texts(specs: Sequence[str], default_format: str, opts: CleanOptions, stats: Counter[str]) -> Iterator[str]:
    """The cleaned texts of the inputs, read as the pipeline reads them (its read plan, one range per file)."""
    matched = match_inputs([parse_input(s, default_format) for s in specs])
    for rng in plan_ranges(matched, split_bytes=_WHOLE_FILE):
        for raw in read_range(rng):
            if not isinstance(raw, RawDocument):  # a wikidump page that is not an article, or a break
                stats[f"skipped.{raw.reason}"] += 1
                continue
            doc = clean_document(raw, opts)
            stats["documents_read"] += 1
            if isinstance(doc, Document):
                stats["documents_used"] += 1
                yield doc.text
            else:
                stats[f"skipped.{doc.reason}"] += 1


def special_tokens(bert_layout: bool) -> list[str]:
    if not bert_layout:
        return list(SPECIAL_TOKENS)
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    return [pad, *(f"[unused{i}]" for i in range(99)), unk, cls, sep, mask]


def count_words(texts: Iterable[str], tok: Tokenizer) -> Counter[str]:
    """Words as the tokenizer sees them: its normaliser, then its pre-tokeniser."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
    return counts


def learn_vocab(
    word_counts: Mapping[str, int], vocab_size: int, min_frequency: int, specials: Sequence[str], prefix: str = "##"
) -> list[str]:
    """WordPiece pieces learned as `tokenizers`' WordPieceTrainer learns them (its BPE merge loop: specials,
    the alphabet, the `##` alphabet, then the most frequent pair merged until `vocab_size`), with every
    tie broken by a fixed order: characters sorted, equal counts by the smaller pair of ids.

    Why not the library's trainer: it numbers the `##x` pieces in hash-map order, which is random per
    process, and breaks count ties by those numbers, so the same input gave a different vocabulary
    (not only different ids) in every run.
    """
    pieces: list[str] = []
    ids: dict[str, int] = {}

    def add(piece: str) -> int:
        if piece not in ids:
            ids[piece] = len(pieces)
            pieces.append(piece)
        return ids[piece]

    for t in specials:
        add(t)
    words = sorted(w for w in word_counts if w)  # the pre-tokeniser yields no empty word; be safe
    for c in sorted({c for w in words for c in w}):
        add(c)
    for c in sorted({c for w in words for c in w[1:]}):
        add(prefix + c)
    seqs = [[ids[w[0]], *(ids[prefix + c] for c in w[1:])] for w in words]
    weight = [word_counts[w] for w in words]
    pair_count: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # words that held the pair (may be stale)
    for i, seq in enumerate(seqs):
        for pair in itertools.pairwise(seq):
            pair_count[pair] += weight[i]
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pair_count.items()]
    heapq.heapify(heap)
    while len(pieces) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        n = pair_count.get(pair, 0)
        if n != -neg:  # a stale entry: the count fell since it was pushed
            if n > 0:
                heapq.heappush(heap, (-n, pair))
            continue
        if n < max(1, min_frequency):
            break
        a, b = pieces[pair[0]], pieces[pair[1]]
        new = add(a + (b[len(prefix) :] if b.startswith(prefix) else b))
        touched: set[tuple[int, int]] = set()
        for i in sorted(where.pop(pair)):
            seq, w = seqs[i], weight[i]
            if len(seq) < 2:
                continue
            merged: list[int] = []
            j = 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == pair[0] and seq[j + 1] == pair[1]:
                    merged.append(new)
                    j += 2
                else:
                    merged.append(seq[j])
                    j += 1
            if len(merged) == len(seq):
                continue
            for p in itertools.pairwise(seq):
                pair_count[p] -= w
            for p in itertools.pairwise(merged):
                pair_count[p] += w
                where[p].add(i)
                touched.add(p)
            seqs[i] = merged
        pair_count.pop(pair, None)
        for p in sorted(touched):
            if pair_count.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return pieces


def train(texts: Iterable[str], vocab_size: int, min_frequency: int, bert_layout: bool, lowercase: bool = False) -> Tokenizer:
    """A trained tokenizer, built by the same `contract.tokenizer.bert_wordpiece` that loads a vocab.txt."""
    specials = special_tokens(bert_layout)
    counts = count_words(texts, bert_wordpiece({"[UNK]": 0}, lowercase))
    pieces = learn_vocab(counts, vocab_size, min_frequency, specials)
    tok = bert_wordpiece({t: i for i, t in enumerate(pieces)}, lowercase)
    tok.add_special_tokens(specials)  # as the library's trainer does: never split in input text
    return tok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.vocab", description=__doc__.splitlines()[0],
        epilog="The vocabulary is deterministic: the same input gives the same files in every process.")
    p.add_argument("--input", action="append", required=True, metavar="[FORMAT:]GLOB")
    p.add_argument("--format", choices=FORMATS, default="wikiextractor")
    p.add_argument("--output", type=Path, required=True, help="directory for vocab.txt and tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=28996, help="bert-base-cased has 28,996")
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--bert-layout", action="store_true", help="[PAD] [unused0..98] [UNK] [CLS] [SEP] [MASK]")
    p.add_argument("--lowercase", action="store_true",
                   help="uncased: BERT's uncased normaliser (lower-case and strip accents) before counting")
    p.add_argument("--encoding-fallback", default=None, metavar="CODEC")
    args = p.parse_args(argv)
    stats: Counter[str] = Counter()
    opts = CleanOptions(encoding_fallback=args.encoding_fallback)
    tok = train(iter_texts(args.input, args.format, opts, stats), args.vocab_size, args.min_frequency, args.bert_layout,
                args.lowercase)
    args.output.mkdir(parents=True, exist_ok=True)
    vocab = vocab_list(tok)
    (args.output / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    tok.save(str(args.output / "tokenizer.json"))
    print(f"{len(vocab)} pieces -> {args.output}/vocab.txt, tokenizer.json; " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
