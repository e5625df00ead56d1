"""Real blocks for the masking tests: the Wikipedia sample and a Latin-1 Gutenberg book, bert-base-cased."""

from __future__ import annotations

import numpy as np
import pytest

from contract.annotate import load_nlp
from contract.tokenizer import Vocabulary
from masking import Masker, MaskingConfig
from masking.corpus import TextBlock, annotate, text_blocks
from tests.conftest import GUTENBERG, WIKI_EXTRACTED


@pytest.fixture(scope="session")
def specials(tokenizer):
    return Vocabulary.of(tokenizer)


@pytest.fixture(scope="session")
def wiki_blocks(tokenizer) -> list[TextBlock]:
    blocks, _ = text_blocks(tokenizer, [WIKI_EXTRACTED], max_chars=700_000)
    return blocks


@pytest.fixture(scope="session")
def book_blocks(tokenizer) -> list[TextBlock]:
    # chesterton-ball.txt is Latin-1 (invalid UTF-8): exercises the fallback decoding too (as the
    # pipeline's --encoding-fallback latin-1; without it the file is rejected).
    paths = [GUTENBERG / "chesterton-ball.txt", GUTENBERG / "carroll-alice.txt"]
    blocks, _ = text_blocks(tokenizer, paths, max_chars=150_000, encoding_fallback="latin-1")
    return blocks


@pytest.fixture(scope="session")
def real_blocks(wiki_blocks, book_blocks) -> list[TextBlock]:
    return wiki_blocks + book_blocks


@pytest.fixture(scope="session")
def annotated_blocks(tokenizer) -> list[TextBlock]:
    """A few Wikipedia blocks with spaCy entity mentions and noun chunks, aligned to pieces."""
    blocks, texts = text_blocks(tokenizer, [WIKI_EXTRACTED], max_blocks=10)
    return annotate(blocks, texts, load_nlp())


@pytest.fixture(scope="session")
def make_masker(tokenizer, specials):
    def make(scheme: str = "geometric", unigram_counts: np.ndarray | None = None, **kw) -> Masker:
        return Masker(
            MaskingConfig(scheme=scheme, **kw),
            vocab_size=tokenizer.get_vocab_size(),
            mask_id=specials.mask,
            special_ids=specials.specials,
            unigram_counts=unigram_counts,
        )

    return make
