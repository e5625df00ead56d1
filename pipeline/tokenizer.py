"""The WordPiece tokenizer every stage shares: built from a BERT `vocab.txt` or loaded from `tokenizer.json`.

Blocks are stored without [CLS]/[SEP], so the tokenizer carries no post-processor; the trainer adds
the special tokens itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

# BERT's special tokens; the order is the one BERT's vocabularies use for their first entries.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def bert_normalizer(lowercase: bool = False) -> normalizers.Normalizer:
    # Cased like bert-base-cased: clean control chars, split CJK, keep accents and case.
    # strip_accents=None follows `lowercase`, as in BERT's own tokenizers.
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )


def wordpiece_from_vocab(vocab_path: str | Path, lowercase: bool = False) -> Tokenizer:
    """A bert-base-cased style tokenizer from a one-token-per-line vocabulary."""
    vocab = read_vocab(vocab_path)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{vocab_path}: vocabulary lacks special tokens {missing}")
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = bert_normalizer(lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


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


def load_tokenizer(vocab: str | Path | None = None, tokenizer_json: str | Path | None = None) -> Tokenizer:
    """Exactly one of `vocab` (BERT vocab.txt) or `tokenizer_json` (any HF tokenizers file)."""
    if (vocab is None) == (tokenizer_json is None):
        raise ValueError("give exactly one of vocab= or tokenizer_json=")
    if vocab is not None:
        return wordpiece_from_vocab(vocab)
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.post_processor = None  # blocks are stored bare; [CLS]/[SEP] are the trainer's job
    tok.no_padding()
    tok.no_truncation()
    return tok


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    @property
    def all(self) -> tuple[int, ...]:
        return (self.pad, self.unk, self.cls, self.sep, self.mask)


def special_ids(tok: Tokenizer) -> SpecialIds:
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    return SpecialIds(*(ids[t] for t in SPECIAL_TOKENS))


def vocab_list(tok: Tokenizer) -> list[str]:
    """Tokens ordered by id (the content of a vocab.txt)."""
    by_id = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError("tokenizer vocabulary ids are not contiguous from 0")
    return [t for t, _ in by_id]


def vocab_sha256(tok: Tokenizer) -> str:
    """Tokenizer identity: a hash of the id-ordered vocabulary (what the trainer checks against)."""
    return hashlib.sha256("\n".join(vocab_list(tok)).encode("utf-8")).hexdigest()
