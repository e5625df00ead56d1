"""The WordPiece tokenizer every stage shares: built from a BERT `vocab.txt` or loaded from `tokenizer.json`.

Blocks are stored without [CLS]/[SEP], so the tokenizer carries no post-processor; the trainer adds
the special tokens itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

# BERT's special tokens; the order is the one BERT's vocabularies use for their first entries.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def bert_normalizer(lowercase: bool = False) -> normalizers.Normalizer:
    # Cased like bert-base-cased: clean control chars, split CJK, keep accents and case. `lowercase`:
    # bert-base-uncased's normaliser (lower-case and strip accents: strip_accents=None follows
    # `lowercase`, as in BERT's own tokenizers).
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )


def bert_wordpiece(vocab: dict[str, int], lowercase: bool = False) -> Tokenizer:
    """The one construction of a BERT WordPiece tokenizer (model, normaliser, pre-tokeniser, decoder): for a
    vocab.txt read back and for the vocabulary trainer, so what is trained is what is loaded."""
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = bert_normalizer(lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def wordpiece_from_vocab(vocab_path: str | Path, lowercase: bool = False) -> Tokenizer:
    """A bert-base-cased style tokenizer from a one-token-per-line vocabulary."""
    vocab = read_vocab(vocab_path)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{vocab_path}: vocabulary lacks special tokens {missing}")
    return bert_wordpiece(vocab, lowercase)


def word_starts(word_ids: Sequence[int | None]) -> np.ndarray:
    """bool[n]: piece i begins a word, from an Encoding's `word_ids` (the shards' `word_start` column).

    A piece starts a word when its word id differs from the previous piece's; a run of pieces without
    a word (None: special tokens) counts as one word.
    """
    w = np.fromiter((-1 if x is None else x for x in word_ids), dtype=np.int64, count=len(word_ids))
    ws = np.ones(len(w), dtype=bool)
    ws[1:] = w[1:] != w[:-1]
    return ws


def read_vocab(vocab_path: str | Path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    with open(vocab_path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            token = line.rstrip("\n")
            if token in vocab:
                raise ValueError(f"{vocab_path}:{i + 1}: duplicate vocabulary entry {token!r}")
            vocab[token] = i
    if not vocab:
        raise ValueError(f"{vocab_path}: empty vocabulary")
    return vocab


def load_tokenizer(path: str | Path, lowercase: bool = False) -> Tokenizer:
    """The one tokenizer loader: a `tokenizer.json` (any HF tokenizers file) by its suffix, else a BERT vocab.txt
    (cased, or uncased with `lowercase`; a tokenizer.json carries its own normaliser)."""
    path = Path(path)
    if path.suffix != ".json":
        return wordpiece_from_vocab(path, lowercase)
    if lowercase:
        raise ValueError(f"{path}: a tokenizer.json carries its own normaliser; lowercase applies to a vocab.txt only")
    tok = Tokenizer.from_file(str(path))
    tok.post_processor = None  # blocks are stored bare; [CLS]/[SEP] are the trainer's job
    tok.no_padding()
    tok.no_truncation()
    return tok


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's identity and the ids every stage needs; shards, checkpoints and exports are matched by
    `sha256` (a hash of the id-ordered tokens)."""

    tokens: tuple[str, ...]  # id order: the content of a vocab.txt
    sha256: str
    lowercase: bool
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int
    path: Path | None = None  # the file it was read from, for messages

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def specials(self) -> tuple[int, ...]:
        return (self.pad, self.unk, self.cls, self.sep, self.mask)

    @classmethod
    def of(cls, tok: Tokenizer, path: str | Path | None = None) -> Vocabulary:
        tokens = tuple(vocab_list(tok))
        ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"{path or 'tokenizer'}: lacks special tokens {missing}")
        return cls(
            tokens, tokens_sha256(tokens), bool(getattr(tok.normalizer, "lowercase", False)),
            *(ids[t] for t in SPECIAL_TOKENS), path=None if path is None else Path(path),
        )


def normalizer_identity(tok: Tokenizer) -> dict | None:
    """The normaliser as the tokenizer file serialises it (part of the tokenizer's identity in the manifest:
    the same pieces cased and uncased give different ids for the same text)."""
    return json.loads(tok.to_str()).get("normalizer")


def read_vocabulary(path: str | Path) -> Vocabulary:
    """The Vocabulary of a vocab.txt or tokenizer.json."""
    return Vocabulary.of(load_tokenizer(path), path)


def vocab_list(tok: Tokenizer) -> list[str]:
    """Tokens ordered by id (the content of a vocab.txt)."""
    by_id = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError("tokenizer vocabulary ids are not contiguous from 0")
    return [t for t, _ in by_id]


def tokens_sha256(tokens: Sequence[str]) -> str:
    """Tokenizer identity: a hash of the id-ordered vocabulary (what the trainer checks against)."""
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()
