"""Fixtures shared by every test package: the real data in ../shared/data and the bert-base-cased tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
VOCAB = SHARED_DATA / "vocab" / "bert-base-cased-vocab.txt"
WIKI_EXTRACTED = SHARED_DATA / "wiki" / "enwiki-sample-extracted.txt"
GUTENBERG = SHARED_DATA / "books" / "gutenberg"
GUTENBERG_RAW = SHARED_DATA / "books" / "gutenberg-raw"


def pytest_configure(config: pytest.Config) -> None:
    if not VOCAB.is_file():
        raise pytest.UsageError(
            f"the tests read real data from {SHARED_DATA} (see README 'Tests'); it is missing"
        )


@pytest.fixture(scope="session")
def vocab_path() -> Path:
    return VOCAB


@pytest.fixture(scope="session")
def tokenizer():
    from pipeline.tokenizer import wordpiece_from_vocab

    return wordpiece_from_vocab(VOCAB)
