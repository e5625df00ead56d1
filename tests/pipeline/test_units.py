"""Unit tests of the pieces: framing and byte ranges, cleaning, segmentation, chunking, blocks, composites."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.annotate import chunk_starts
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
from pipeline.inputs import parse_input, source_base
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


def test_counter_names_are_checked() -> None:
    """A misspelt counter fails where it is used instead of reading 0 in the manifest."""
    from pipeline.counters import Counter, Counts

    c = Counts()
    c.add_flag("nul_bytes_removed", 2)
    assert c[Counter.NUL_BYTES_REMOVED] == 2
    with pytest.raises(ValueError, match="nul_byte_removed"):
        c.add_flag("nul_byte_removed", 1)
    with pytest.raises(AttributeError):
        _ = Counter.NUL_BYTE_REMOVED


def test_parse_input_prefixes() -> None:
    assert parse_input("text:/a/b/*.txt", "wikiextractor").fmt == "text"
    assert parse_input("/a/b/*.txt", "jsonl").fmt == "jsonl"
    spec = parse_input("gs://bucket/wiki/*.txt", "wikiextractor")
    assert (spec.fmt, spec.pattern) == ("wikiextractor", "gs://bucket/wiki/*.txt")
    assert parse_input("jsonl:gs://b/x.jsonl", "text").pattern == "gs://b/x.jsonl"
    assert source_base("/data/books/gutenberg/*.txt") == "/data/books/"
    assert source_base("/data/wiki/one.txt") == "/data/"


def test_vocab_trainer_and_tokenizer_json_input(tmp_path: Path, capsys) -> None:
    from contract.tokenizer import Vocabulary, load_tokenizer
    from pipeline.inspect import main as inspect_main
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
    capsys.readouterr()
    manifest = run(["--input", str(text), "--tokenizer", str(tmp_path / "v" / "tokenizer.json"),
                    "--output", str(tmp_path / "out"), "--no-annotate", "--num-shards", "1"])
    assert manifest.tokenizer.vocab_size == tok.get_vocab_size()
    assert manifest.totals.documents_written == 2 and verify(tmp_path / "out") == []
    # One manifest summary: the pipeline prints it when done, inspect prints the same before verifying.
    printed = capsys.readouterr().out
    (shard,) = manifest.shards
    assert f"documents read 2 = written 2 + rejected 0; blocks {manifest.totals.blocks}" in printed
    assert f"  {shard.file}: {shard.rows} rows, {shard.tokens} tokens, sha256 {shard.sha256[:16]}" in printed
    assert inspect_main([str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith(printed)


def test_learn_vocab_hand_worked_merges_and_tie_break() -> None:
    from pipeline.vocab import learn_vocab

    # a b c, then ##b ##c (continuations seen); pairs (a,##b)=5 (a,##b)(##b,##c)=2: "ab" first, then "abc".
    assert learn_vocab({"ab": 3, "abc": 2, "c": 1}, 100, 2, ["[UNK]"]) == [
        "[UNK]", "a", "b", "c", "##b", "##c", "ab", "abc"]
    # A tie (both pairs count 2): the smaller pair of ids, (a=1, ##b=5) before (c=3, ##d=6), whatever the order
    # of the words; the budget of 8 leaves room for one merge only.
    for counts in ({"ab": 2, "cd": 2}, {"cd": 2, "ab": 2}):
        assert learn_vocab(counts, 8, 2, ["[UNK]"]) == ["[UNK]", "a", "b", "c", "d", "##b", "##d", "ab"]
    assert learn_vocab({"ab": 2, "cd": 2}, 100, 3, ["[UNK]"])[-1] == "##d"  # below min_frequency: no merge


def test_vocab_is_the_same_in_every_process(tmp_path: Path) -> None:
    """`tokenizers`' own trainer broke count ties in hash-map order: another vocabulary in every process."""
    import hashlib
    import os
    import subprocess
    import sys

    text = tmp_path / "wiki.txt"
    text.write_bytes(b"</doc>\n".join(WIKI_EXTRACTED.read_bytes().split(b"</doc>\n")[:2]) + b"</doc>\n")
    digests = set()
    for seed in ("1", "2"):
        out = tmp_path / f"v{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        subprocess.run([sys.executable, "-m", "pipeline.vocab", "--input", str(text), "--output", str(out),
                        "--vocab-size", "1500"], check=True, env=env, capture_output=True)
        digests.add(tuple(hashlib.sha256((out / f).read_bytes()).hexdigest() for f in ("vocab.txt", "tokenizer.json")))
    assert len(digests) == 1


def test_local_defaults_parallelise_only_annotation() -> None:
    from pipeline.run import _local_defaults

    assert _local_defaults([], annotate=False) == []
    assert "--direct_running_mode=multi_processing" in _local_defaults([], annotate=True)
    for given_flags in (["--direct_num_workers=1"], ["--runner=DataflowRunner"], ["--direct_running_mode", "in_memory"]):
        assert _local_defaults(given_flags, annotate=True) == given_flags  # the user's flags win


def test_timed_flush_experiment_is_recognised_in_every_spelling() -> None:
    from pipeline.run import _timed_flush_experiment

    for flags in (["--experiments=data_buffer_time_limit_ms=500"], ["--experiments", "data_buffer_time_limit_ms=1"],
                  ["--experiment=use_runner_v2", "--experiment=data_buffer_time_limit_ms=1000"]):
        assert _timed_flush_experiment(flags), flags
    for flags in ([], ["--experiments=data_buffer_time_limit_ms=0"], ["--experiments=use_runner_v2"],
                  ["--direct_num_workers=2"]):
        assert not _timed_flush_experiment(flags), flags
