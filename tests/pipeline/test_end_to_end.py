"""End-to-end runs of `python -m pipeline` on the real data and on a generated bad-input corpus."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from contract.schema import BLOCK_SCHEMA, MANIFEST, Manifest, open_shard, read_manifest
from pipeline.documents import FRAMERS, CleanOptions, Document, clean_document
from pipeline.inputs import source_base
from tests.conftest import GUTENBERG, GUTENBERG_RAW, VOCAB, WIKI_EXTRACTED
from tests.pipeline.conftest import Run, run_pipeline


def _docs_from_table(table: pa.Table) -> dict[str, list[dict]]:
    by_doc: dict[str, list[dict]] = defaultdict(list)
    for row in table.to_pylist():
        by_doc[row["doc_id"]].append(row)
    return {k: sorted(v, key=lambda r: r["block_index"]) for k, v in by_doc.items()}


def _reference_docs(pattern_specs: list[tuple[str, str]], opts: CleanOptions) -> dict[str, str]:
    """Cleaned text of every document, framed and cleaned outside Beam (no ranges, no batching)."""
    import glob

    out = {}
    for fmt, pattern in pattern_specs:
        base = source_base(pattern)
        for path in sorted(glob.glob(pattern)):
            with open(path, "rb") as f:
                for raw in FRAMERS[fmt](f, path[len(base) :]):
                    doc = clean_document(raw, opts)
                    if isinstance(doc, Document):
                        out[doc.doc_id] = doc.text
    return out


@pytest.fixture(scope="module")
def real_expected(tokenizer) -> dict[str, tuple[list[int], np.ndarray]]:
    """Whole-document tokenisation of every real document (the oracle for nothing-lost)."""
    texts = _reference_docs(
        [("wikiextractor", str(WIKI_EXTRACTED)), ("text", f"{GUTENBERG}/*.txt"), ("text", f"{GUTENBERG_RAW}/*.txt")],
        CleanOptions(),
    )
    ids = list(texts)
    encs = tokenizer.encode_batch([texts[i] for i in ids], add_special_tokens=False)
    out = {}
    for doc_id, enc in zip(ids, encs, strict=True):
        w = np.array([-1 if x is None else x for x in enc.word_ids])
        ws = np.ones(len(w), dtype=bool)
        ws[1:] = w[1:] != w[:-1]
        out[doc_id] = (enc.ids, ws)
    return out


def test_blocks_concatenate_to_the_full_tokenisation(real_run: Run, real_expected) -> None:
    docs = _docs_from_table(real_run.table())
    assert set(docs) == set(real_expected)  # every clean document is written, nothing else
    for doc_id, rows in docs.items():
        ids, ws = real_expected[doc_id]
        assert [p for r in rows for p in r["input_ids"]] == ids, doc_id
        # word_start agrees with the tokenizer's word ids over the whole document
        assert np.array_equal(np.array([b for r in rows for b in r["word_start"]]), ws), doc_id


def test_block_invariants(real_run: Run) -> None:
    limit = real_run.manifest.block_size - 2
    docs = _docs_from_table(real_run.table())
    short_inner = 0
    for doc_id, rows in docs.items():
        assert [r["block_index"] for r in rows] == list(range(len(rows)))
        assert all(r["num_blocks"] == len(rows) for r in rows)
        for i, r in enumerate(rows):
            assert 1 <= len(r["input_ids"]) <= limit
            assert len(r["word_start"]) == len(r["input_ids"])
            assert r["word_start"][0], f"{doc_id} block {i} starts inside a word"
            assert r["entity_spans"] == [] and r["noun_phrase_spans"] == []  # --no-annotate
            if i < len(rows) - 1 and len(r["input_ids"]) < limit // 2:
                short_inner += 1
    assert short_inner == 0  # min_fill 0.5: only a document's last block may be short


def test_each_range_writes_its_documents_whole_in_input_order(real_run: Run) -> None:
    """Shard names follow the read plan (range, part); a document lives in exactly one shard, its blocks
    in order; the shards of the WikiExtractor file hold its articles in file order."""
    import re

    m = read_manifest(real_run.out)
    names = [p.name for p in m.shard_paths]
    assert names == sorted(names) and all(re.fullmatch(r"shard-\d{5}-\d{4}\.arrow", n) for n in names)
    # --num-shards 4: a part rolls once its documents held a quarter of the input bytes; the WikiExtractor
    # file (range 0) holds 3.17 quarters (2,626,001 of 3,318,375 bytes, less its <doc> lines): 3 or 4 parts.
    wiki_parts = [n for n in names if n.startswith("shard-00000-")]
    assert wiki_parts[:3] == [f"shard-00000-000{p}.arrow" for p in range(3)] and len(wiki_parts) <= 4
    assert len(names) == len(wiki_parts) + 7 + 4  # then one shard for each book (each a range of its own)
    seen: set[str] = set()
    wiki_order = []
    for path in m.shard_paths:
        t = open_shard(path)
        keys = list(zip(t.column("doc_id").to_pylist(), t.column("block_index").to_pylist(), strict=True))
        ids = list(dict.fromkeys(k for k, _ in keys))
        for d in ids:
            assert [b for k, b in keys if k == d] == list(range(len([1 for k, _ in keys if k == d]))), d
        assert not set(ids) & seen  # a document lives in exactly one shard
        seen |= set(ids)
        wiki_order += [d for d in ids if d.startswith(f"{WIKI_EXTRACTED.parent.name}/")]
    in_file = re.findall(r'<doc id="(\d+)"', WIKI_EXTRACTED.read_text(encoding="utf-8"))
    assert wiki_order == [f"{WIKI_EXTRACTED.parent.name}/{WIKI_EXTRACTED.name}#{i}" for i in in_file]


def test_accounting_real(real_run: Run) -> None:
    t = real_run.manifest.totals
    assert t.documents_read == 106 + 7 + 4  # Wikipedia articles + committed books + raw Gutenberg books
    assert t.documents_read == t.documents_written + t.documents_rejected
    # the two Latin-1 books are dead-lettered by default, with the offending byte
    dead = real_run.dead_letters()
    assert sorted(d["doc_id"] for d in dead) == ["gutenberg/chesterton-ball.txt", "gutenberg/shakespeare-caesar.txt"]
    assert {d["reason"] for d in dead} == {"invalid_utf8"} and all("byte" in d["detail"] for d in dead)
    assert real_run.manifest.rejections == {"invalid_utf8": 2}
    assert real_run.manifest.cleaning["gutenberg_boilerplate_stripped"] == 4
    table = real_run.table()
    assert t.blocks == table.num_rows == sum(s.rows for s in real_run.manifest.shards)
    ids = table.column("input_ids").combine_chunks().values.to_numpy()
    assert t.tokens == len(ids)
    counts = read_manifest(real_run.out).unigram_counts()
    assert np.array_equal(counts, np.bincount(ids, minlength=len(counts)))


def test_gutenberg_raw_has_no_boilerplate_or_cr(real_run: Run, tokenizer) -> None:
    docs = _docs_from_table(real_run.table())
    for name in ("gutenberg-raw/16215.txt", "gutenberg-raw/3261.txt"):
        text = tokenizer.decode([p for r in docs[name] for p in r["input_ids"]])
        assert "GUTENBERG" not in text.upper() and "\r" not in text
        assert len(text) > 30_000  # the excerpts keep ~40 kB of each book between header and footer


def _hashes(run: Run) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.out.iterdir())}


def test_byte_identical_across_runs(real_run: Run, real_run_again: Run) -> None:
    assert _hashes(real_run) == _hashes(real_run_again)  # shards, manifest, dead letters, everything


def test_byte_identical_across_worker_counts(real_run: Run, real_run_two_workers: Run) -> None:
    """The same read plan on one in-process worker and on two worker processes: every file identical,
    the manifest included (it records our options, not the runner's)."""
    assert _hashes(real_run) == _hashes(real_run_two_workers)


def test_another_split_holds_the_same_blocks(real_run: Run, real_run_split: Run) -> None:
    """--split-bytes changes the read plan and so which shard holds a block, never the blocks: the same
    rows (as a multiset), totals, unigram counts and dead letters."""
    def rows(run: Run) -> list[tuple]:
        t = run.table()
        return sorted(zip(t.column("doc_id").to_pylist(), t.column("block_index").to_pylist(),
                          t.column("input_ids").to_pylist(), t.column("word_start").to_pylist(), strict=True))

    assert len(real_run_split.manifest.shards) > len(real_run.manifest.shards)
    assert rows(real_run) == rows(real_run_split)
    assert real_run.manifest.totals == real_run_split.manifest.totals
    for name in ("unigram_counts.npy", "dead_letter.jsonl"):
        assert (real_run.out / name).read_bytes() == (real_run_split.out / name).read_bytes()


def test_manifest_hashes_match_files(real_run: Run) -> None:
    from pipeline.inspect import verify

    assert verify(real_run.out) == []
    for s in real_run.manifest.shards:
        assert hashlib.sha256((real_run.out / s.file).read_bytes()).hexdigest() == s.sha256
    assert (real_run.out / "vocab.txt").read_text().splitlines()[101] == "[CLS]"


def test_inspect_detects_a_tampered_shard(real_run: Run, tmp_path: Path) -> None:
    import shutil

    from pipeline.inspect import main, verify

    copy = tmp_path / "copy"
    shutil.copytree(real_run.out, copy)
    assert main([str(copy)]) == 0
    first = copy / real_run.manifest.shards[0].file
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 1
    first.write_bytes(bytes(data))
    assert any("sha256" in p for p in verify(copy))
    assert main([str(copy)]) == 1


def test_shards_load_with_pyarrow_and_datasets(real_run: Run, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    paths = [str(p) for p in read_manifest(real_run.out).shard_paths]
    with pa.memory_map(paths[0]) as src:
        t = pa.ipc.open_file(src).read_all()
    assert t.schema.equals(BLOCK_SCHEMA)
    ds = datasets.load_dataset("arrow", data_files=paths, split="train", cache_dir=str(tmp_path))
    assert len(ds) == real_run.manifest.totals.blocks
    assert ds.features["input_ids"].feature.dtype == "int32"
    # zero-copy alternative: wrap the memory-mapped table
    mm = datasets.Dataset(datasets.table.MemoryMappedTable(t, paths[0]))
    assert mm[0]["input_ids"] == t.column("input_ids")[0].as_py()


# --------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_corpus_accounting(bad_run: Run, bad_corpus) -> None:
    t = bad_run.manifest.totals
    assert t.documents_read == bad_corpus["read"]
    assert t.documents_rejected == sum(bad_corpus["rejections"].values())
    assert t.documents_read == t.documents_written + t.documents_rejected
    assert bad_run.manifest.rejections == bad_corpus["rejections"]
    dead = bad_run.dead_letters()
    assert Counter(d["reason"] for d in dead) == Counter(bad_corpus["rejections"])
    jsonl = bad_corpus["root"] / "docs.jsonl"
    offset = jsonl.read_bytes().index(b'{"id": "d"')  # a JSON line that cannot be decoded keeps its byte offset as id
    bad_utf8 = {d["doc_id"] for d in dead if d["reason"] == "invalid_utf8"}
    assert bad_utf8 == {"text/latin1.txt", f"{bad_corpus['root'].name}/docs.jsonl#@{offset}"}
    assert all(set(d) == {"source", "doc_id", "reason", "detail"} for d in dead)
    c = bad_run.manifest.cleaning
    assert c["nul_bytes_removed"] == 1 and c["markup_removed"] == 3 and c["unterminated_wiki_doc"] == 1
    assert c["gutenberg_boilerplate_stripped"] == 1


def test_bad_corpus_text_is_cleaned(bad_run: Run, tokenizer) -> None:
    docs = _docs_from_table(bad_run.table())

    def text(suffix: str) -> str:
        (doc_id,) = [d for d in docs if d.endswith(suffix)]
        return tokenizer.decode([p for r in docs[doc_id] for p in r["input_ids"]])

    assert text("nul.txt") == "Hello world. Second sentence here."
    assert text("html.txt") == "Some bold text & more. Café < 3"
    assert text("pg.txt") == "CHAPTER I It was a dark night. The end."
    assert text("#e") == tokenizer.decode(tokenizer.encode('citeLast "one".').ids)
    assert text("#3") == "Three No closing tag, the file is truncated."


def test_huge_single_line_document(bad_run: Run, bad_corpus, tokenizer) -> None:
    docs = _docs_from_table(bad_run.table())
    (doc_id,) = [d for d in docs if d.endswith("huge.txt")]
    rows = docs[doc_id]
    expected = tokenizer.encode(" ".join(bad_corpus["huge_words"]), add_special_tokens=False).ids
    assert [p for r in rows for p in r["input_ids"]] == expected
    assert len(rows) > 1000 and all(len(r["input_ids"]) <= 510 for r in rows)


def test_encoding_fallback_decodes_instead(tmp_path: Path, bad_corpus, tokenizer) -> None:
    latin1_books = [f"text:{GUTENBERG}/chesterton-ball.txt", f"text:{GUTENBERG}/shakespeare-caesar.txt"]
    run = run_pipeline(tmp_path / "out", [bad_corpus["inputs"][0], *latin1_books], "--no-annotate",
                       "--encoding-fallback", "latin-1")
    assert "invalid_utf8" not in run.manifest.rejections
    assert run.manifest.cleaning["decoded_with_fallback"] == 3
    docs = _docs_from_table(run.table())
    assert {"text/latin1.txt", "gutenberg/chesterton-ball.txt", "gutenberg/shakespeare-caesar.txt"} <= set(docs)
    caesar = tokenizer.decode([p for r in docs["gutenberg/shakespeare-caesar.txt"] for p in r["input_ids"]])
    assert "Cæsar" in caesar  # byte 0xE6, the one the default run dead-letters


# --------------------------------------------------------------------------------------------
# Annotation


def test_entity_spans_decode_to_entity_text(annotated_run: Run, wiki_slice: Path, tokenizer) -> None:
    from contract.annotate import load_nlp

    assert annotated_run.manifest.annotated is True
    texts = _reference_docs([("wikiextractor", str(wiki_slice))], CleanOptions())
    nlp = load_nlp()
    docs = _docs_from_table(annotated_run.table())
    dropped = annotated_run.manifest.spans.entity_spans_dropped_at_block_edge
    found = expected_total = 0
    for doc_id, text in texts.items():
        # Entity text as pieces joined without spaces: independent of chunking and whitespace.
        expected = Counter(
            (e.label_, "".join(tokenizer.encode(e.text, add_special_tokens=False).tokens).replace("##", ""))
            for e in nlp(text).ents
        )
        got = Counter()
        for r in docs[doc_id]:
            toks = [tokenizer.id_to_token(i) for i in r["input_ids"]]
            for s in r["entity_spans"]:
                assert 0 <= s["start"] < s["end"] <= len(toks)
                got[(s["label"], "".join(toks[s["start"] : s["end"]]).replace("##", ""))] += 1
            for s in r["noun_phrase_spans"]:
                assert 0 <= s["start"] < s["end"] <= len(toks)
                assert r["word_start"][s["start"]]
        # chunking (--chunk-chars 20000) may shift a few mentions at chunk edges; the rest agree
        overlap = sum((got & expected).values())
        assert overlap >= 0.97 * sum(expected.values()), doc_id
        found += sum(got.values())
        expected_total += sum(expected.values())
    assert found == annotated_run.manifest.spans.entity_spans
    assert found > 500 and found >= 0.95 * expected_total - dropped


def test_annotated_blocks_concatenate_to_full_tokenisation(annotated_run: Run, wiki_slice: Path, tokenizer) -> None:
    texts = _reference_docs([("wikiextractor", str(wiki_slice))], CleanOptions())
    docs = _docs_from_table(annotated_run.table())
    assert set(docs) == set(texts)
    for doc_id, text in texts.items():
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert [p for r in docs[doc_id] for p in r["input_ids"]] == ids
        assert sum(len(r["noun_phrase_spans"]) for r in docs[doc_id]) > 100


# --------------------------------------------------------------------------------------------
# Output directory and CLI


def test_overwrite_rules(tmp_path: Path, wiki_slice: Path) -> None:
    from pipeline.run import main

    out = tmp_path / "out"
    args = ["--input", str(wiki_slice), "--vocab", str(VOCAB), "--output", str(out), "--no-annotate", "--num-shards", "2"]
    assert main(args) == 0
    first = (out / "manifest.json").read_bytes()
    assert main(args) == 2  # refuses a non-empty directory
    stale = out / "shard-00007-of-00009.arrow"  # the naming before range-local shards
    stale.write_bytes(b"stale")
    assert main([*args, "--overwrite"]) == 0
    assert not stale.exists() and (out / "manifest.json").read_bytes() == first
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--overwrite"]) == 2  # never deletes files it did not write
    assert (out / "notes.txt").exists()


def _fields_not_in(record: object, obj: dict, where: str = "") -> list[str]:
    missing = []
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name not in obj:
            missing.append(where + f.name)
        elif dataclasses.is_dataclass(value):
            missing += _fields_not_in(value, obj[f.name], f"{where}{f.name}.")
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            missing += [m for v, o in zip(value, obj[f.name], strict=True) for m in _fields_not_in(v, o, f"{where}{f.name}[].")]
    return missing


@pytest.mark.parametrize("which", ["real_run", "annotated_run"])
def test_manifest_round_trips_through_its_type(which: str, request, tmp_path: Path) -> None:
    """manifest.json as the pipeline wrote it (--no-annotate, and with spaCy) reads into the typed record and
    writes back to the same bytes; a required field missing or ill-typed is one line naming the file and field."""
    data = (request.getfixturevalue(which).out / MANIFEST).read_bytes()
    manifest = Manifest.from_json(json.loads(data))
    assert manifest.to_bytes() == data
    # ... and the file holds every field of the record, nested ones too (a field to_json left out would
    # round-trip unnoticed, since the same code wrote the file)
    assert _fields_not_in(manifest, json.loads(data)) == []
    for change, field in ((lambda m: m["tokenizer"].pop("vocab_size"), "'tokenizer.vocab_size' is missing"),
                          (lambda m: m["shards"][0].pop("bytes"), "'shards[0].bytes' is missing"),
                          (lambda m: m.update(block_size="512"), "'block_size' is a string, expected an integer")):
        broken = json.loads(data)
        change(broken)
        (tmp_path / MANIFEST).write_text(json.dumps(broken))
        with pytest.raises(ValueError) as err:
            read_manifest(tmp_path)
        assert str(err.value) == f"{tmp_path / MANIFEST}: field {field}"


def test_no_partial_files_left(real_run: Run) -> None:
    assert not [p for p in real_run.out.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((real_run.out / "manifest.json").read_text())["dead_letter"] == "dead_letter.jsonl"


def test_glob_matching_nothing_fails_early(tmp_path: Path) -> None:
    from pipeline.run import main

    assert main(["--input", str(tmp_path / "nope*.txt"), "--vocab", str(VOCAB), "--output", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_compressed_input_is_read_whole(tmp_path: Path, wiki_slice: Path) -> None:
    import gzip

    gz = tmp_path / "in" / "wiki3.txt.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(wiki_slice.read_bytes()))
    # --split-bytes smaller than the file: a compressed file cannot be seeked, so it stays one range
    run = run_pipeline(tmp_path / "out", [f"wikiextractor:{gz}"], "--no-annotate", "--split-bytes", "1000")
    assert run.manifest.totals.documents_read == run.manifest.totals.documents_written == 3
    ids = sorted(run.table().column("doc_id").unique().to_pylist())
    assert ids == ["in/wiki3.txt.gz#12", "in/wiki3.txt.gz#25", "in/wiki3.txt.gz#39"]
