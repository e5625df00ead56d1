"""`python -m pipeline.vocab`: train a cased WordPiece vocabulary (BERT normaliser and pre-tokeniser).

Reads the same inputs and cleaning as `python -m pipeline` (documents that the pipeline would
dead-letter are skipped and counted), and writes `vocab.txt` plus `tokenizer.json` into --output.
The special tokens come first, in BERT's order: [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4). With
--bert-layout the file mimics bert-base-cased: [PAD], [unused0..98], [UNK]=100, [CLS], [SEP],
[MASK]=103, so ids of the special tokens match Google's vocabularies.

Single process on purpose: a vocabulary is trained on a sample (tens of MB of text), not the corpus.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from contract.cli import run_main
from contract.tokenizer import SPECIAL_TOKENS, bert_normalizer, vocab_list
from pipeline.documents import FORMATS, FRAMERS, CleanOptions, Document, clean_document
from pipeline.io import match_inputs, parse_input, source_base


def iter_texts(specs: Sequence[str], default_format: str, opts: CleanOptions, stats: Counter[str]) -> Iterator[str]:
    from apache_beam.io.filesystems import FileSystems

    for spec, metas in match_inputs([parse_input(s, default_format) for s in specs]):
        base = source_base(spec.pattern)
        for meta in metas:
            with FileSystems.open(meta.path) as f:
                for raw in FRAMERS[spec.fmt](f, meta.path[len(base) :]):
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


def train(texts: Iterator[str], vocab_size: int, min_frequency: int, bert_layout: bool) -> Tokenizer:
    tok = Tokenizer(WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = bert_normalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens(bert_layout),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.vocab", description=__doc__.splitlines()[0])
    p.add_argument("--input", action="append", required=True, metavar="[FORMAT:]GLOB")
    p.add_argument("--format", choices=FORMATS, default="wikiextractor")
    p.add_argument("--output", type=Path, required=True, help="directory for vocab.txt and tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=28996, help="bert-base-cased has 28,996")
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--bert-layout", action="store_true", help="[PAD] [unused0..98] [UNK] [CLS] [SEP] [MASK]")
    p.add_argument("--encoding-fallback", default=None, metavar="CODEC")
    args = p.parse_args(argv)
    stats: Counter[str] = Counter()
    opts = CleanOptions(encoding_fallback=args.encoding_fallback)
    tok = train(iter_texts(args.input, args.format, opts, stats), args.vocab_size, args.min_frequency, args.bert_layout)
    args.output.mkdir(parents=True, exist_ok=True)
    vocab = vocab_list(tok)
    (args.output / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    tok.save(str(args.output / "tokenizer.json"))
    print(f"{len(vocab)} pieces -> {args.output}/vocab.txt, tokenizer.json; " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
