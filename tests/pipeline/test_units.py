"""Unit tests of the pieces: framing and byte ranges, cleaning, segmentation, chunking, blocks, composites."""

from __future__ import annotations

import io
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.annotate import chunk_starts
from pipeline.documents import (
    CleanOptions,
    Document,
    RawDocument,
    Rejection,
    clean_document,
    frame_jsonl,
    frame_wikiextractor,
    strip_gutenberg,
)
from pipeline.encode import (
    EncodedDoc,
    continuation_table,
    encode_segmented,
    rule_sentence_starts,
    safe_starts,
    to_blocks,
)
from pipeline.io import parse_input, source_base
from pipeline.transforms import DEAD_LETTER, CleanDocuments, shard_of
from tests.conftest import GUTENBERG_RAW, WIKI_EXTRACTED


def _ranges(data: bytes, framer, split: int) -> list[RawDocument]:
    docs = []
    for start in range(0, len(data), split):
        end = start + split
        docs.extend(framer(io.BytesIO(data), "src", start, end if end < len(data) else None))
    return docs


@pytest.mark.parametrize("split", [997, 65_536, 300_000])
def test_wikiextractor_ranges_yield_every_article_once(split: int) -> None:
    data = WIKI_EXTRACTED.read_bytes()
    whole = list(frame_wikiextractor(io.BytesIO(data), "src"))
    assert len(whole) == 106 and whole[0].doc_id == "src#12"
    assert _ranges(data, frame_wikiextractor, split) == whole


def test_wikiextractor_json_variant_and_jsonl_ranges() -> None:
    lines = [b'{"id": "%d", "title": "T%d", "text": "Body {%d}\\nmore"}\n' % (i, i, i) for i in range(50)]
    data = b"".join(lines)
    whole = list(frame_wikiextractor(io.BytesIO(data), "src"))
    assert [d.kind for d in whole] == ["json"] * 50
    assert _ranges(data, frame_wikiextractor, 101) == whole
    assert _ranges(data, frame_jsonl, 77) == list(frame_jsonl(io.BytesIO(data), "src")) == whole
    doc = clean_document(whole[3], CleanOptions())
    assert isinstance(doc, Document) and doc.doc_id == "src#3" and doc.text == "Body {3}\nmore"


def test_jsonl_configurable_fields() -> None:
    raw = RawDocument("s", "s#@0", b'{"key": 7, "body": "Hello there."}\n', "json")
    doc = clean_document(raw, CleanOptions(text_field="body", id_field="key"))
    assert isinstance(doc, Document) and (doc.doc_id, doc.text) == ("s#7", "Hello there.")
    rej = clean_document(raw, CleanOptions())
    assert isinstance(rej, Rejection) and rej.reason == "missing_text_field"


@pytest.mark.parametrize("name", sorted(p.name for p in GUTENBERG_RAW.glob("*.txt")))
def test_gutenberg_header_and_footer_stripped(name: str) -> None:
    raw = (GUTENBERG_RAW / name).read_bytes()
    doc = clean_document(RawDocument("g", name, raw, "text"), CleanOptions())
    assert isinstance(doc, Document) and doc.flags["gutenberg_boilerplate_stripped"] == 1
    assert "\r" not in doc.text
    assert "PROJECT GUTENBERG" not in doc.text.upper()
    assert not doc.text.startswith("Produced by")
    assert len(doc.text) > 0.8 * len(raw.decode("utf-8", "replace")) - 25_000  # only boilerplate went


def test_strip_gutenberg_leaves_plain_text_alone() -> None:
    assert strip_gutenberg("Just a book.\nNo markers.") == ("Just a book.\nNo markers.", False)


@given(st.text(alphabet=st.sampled_from(list("ab .!?\n\"'(CZ9,-")), max_size=300))
@settings(max_examples=200, deadline=None)
def test_segmentation_never_changes_the_pieces(text: str) -> None:
    from tests.conftest import VOCAB

    tok = _tok(VOCAB)
    starts = safe_starts(text, [*rule_sentence_starts(text), *range(0, len(text), 3)])
    enc = tok.encode(text, add_special_tokens=False)
    w = np.array([-1 if x is None else x for x in enc.word_ids])
    # both word-start paths: the ## lookup table and the tokenizer's word ids
    for table in (continuation_table(tok), None):
        ((ids, ws, ss, offs),) = encode_segmented(tok, [text], [starts], True, table)
        assert ids.tolist() == enc.ids
        assert ws.tolist() == ([True] + (w[1:] != w[:-1]).tolist() if len(w) else [])
        assert not (ss & ~ws).any()  # a sentence start is always a word start
        assert offs.tolist() == [list(o) for o in enc.offsets]


_TOKS: dict[Path, object] = {}


def _tok(path: Path):
    from contract.tokenizer import wordpiece_from_vocab

    if path not in _TOKS:
        _TOKS[path] = wordpiece_from_vocab(path)
    return _TOKS[path]


def test_rule_sentence_starts() -> None:
    text = 'He left. "Then what?" she asked. Mr. Smith said no.\n\nnew paragraph e.g. here'
    starts = rule_sentence_starts(text)
    assert [text[s : s + 4] for s in starts] == ["He l", '"The', "Mr. ", "Smit", "new "]


@given(st.text(alphabet=st.sampled_from(list("ab \n")), min_size=0, max_size=400), st.integers(5, 60))
@settings(max_examples=200, deadline=None)
def test_chunks_cover_the_text(text: str, limit: int) -> None:
    starts = chunk_starts(text, limit)
    bounds = [*starts, len(text)]
    assert starts[0] == 0 and all(0 < b - a <= limit for a, b in zip(bounds, bounds[1:], strict=False) if a < len(text))
    assert "".join(text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)) == text


def test_to_blocks_drops_and_counts_spans_across_edges() -> None:
    n = 20
    doc = EncodedDoc(
        "s", "s#1", np.arange(n, dtype=np.int32), np.ones(n, bool), np.zeros(n, bool),
        entity_spans=[(0, 2, "PERSON"), (9, 12, "ORG"), (12, 14, "GPE")],
        noun_phrase_spans=[(9, 11), (10, 12)],
    )
    rows, dropped = to_blocks(doc, max_pieces=10)
    assert [len(b) for b in rows.input_ids] == [10, 10]
    assert rows.entity_spans == [[(0, 2, "PERSON")], [(2, 4, "GPE")]]
    assert rows.noun_phrase_spans == [[], [(0, 2)]]
    assert dropped == {"entity_spans_dropped_at_block_edge": 1, "noun_phrase_spans_dropped_at_block_edge": 1}


def test_shard_of_is_stable() -> None:
    # A fixed value: shard assignment must never depend on the process (PYTHONHASHSEED) or version.
    # (recorded once; a change here silently reshuffles every existing shard directory)
    assert [shard_of(f"wiki/x.txt#{i}", 8) for i in range(8)] == [1, 4, 4, 2, 3, 1, 5, 5]
    assert shard_of("gutenberg/austen-emma.txt", 1000) == 752


def test_parse_input_prefixes() -> None:
    assert parse_input("text:/a/b/*.txt", "wikiextractor").fmt == "text"
    assert parse_input("/a/b/*.txt", "jsonl").fmt == "jsonl"
    spec = parse_input("gs://bucket/wiki/*.txt", "wikiextractor")
    assert (spec.fmt, spec.pattern) == ("wikiextractor", "gs://bucket/wiki/*.txt")
    assert parse_input("jsonl:gs://b/x.jsonl", "text").pattern == "gs://b/x.jsonl"
    assert source_base("/data/books/gutenberg/*.txt") == "/data/books/"
    assert source_base("/data/wiki/one.txt") == "/data/"


def test_clean_documents_composite_routes_dead_letters() -> None:
    raws = [
        RawDocument("s", "s#ok", b"Fine text.", "text"),
        RawDocument("s", "s#bad", b"caf\xe9", "text"),
        RawDocument("s", "s#empty", b"<br/>  ", "text"),
    ]
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(raws) | CleanDocuments(CleanOptions())
        assert_that(out["main"] | beam.Map(lambda d: (d.doc_id, d.text)), equal_to([("s#ok", "Fine text.")]), label="Main")
        assert_that(
            out[DEAD_LETTER] | beam.Map(lambda r: (r.doc_id, r.reason)),
            equal_to([("s#bad", "invalid_utf8"), ("s#empty", "empty")]),
            label="Dead",
        )


def test_vocab_trainer_and_tokenizer_json_input(tmp_path: Path) -> None:
    from contract.tokenizer import Vocabulary, load_tokenizer
    from pipeline.inspect import verify
    from pipeline.run import run
    from pipeline.vocab import main

    text = tmp_path / "wiki.txt"
    text.write_bytes(b"</doc>\n".join(WIKI_EXTRACTED.read_bytes().split(b"</doc>\n")[:2]) + b"</doc>\n")
    assert main(["--input", str(text), "--output", str(tmp_path / "v"), "--vocab-size", "2000", "--bert-layout"]) == 0
    tok = load_tokenizer(tmp_path / "v" / "vocab.txt")
    ids = Vocabulary.of(tok)
    assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask) == (0, 100, 101, 102, 103)
    assert tok.get_vocab_size() <= 2000 and tok.token_to_id("##s") is not None
    manifest = run(["--input", str(text), "--tokenizer", str(tmp_path / "v" / "tokenizer.json"),
                    "--output", str(tmp_path / "out"), "--no-annotate", "--num-shards", "1"])
    assert manifest["tokenizer"]["vocab_size"] == tok.get_vocab_size()
    assert manifest["totals"]["documents_written"] == 2 and verify(tmp_path / "out") == []


def test_local_defaults_parallelise_only_annotation() -> None:
    from pipeline.run import _local_defaults

    assert _local_defaults([], annotate=False) == []
    assert "--direct_running_mode=multi_processing" in _local_defaults([], annotate=True)
    for given_flags in (["--direct_num_workers=1"], ["--runner=DataflowRunner"], ["--direct_running_mode", "in_memory"]):
        assert _local_defaults(given_flags, annotate=True) == given_flags  # the user's flags win
