"""The multi-process local runner, run repeatedly while other processes compete for the CPU, with the
accounting checked against an independent recount every time.

Why: before range-local writing, a 2-worker run once lost 4,432 blocks at load ~15 (the accounting
check caught it). The cause was a race in Beam's runner-side timed flush, now switched off
(docs/pipeline.md, "Lost blocks"; tests/pipeline/test_runner_data_plane.py opens that race on purpose).
Each run here has two Beam worker processes and CPU-bound hogs (one more than there are cores), several
ranges per worker, and checks: every document read is one of the written ones or a dead letter, the
blocks the shards hold are exactly the blocks of a plain single-process recomputation, and the files
are byte-identical to an in-process run's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.blocks import cut_blocks
from contract.tokenizer import wordpiece_from_vocab
from pipeline.documents import CleanOptions, Document, clean_document
from pipeline.encode import continuation_table, encode_segmented, rule_sentence_starts, safe_starts
from pipeline.inputs import match_inputs, parse_input, plan_ranges, read_range
from tests.conftest import VOCAB
from tests.pipeline.conftest import Run, run_pipeline

RUNS = 3


@pytest.fixture
def cpu_hogs() -> Iterator[None]:
    """cores + 1 busy loops at the tests' own priority, for the duration of the test."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range((os.cpu_count() or 1) + 1)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


@pytest.fixture(scope="module")
def corpus(wiki_slice: Path, tmp_path_factory) -> tuple[list[str], dict[str, list[int]]]:
    """Inputs (the 3-article slice read in ~20 KB ranges, plus 6 one-article text files and a Latin-1 dead
    letter) and, recomputed in plain Python, the blocks' pieces each written document must give."""
    root = tmp_path_factory.mktemp("contention")
    articles = [a.split(">", 1)[1] for a in wiki_slice.read_text(encoding="utf-8").split("</doc>\n") if a.strip()]
    for i in range(6):
        (root / f"a{i}.txt").write_text(articles[i % len(articles)][: 4000 * (i + 1)], encoding="utf-8")
    (root / "latin1.txt").write_bytes("Caf\u00e9.".encode("latin-1"))
    inputs = [f"wikiextractor:{wiki_slice}", f"text:{root}/*.txt"]
    tok = wordpiece_from_vocab(VOCAB)
    expected: dict[str, list[int]] = {}
    for spec in inputs:
        fmt, _, pattern = spec.partition(":")
        for rng in plan_ranges(match_inputs([parse_input(pattern, fmt)]), 1 << 30):
            for raw in read_range(rng):
                doc = clean_document(raw, CleanOptions())
                if isinstance(doc, Document):
                    [(ids, ws, ss, _)] = encode_segmented(tok, [doc.text], [safe_starts(doc.text, rule_sentence_starts(doc.text))],
                                                          False, continuation_table(tok))
                    expected[doc.doc_id] = [int(e - s) for s, e in cut_blocks(ws, ss, 62, 0.5)]
    return inputs, expected


def _check_accounting(run: Run, expected: dict[str, list[int]]) -> None:
    t = run.manifest.totals
    assert t.documents_read == len(expected) + 1 == t.documents_written + t.documents_rejected
    assert [d["doc_id"].rsplit("/", 1)[-1] for d in run.dead_letters()] == ["latin1.txt"]
    table = run.table()
    got: dict[str, list[int]] = {}
    for doc_id, ids in zip(table.column("doc_id").to_pylist(), table.column("input_ids").to_pylist(), strict=True):
        got.setdefault(doc_id, []).append(len(ids))
    assert got == expected  # every block of every document, nothing lost, nothing twice
    assert t.blocks == table.num_rows == sum(len(v) for v in expected.values())


@pytest.mark.slow
def test_two_worker_runs_under_contention_account_for_everything(corpus, tmp_path: Path, cpu_hogs) -> None:
    inputs, expected = corpus
    flags = ("--no-annotate", "--block-size", "64", "--num-shards", "6", "--split-bytes", "20000", "--batch-docs", "2")
    reference = run_pipeline(tmp_path / "in-process", inputs, *flags)
    _check_accounting(reference, expected)
    want = {p.name: p.read_bytes() for p in reference.out.iterdir()}
    for k in range(RUNS):
        run = run_pipeline(tmp_path / f"mp{k}", inputs, *flags,
                           "--direct_running_mode=multi_processing", "--direct_num_workers=2")
        _check_accounting(run, expected)
        assert {p.name: p.read_bytes() for p in run.out.iterdir()} == want, f"run {k}"
