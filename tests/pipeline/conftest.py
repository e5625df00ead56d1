"""Session-scoped pipeline runs: each is made once and checked by many tests.

Budget (2 cores): the heavy determinism / accounting runs use --no-annotate on the whole real corpus
(106 Wikipedia articles, 7 books and excerpts, 4 raw Gutenberg excerpts: ~0.6M words, a few seconds each);
spaCy only sees a three-article slice.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from contract.schema import Manifest, open_shard, read_manifest
from tests.conftest import GUTENBERG, GUTENBERG_RAW, WIKI_EXTRACTED, build_shards

REAL_INPUTS = [
    f"wikiextractor:{WIKI_EXTRACTED}",
    f"text:{GUTENBERG}/*.txt",
    f"text:{GUTENBERG_RAW}/*.txt",
]


@dataclass
class Run:
    out: Path
    manifest: Manifest

    def table(self) -> pa.Table:
        m = read_manifest(self.out)
        return pa.concat_tables([open_shard(p) for p in m.shard_paths])

    def dead_letters(self) -> list[dict[str, str]]:
        return [json.loads(line) for line in (self.out / "dead_letter.jsonl").read_text().splitlines()]


def run_pipeline(out: Path, inputs: list[str], *extra: str) -> Run:
    return Run(out, build_shards(out, inputs, *extra))


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> Run:
    """The whole real corpus (tests/conftest.py), no annotation, one worker."""
    return run_pipeline(tmp_path_factory.mktemp("real"), REAL_INPUTS, "--num-shards", "4", "--no-annotate")


@pytest.fixture(scope="session")
def real_run_again(tmp_path_factory) -> Run:
    return run_pipeline(tmp_path_factory.mktemp("real2"), REAL_INPUTS, "--num-shards", "4", "--no-annotate")


@pytest.fixture(scope="session")
def real_run_two_workers(tmp_path_factory) -> Run:
    """Two worker processes, the same read plan as real_run."""
    return run_pipeline(
        tmp_path_factory.mktemp("real_mp"),
        REAL_INPUTS,
        "--num-shards", "4", "--no-annotate",
        "--direct_running_mode=multi_processing", "--direct_num_workers=2",
    )


@pytest.fixture(scope="session")
def real_run_split(tmp_path_factory) -> Run:
    """Another read plan: the WikiExtractor file read as ~9 byte ranges."""
    return run_pipeline(tmp_path_factory.mktemp("real_split"), REAL_INPUTS,
                        "--num-shards", "4", "--no-annotate", "--split-bytes", "300000")


@pytest.fixture(scope="session")
def wiki_slice(tmp_path_factory) -> Path:
    """The first three WikiExtractor articles of the real extract (~20k words)."""
    text = WIKI_EXTRACTED.read_text(encoding="utf-8")
    docs = text.split("</doc>\n")[:3]
    path = tmp_path_factory.mktemp("slice") / "wiki3.txt"
    path.write_text("</doc>\n".join(docs) + "</doc>\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def annotated_run(tmp_path_factory, wiki_slice) -> Run:
    """spaCy on the slice; --chunk-chars 20000 forces the long articles through several nlp chunks."""
    return run_pipeline(
        tmp_path_factory.mktemp("annotated"), [f"wikiextractor:{wiki_slice}"],
        "--num-shards", "2", "--chunk-chars", "20000",
    )


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu Nu Xi omicron pi rho".split()


def make_bad_corpus(root: Path) -> dict[str, Any]:
    """Generated hostile inputs; returns what the pipeline must make of them."""
    text = root / "text"
    text.mkdir(parents=True)
    (text / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me in Z\u00fcrich. It was good.".encode("latin-1"))
    (text / "nul.txt").write_bytes(b"Hello\x00 world. Second\x00\x00 sentence here.")
    (text / "empty.txt").write_bytes(b"")
    (text / "blank.txt").write_bytes(b" \n\n\t \r\n")
    (text / "controls.txt").write_bytes(b"\x01\x02\x03\x04")
    (text / "html.txt").write_bytes(
        b"<p>Some <b>bold</b> text &amp; more.</p><br/>\n<div class=\"x\">Caf&#233; &lt;3</div>"
    )
    rng = random.Random(0)
    words: list[str] = []
    size = 0
    while size < 5_000_000:  # one 5 MB line, no newline
        w = rng.choice(WORDS)
        words.append(w)
        size += len(w) + 1
    (text / "huge.txt").write_text(" ".join(words), encoding="utf-8")
    (text / "pg.txt").write_bytes(
        b"The Project Gutenberg EBook of Test\r\n\r\nLicence blah.\r\n"
        b"*** START OF THIS PROJECT GUTENBERG EBOOK TEST ***\r\n\r\nProduced by Someone\r\n\r\n"
        b"CHAPTER I\r\n\r\nIt was a dark night. The end.\r\n\r\n"
        b"End of the Project Gutenberg EBook of Test\r\n"
        b"*** END OF THIS PROJECT GUTENBERG EBOOK TEST ***\r\nLicence footer.\r\n"
    )
    jsonl = root / "docs.jsonl"
    jsonl.write_bytes(
        b'{"id": "a", "text": "First JSON document. It is fine."}\n'
        b"\n"
        b'{"id": "b", "text": "Broken JSON\n'
        b'{"id": "c", "body": "no text field"}\n'
        b'{"id": "d", "text": "bad byte \xff here"}\n'
        b'{"id": "e", "text": "<ref>cite</ref>Last &quot;one&quot;."}\n'
    )
    wiki = root / "wiki.txt"
    wiki.write_bytes(
        b'<doc id="1" url="u" title="One">\nOne\n\nThe first article. It has <br> a tag.\n</doc>\n'
        b'<doc id="2" url="u" title="Two">\nTwo\n\n\n</doc>\n'
        b'<doc id="3" url="u" title="Three">\nThree\n\nNo closing tag, the file is truncated.\n'
    )
    inputs = [f"text:{text}/*.txt", f"jsonl:{jsonl}", f"wikiextractor:{wiki}"]
    rejections = {"invalid_utf8": 2, "empty": 2, "no_tokens": 1, "invalid_json": 1, "missing_text_field": 1}
    # 8 text files + 5 JSON lines + 3 articles; doc "2" is only its title ("Two"), so not empty.
    return {"root": root, "inputs": inputs, "read": 16, "rejections": rejections, "huge_words": words}


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory) -> dict[str, Any]:
    return make_bad_corpus(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="session")
def bad_run(tmp_path_factory, bad_corpus) -> Run:
    return run_pipeline(tmp_path_factory.mktemp("bad_out"), bad_corpus["inputs"], "--num-shards", "3", "--no-annotate")
