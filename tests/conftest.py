"""Fixtures shared by every test package: real text that the suite brings itself, and the bert-base-cased tokenizer.

Nothing here reads ../shared. The data (tests/fixtures/README.md has origins and licences):
- WIKI_EXTRACTED: 106 real English Wikipedia articles (WikiExtractor format) from the dump excerpt in
  PyPI's gensim==4.4.0 wheel, downloaded once into the cache `demo.corpus.cache_dir()` (the demo's too);
- GUTENBERG: committed Gutenberg books and excerpts, headers stripped (NLTK's edition), two with Latin-1 bytes;
- GUTENBERG_RAW: committed excerpts of four raw Project Gutenberg books, licence header and footer kept, CRLF;
- VOCAB: the committed bert-base-cased vocab.txt.

`build_shards` and `sample_corpus` are how tests get shard directories: the real pipeline on real text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from demo.corpus import EXTRACT_NAME, cache_dir, wikipedia_extract

if TYPE_CHECKING:
    from contract.schema import Manifest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
VOCAB = FIXTURES / "vocab" / "bert-base-cased-vocab.txt"
GUTENBERG = FIXTURES / "gutenberg"
GUTENBERG_RAW = FIXTURES / "gutenberg-raw"
WIKI_EXTRACTED = cache_dir() / EXTRACT_NAME  # made (once) by the `real_text` session fixture below


@pytest.fixture(scope="session", autouse=True)
def real_text() -> Path:
    """Downloads and extracts the Wikipedia excerpt on the first run (~10 s), then only checks its sha256."""
    try:
        path = wikipedia_extract()
    except Exception as e:  # noqa: BLE001 — any failure here means no test can run; say why, once
        pytest.exit(f"the tests need the Wikipedia excerpt cached in {cache_dir()} (set SPANBERT_CACHE to move "
                    f"it), built from PyPI's gensim==4.4.0 wheel: {e}", returncode=2)
    assert path == WIKI_EXTRACTED
    return path


@pytest.fixture(scope="session")
def vocab_path() -> Path:
    return VOCAB


@pytest.fixture(scope="session")
def tokenizer():
    from contract.tokenizer import wordpiece_from_vocab

    return wordpiece_from_vocab(VOCAB)


def build_shards(out: Path, inputs: list[str], *flags: str) -> Manifest:
    """`python -m pipeline --input SPEC... --vocab VOCAB --output OUT FLAGS` through its API; the manifest."""
    from pipeline.run import run

    argv = [a for spec in inputs for a in ("--input", spec)]
    return run([*argv, "--vocab", str(VOCAB), "--output", str(out), *flags])


def sample_corpus(root: Path, num_docs: int, max_chars: int) -> list[str]:
    """Pipeline input specs for a small real corpus of `num_docs` documents of at most ~`max_chars` characters.

    Half are the first Wikipedia articles (a WikiExtractor file), half chapters of Alice in Wonderland
    (one text file each); each document's text is cut at the last space before `max_chars`.
    """

    def cut(text: str) -> str:
        return text if len(text) <= max_chars else text[: text.rfind(" ", 0, max_chars)]

    n_wiki = num_docs // 2
    wiki_text = wikipedia_extract().read_text(encoding="utf-8")  # also outside pytest (bench/bench_trainer.py)
    articles = re.findall(r'(<doc id="\d+"[^>]*>)\n(.*?)</doc>\n', wiki_text, flags=re.S)
    chapters = re.split(r"\n(?=CHAPTER )", (GUTENBERG / "carroll-alice.txt").read_text(encoding="utf-8"))[1:]
    if n_wiki > len(articles) or num_docs - n_wiki > len(chapters):
        raise ValueError(f"sample_corpus has {len(articles)} articles and {len(chapters)} chapters, not {num_docs} docs")
    root.mkdir(parents=True, exist_ok=True)
    wiki = root / "wiki.txt"
    wiki.write_text("".join(f"{tag}\n{cut(body).rstrip()}\n</doc>\n" for tag, body in articles[:n_wiki]), encoding="utf-8")
    book = root / "alice"
    book.mkdir(exist_ok=True)
    for k, chapter in enumerate(chapters[: num_docs - n_wiki]):
        (book / f"chapter-{k + 1:02d}.txt").write_text(cut(chapter), encoding="utf-8")
    specs = [f"text:{book}/*.txt"]
    return [f"wikiextractor:{wiki}", *specs] if n_wiki else specs


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    """The trainer's shards: 12 real documents (6 Wikipedia articles, 6 Alice chapters, ≤ 2,500 characters
    each) through the pipeline with spaCy annotation, 64-token sequences (62-piece blocks: fast CPU steps;
    document ends give shorter blocks). 16 shards for 12 documents: some shards are empty, as the
    pipeline writes them whenever no document hashes there."""
    from contract.schema import read_manifest
    from tests.trainer.shards import write_shards

    out = write_shards(tmp_path_factory.mktemp("shards") / "shards", num_docs=12, block_size=64, num_shards=16,
                       max_chars=2500, annotate=True)
    rows = [s.rows for s in read_manifest(out).shards]
    assert 0 in rows and sum(rows) > 100, rows  # what the tests rely on: empty shards, enough blocks
    return out
