"""`--format wikidump`: Wikipedia's own dumps, checked against the pages in the XML itself (parsed whole
here), WikiExtractor's own command line on the same dump, and hand-truncated and corrupted copies."""

from __future__ import annotations

import bz2
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from contract.schema import Manifest
from pipeline.documents import RawDocument, frame_wikiextractor
from pipeline.wikidump import (
    PageSkip,
    SkipReason,
    StreamBreak,
    extract_text,
    frame_dump,
    index_path,
    multistream,
    plan_dump,
)
from tests.conftest import build_shards

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "wiki" / "enwiki-fixture-pages-articles.xml.bz2"
# What tests/fixtures/wiki/README.md says the fixture holds, by title (written by hand from the XML).
DISAMBIGUATION = {"Asia Minor (disambiguation)", "Austin (disambiguation)", "Alien", "Aa River"}
EMPTY = {"List of anthropologists"}
ARTICLES = 15


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_pages(xml: bytes) -> list[dict[str, str]]:
    """Every <page> of the XML, parsed whole (the reference for the incremental reader)."""
    out = []
    for page in ET.fromstring(xml):
        if _local(page.tag) != "page":
            continue
        fields = {_local(c.tag): (c.text or "") for c in page}
        rev = next(c for c in page if _local(c.tag) == "revision")
        fields.update({f"rev_{_local(c.tag)}": (c.text or "") for c in rev})
        fields["redirect"] = "yes" if any(_local(c.tag) == "redirect" for c in page) else ""
        out.append(fields)
    return out


def _read(path: Path, start: int = 0, end: int | None = None) -> list:
    with open(path, "rb") as f:
        return list(frame_dump(f, path.name, start, end))


def _read_planned(path: Path, split_bytes: int) -> list:
    ranges = plan_dump(str(path), path.stat().st_size, split_bytes)
    return [r for start, end in ranges for r in _read(path, start, end)]


@pytest.fixture(scope="module")
def xml() -> bytes:
    return bz2.decompress(FIXTURE.read_bytes())


@pytest.fixture(scope="module")
def multistream_dump(tmp_path_factory, xml: bytes) -> Path:
    """The fixture in Wikimedia's multistream layout, 4 pages a stream, its index beside it."""
    root = tmp_path_factory.mktemp("multistream")
    dump, index = multistream(xml, pages_per_stream=4)
    path = root / "enwiki-fixture-pages-articles-multistream.xml.bz2"
    path.write_bytes(dump)
    (root / "enwiki-fixture-pages-articles-multistream-index.txt.bz2").write_bytes(index)
    return path


@pytest.fixture(scope="module")
def cli_docs(tmp_path_factory) -> dict[str, bytes]:
    """WikiExtractor's command line on the fixture: page id -> the body of its <doc>."""
    out = tmp_path_factory.mktemp("wikiextractor") / "out"
    subprocess.run([sys.executable, "-m", "wikiextractor.WikiExtractor", "--no-templates", "--processes", "1",
                    "-q", "-b", "10M", "-o", str(out), str(FIXTURE)], check=True)
    data = b"".join(p.read_bytes() for p in sorted(out.rglob("wiki_*")))
    import io

    return {d.doc_id.split("#", 1)[1]: d.data for d in frame_wikiextractor(io.BytesIO(data), "cli")}


def test_pages_are_classified_as_the_xml_says(xml: bytes) -> None:
    pages = _xml_pages(xml)
    records = _read(FIXTURE)
    assert len(records) == len(pages) == 25  # one record per page, nothing else
    by_id = {p["id"]: p for p in pages}
    got = {r.doc_id.split("#", 1)[1]: (r.reason if isinstance(r, PageSkip) else "article") for r in records}
    for pid, page in by_id.items():
        if page["ns"] != "0":
            want = SkipReason.NAMESPACE
        elif page["redirect"]:
            want = SkipReason.REDIRECT
        elif page["title"] in DISAMBIGUATION:
            want = SkipReason.DISAMBIGUATION
        elif page["title"] in EMPTY:
            want = SkipReason.EMPTY
        else:
            want = "article"
        assert got[pid] == want, page["title"]
    assert sum(v == "article" for v in got.values()) == ARTICLES


def test_article_text_is_wikiextractors(cli_docs: dict[str, bytes], xml: bytes) -> None:
    """Each article's document is the body WikiExtractor's command line writes for that page, byte for
    byte; only {{CURRENTYEAR}} differs (the command line reads the clock, we the revision's date)."""
    pages = {p["id"]: p for p in _xml_pages(xml)}
    docs = {r.doc_id.split("#", 1)[1]: r for r in _read(FIXTURE) if isinstance(r, RawDocument)}
    skipped = {pid for pid, p in pages.items() if p["title"] in DISAMBIGUATION | EMPTY}
    assert set(docs) == set(cli_docs) - skipped  # the command line keeps disambiguation and empty pages
    assert all(cli_docs[pid].strip() == pages[pid]["title"].encode() for pid in skipped if pages[pid]["title"] in EMPTY)
    clocked = 0
    for pid, doc in docs.items():
        want = cli_docs[pid]
        if "CURRENTYEAR" in pages[pid]["rev_text"]:
            clocked += 1
            want = want.replace(time.strftime("%Y").encode(), pages[pid]["rev_timestamp"][:4].encode())
        assert doc.data == want, pages[pid]["title"]
    assert clocked == 1


def test_text_does_not_depend_on_the_clock_or_on_earlier_pages(xml: bytes, monkeypatch) -> None:
    pages = [p for p in _xml_pages(xml) if p["ns"] == "0" and not p["redirect"]]
    args = [(p["id"], p["rev_id"], p["title"], p["rev_text"], p["rev_timestamp"]) for p in pages]
    forward = [extract_text(*a) for a in args]
    monkeypatch.setattr(time, "strftime", lambda fmt, *rest: "1999")  # another day, another year
    backward = [extract_text(*a) for a in reversed(args)][::-1]
    assert backward == forward
    academy = forward[[p["title"] for p in pages].index("Academy Awards")]
    assert any("in 2016 dollars" in para for para in academy)  # the revision is of 2016


def test_multistream_ranges_read_every_page_once(multistream_dump: Path) -> None:
    offsets = [int(line.split(b":", 1)[0]) for line in bz2.decompress(
        Path(index_path(str(multistream_dump))).read_bytes()).splitlines()]
    data = multistream_dump.read_bytes()
    for offset in set(offsets):  # each index offset starts a stream that holds whole pages
        assert bz2.BZ2Decompressor().decompress(data[offset:]).startswith(b"  <page>\n")
    ranges = plan_dump(str(multistream_dump), len(data), split_bytes=20_000)
    assert len(ranges) > 2 and ranges[0][0] == 0 and ranges[-1][1] is None
    assert all(e is None or e in offsets for _, e in ranges)
    assert _read_planned(multistream_dump, 20_000) == _read_planned(multistream_dump, 1 << 30)  # one range
    whole = [(type(r), r.doc_id, getattr(r, "data", None)) for r in _read(FIXTURE)]
    assert [(type(r), r.doc_id.replace(multistream_dump.name, FIXTURE.name), getattr(r, "data", None))
            for r in _read_planned(multistream_dump, 20_000)] == whole


def test_plan_without_index_and_of_the_index_itself(tmp_path: Path, multistream_dump: Path) -> None:
    assert plan_dump(str(FIXTURE), FIXTURE.stat().st_size, 1000) == [(0, None)]
    index = index_path(str(multistream_dump))
    assert index.endswith("/enwiki-fixture-pages-articles-multistream-index.txt.bz2")
    assert plan_dump(index, 10, 1000) == []
    assert index_path("/d/enwiki-20240601-pages-articles-multistream1.xml-p1p41242.bz2") == (
        "/d/enwiki-20240601-pages-articles-multistream-index1.txt-p1p41242.bz2")


def test_truncated_single_stream_gives_its_readable_pages(tmp_path: Path) -> None:
    data = FIXTURE.read_bytes()
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(data[: len(data) * 2 // 3])
    readable = bz2.BZ2Decompressor().decompress(cut.read_bytes())  # the whole blocks before the cut
    records = _read(cut)
    breaks = [r for r in records if isinstance(r, StreamBreak)]
    assert len(breaks) == 1 and breaks[-1] is records[-1]
    assert (breaks[0].reason, breaks[0].offset) == ("bz2_truncated", 0)
    assert f"ends at byte {len(data) * 2 // 3}" in breaks[0].detail
    assert 0 < len(records) - 1 == readable.count(b"</page>")


def test_truncated_and_corrupt_multistream(tmp_path: Path, multistream_dump: Path) -> None:
    data = multistream_dump.read_bytes()
    lines = bz2.decompress(Path(index_path(str(multistream_dump))).read_bytes()).decode().splitlines()
    offsets = sorted({int(line.split(":", 1)[0]) for line in lines})
    pages_at = Counter(int(line.split(":", 1)[0]) for line in lines)
    bad = offsets[3]  # a stream of 4 pages in the middle
    corrupt = bytearray(data)
    for i in range(bad + 40, bad + 60):
        corrupt[i] ^= 0xFF
    path = tmp_path / multistream_dump.name
    path.write_bytes(bytes(corrupt))
    records = _read(path)  # one range, no index: resynchronised by the stream magic
    breaks = [r for r in records if isinstance(r, StreamBreak)]
    assert [(b.reason, b.offset) for b in breaks] == [("bz2_corrupt", bad)]
    assert len(records) - 1 == sum(pages_at.values()) - pages_at[bad]

    path.write_bytes(data[: offsets[5] + 100])  # cut inside the 6th page stream
    records = _read(path)
    breaks = [r for r in records if isinstance(r, StreamBreak)]
    assert [(b.reason, b.offset) for b in breaks] == [("bz2_truncated", offsets[5])]
    assert len(records) - 1 == sum(pages_at[o] for o in offsets[:5])


def test_not_a_dump_is_a_break_not_a_crash(tmp_path: Path) -> None:
    junk = tmp_path / "junk.xml"
    junk.write_bytes(b"this is not XML <at all")
    records = _read(junk)
    assert [(type(r), r.reason, r.offset) for r in records] == [(StreamBreak, "xml_malformed", 0)]


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path: Path, multistream_dump: Path) -> None:
    """`python -m pipeline --input wikidump:DUMP`: skips counted by reason, the same blocks from the
    single-stream dump in one process and from its multistream copy cut into ranges over 2 workers."""
    # The single-stream fixture under the multistream copy's name and folder (no index beside it), so
    # the documents have the same sources (hence ids, hence shards).
    alone = tmp_path / multistream_dump.parent.name / multistream_dump.name
    alone.parent.mkdir()
    alone.write_bytes(FIXTURE.read_bytes())
    single = build_shards(tmp_path / "single", [f"wikidump:{alone.parent}/*.xml.bz2"], "--no-annotate", "--num-shards", "2")
    assert single.skipped == {"redirect": 4, "namespace": 1, "disambiguation": 4, "empty": 1}
    assert single.totals.documents_read == single.totals.documents_written == ARTICLES
    assert len(plan_dump(str(multistream_dump), multistream_dump.stat().st_size, 20_000)) > 2
    multi = build_shards(tmp_path / "multi", [f"wikidump:{multistream_dump.parent}/*.xml.bz2"], "--no-annotate",
                         "--num-shards", "2", "--split-bytes", "20000",
                         "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    assert multi.skipped == single.skipped and multi.totals == single.totals
    # Shards follow the read plan (docs/pipeline.md, "Shard naming"): another plan, the same blocks.
    assert _blocks(tmp_path / "multi", multi) == _blocks(tmp_path / "single", single)
    assert (tmp_path / "multi" / "unigram_counts.npy").read_bytes() == (tmp_path / "single" / "unigram_counts.npy").read_bytes()


def _blocks(out: Path, manifest: Manifest) -> list[tuple]:
    import pyarrow as pa

    t = pa.concat_tables([pa.ipc.open_file(pa.memory_map(str(out / s.file))).read_all() for s in manifest.shards])
    return sorted(zip(t.column("doc_id").to_pylist(), t.column("block_index").to_pylist(),
                      t.column("input_ids").to_pylist(), strict=True))


@pytest.mark.slow
def test_pipeline_on_a_truncated_dump_dead_letters_the_break(tmp_path: Path) -> None:
    data = FIXTURE.read_bytes()
    cut = tmp_path / "in" / "enwiki-cut-pages-articles.xml.bz2"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) * 2 // 3])
    manifest = build_shards(tmp_path / "out", [f"wikidump:{cut}"], "--no-annotate", "--num-shards", "1")
    assert manifest.rejections == {"bz2_truncated": 1}
    dead = [json.loads(line) for line in (tmp_path / "out" / "dead_letter.jsonl").read_text().splitlines()]
    source = f"in/{cut.name}"  # the pipeline names a file by its folder and name
    assert [(d["source"], d["doc_id"], d["reason"]) for d in dead] == [(source, f"{source}@0", "bz2_truncated")]
    assert f"ends at byte {len(data) * 2 // 3}" in dead[0]["detail"]
    assert manifest.totals.documents_written > 0


def test_a_malformed_index_is_a_one_line_error(tmp_path: Path, multistream_dump: Path, capsys) -> None:
    from pipeline.run import main

    dump = tmp_path / multistream_dump.name
    dump.write_bytes(multistream_dump.read_bytes())
    Path(index_path(str(dump))).write_bytes(bz2.compress(b"616:10:AccessibleComputing\nnot an index line\n"))
    status = main(["--input", f"wikidump:{dump}", "--vocab", str(FIXTURE.parent.parent / "vocab" / "bert-base-cased-vocab.txt"),
                   "--output", str(tmp_path / "out"), "--no-annotate"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "line 2" in err and "index" in err


def test_without_the_wikidump_extra_the_format_is_a_one_line_error(tmp_path: Path) -> None:
    """WikiExtractor (AGPL-3.0) is an optional extra: without it the other formats work, and a dump is one
    line naming the extra, raised while planning (in the launcher, before any Beam work)."""
    blocker = tmp_path / "site" / "wikiextractor"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'wikiextractor'\")\n")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(repo)])}
    vocab = str(FIXTURE.parent.parent / "vocab" / "bert-base-cased-vocab.txt")

    def pipeline(spec: str, out: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", "--input", spec, "--no-annotate", "--vocab", vocab,
                               "--output", str(tmp_path / out)], capture_output=True, text=True, env=env, timeout=300)

    planned = subprocess.run([sys.executable, "-c", f"from pipeline.wikidump import plan_dump; plan_dump({str(FIXTURE)!r}, "
                              f"{FIXTURE.stat().st_size}, 1 << 20)"], capture_output=True, text=True, env=env, timeout=60)
    assert planned.returncode != 0 and "pip install 'spanbert[wikidump]'" in planned.stderr.strip().splitlines()[-1]
    dump = pipeline(f"wikidump:{FIXTURE}", "dump")
    err = dump.stderr.strip().splitlines()
    assert dump.returncode == 2 and len(err) == 1, dump.stderr
    assert err[0].startswith("error: ") and "spanbert[wikidump]" in err[0]
    assert not (tmp_path / "dump").exists()
    text = pipeline(f"text:{repo / 'tests' / 'fixtures' / 'gutenberg' / 'austen-emma.txt'}", "text")
    assert text.returncode == 0, text.stderr
    assert (tmp_path / "text" / "manifest.json").exists()


def test_vocabulary_trainer_reads_the_dump(cli_docs: dict[str, bytes]) -> None:
    """`python -m pipeline.vocab --input wikidump:DUMP` learns from the articles only."""
    from pipeline.documents import CleanOptions
    from pipeline.vocab import iter_texts

    stats: Counter[str] = Counter()
    texts = list(iter_texts([f"wikidump:{FIXTURE}"], "wikiextractor", CleanOptions(), stats))
    assert len(texts) == stats["documents_used"] == ARTICLES
    assert (stats["skipped.redirect"], stats["skipped.namespace"], stats["skipped.disambiguation"],
            stats["skipped.empty"]) == (4, 1, 4, 1)
    assert {t.split("\n", 1)[0] for t in texts} <= {d.split(b"\n", 1)[0].decode() for d in cli_docs.values()}


def test_markup_edge_cases_match_wikiextractors_command_line(tmp_path: Path) -> None:
    """Hand-written pages whose text depends on handing Extractor the text XML-escaped, as the dump
    stores it (<nowiki> inside a template call, entities written as entities, parser functions)."""
    import io

    texts = ["Intro {{lang|<nowiki>}}</nowiki>}} tail stays.\n\nSecond para with [[Link|label]] and <!-- hidden --> visible.",
             "Math: 1 < 2 and 3 > 2 and &amp;nbsp; and &lt;b&gt;bold&lt;/b&gt; and {{#if: x | yes | no }} end.",
             'Quote "x" and [[File:A.jpg|thumb|cap]] and [http://x.org site] and {{PAGENAME}} here.']
    page = ('  <page>\n    <title>T{0} &amp; &quot;q&quot;</title>\n    <ns>0</ns>\n    <id>{0}</id>\n    <revision>\n'
            '      <id>{0}0</id>\n      <timestamp>2016-01-02T03:04:05Z</timestamp>\n'
            '      <text xml:space="preserve">{1}</text>\n    </revision>\n  </page>\n')
    from xml.sax.saxutils import escape

    pages = "".join(page.format(i, escape(t, {'"': "&quot;"})) for i, t in enumerate(texts, 1))
    dump = tmp_path / "synthetic.xml.bz2"
    # The command line needs <siteinfo>'s Template namespace (without it, it drops every page).
    siteinfo = '  <siteinfo>\n    <namespaces>\n      <namespace key="10">Template</namespace>\n    </namespaces>\n  </siteinfo>\n'
    dump.write_bytes(bz2.compress(
        f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">\n{siteinfo}{pages}</mediawiki>\n'.encode()))
    subprocess.run([sys.executable, "-m", "wikiextractor.WikiExtractor", "--no-templates", "--processes", "1", "-q",
                    "-b", "10M", "-o", str(tmp_path / "out"), str(dump)], check=True)
    data = b"".join(p.read_bytes() for p in sorted((tmp_path / "out").rglob("wiki_*")))
    cli = {d.doc_id.split("#")[1]: d.data for d in frame_wikiextractor(io.BytesIO(data), "cli")}
    ours = {r.doc_id.split("#")[1]: r.data for r in _read(dump)}
    assert ours == cli and len(cli) == 3


def test_a_wrong_index_loses_no_page(tmp_path: Path, multistream_dump: Path) -> None:
    """Offsets that miss the stream starts by a byte: each range says so and reads on from the next
    stream start, and every page is still read exactly once."""
    dump = tmp_path / multistream_dump.name
    dump.write_bytes(multistream_dump.read_bytes())
    index = bz2.decompress(Path(index_path(str(multistream_dump))).read_bytes()).decode().splitlines()
    shifted = [f"{int(o) + 1}:{rest}" for o, rest in (line.split(":", 1) for line in index)]
    Path(index_path(str(dump))).write_bytes(bz2.compress(("\n".join(shifted) + "\n").encode()))
    ranges = plan_dump(str(dump), dump.stat().st_size, 20_000)
    records = _read_planned(dump, 20_000)
    breaks = [r for r in records if isinstance(r, StreamBreak)]
    assert ranges[0][0] == 0  # the first range starts with the header, not at the first offset
    assert [(b.reason, b.offset) for b in breaks] == [("not_a_bz2_stream", start) for start, _ in ranges[1:]]
    assert sorted(r.doc_id for r in records if not isinstance(r, StreamBreak)) == sorted(
        r.doc_id for r in _read(multistream_dump))


def test_memory_holds_one_page_not_the_dump(xml: bytes, monkeypatch) -> None:
    """Peak Python memory reading 16 copies of the fixture's small pages stays that of reading 4
    copies (reads and decompressed chunks made small, so both runs are past one chunk)."""
    import io
    import re
    import tracemalloc

    import pipeline.wikidump as wikidump

    monkeypatch.setattr(wikidump, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(wikidump, "OUT_BYTES", 16384)
    head, tail = xml.index(b"  <page>\n"), xml.rindex(b"  </page>\n") + len(b"  </page>\n")
    small = [p for p in re.findall(rb"  <page>\n.*?\n  </page>\n", xml[head:tail], re.S) if len(p) < 5000]

    def peak(copies: int) -> int:
        data = bz2.compress(xml[:head] + b"".join(small) * copies + xml[tail:], 1)
        tracemalloc.start()
        n = sum(1 for _ in frame_dump(io.BytesIO(data), "mem"))
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n == len(small) * copies
        return top

    few, many = peak(4), peak(16)
    assert many < 1.25 * few, (few, many)
