"""French fixtures: a WordPiece vocabulary trained on the Debian Reference excerpt (tests/fixtures/french/),
and shards of its first documents annotated by fr_core_news_sm. Built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FRENCH = Path(__file__).resolve().parents[1] / "fixtures" / "french"
CORPUS = FRENCH / "debian-reference-fr.jsonl"
HELDOUT = FRENCH / "heldout.txt"
FRENCH_MODEL = "fr_core_news_sm"
# In-process runner: a test's pipeline run pays for no worker processes (each would load spaCy again).
ONE_WORKER = ("--direct_num_workers=1", "--direct_running_mode=in_memory")


def first_documents(out: Path, n: int) -> Path:
    """The first `n` documents of the French corpus as a jsonl file (an annotated run of all 48 is ~25 s)."""
    lines = CORPUS.read_text(encoding="utf-8").splitlines()[:n]
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return out


def documents(path: Path) -> dict[str, str]:
    """id -> text of a jsonl corpus (a shard's doc_id is '<source>#<id>')."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r["text"] for r in rows}


@pytest.fixture(scope="session")
def french_vocab(tmp_path_factory) -> Path:
    """`python -m pipeline.vocab` on the whole French corpus (3,000 pieces); the directory."""
    from pipeline.vocab import main

    out = tmp_path_factory.mktemp("fr-vocab")
    assert main(["--input", f"jsonl:{CORPUS}", "--output", str(out), "--vocab-size", "3000"]) == 0
    return out


@pytest.fixture(scope="session")
def french_shards(tmp_path_factory, french_vocab) -> Path:
    """12 French documents through the pipeline, annotated by fr_core_news_sm, 64-token blocks."""
    from pipeline.run import run

    root = tmp_path_factory.mktemp("fr-shards")
    corpus = first_documents(root / "fr.jsonl", 12)
    run(["--input", f"jsonl:{corpus}", "--tokenizer", str(french_vocab / "tokenizer.json"), "--output",
         str(root / "shards"), "--spacy-model", FRENCH_MODEL, "--block-size", "64", "--num-shards", "2", *ONE_WORKER])
    return root / "shards"
