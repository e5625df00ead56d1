"""The pipeline on a real distributed engine: Beam's DaskRunner on a local dask.distributed cluster
of two worker processes, against the default runner's output on the same inputs.

What this guards (each is a way the DaskRunner of Beam 2.77 differs from the default runner, see
docs/pipeline.md "Runners"): every tagged output of a multi-output ParDo reaching every consumer,
finish_bundle output being dropped, side inputs recomputed, only the last transform's graph being
computed. Any of them changes the shards or breaks the manifest's accounting.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from dask.distributed import Client, LocalCluster

from contract.schema import Manifest
from pipeline.run import run

TIME_LIMIT_S = 240  # a hung cluster must fail the test, not the CI job


@pytest.fixture(scope="module")
def dask_scheduler() -> Iterator[str]:
    """Two worker processes, one thread each, on loopback only; shut down after the module."""

    def too_slow(signum, frame):
        raise TimeoutError(f"the Dask tests took longer than {TIME_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(TIME_LIMIT_S)
    try:
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=logging.ERROR,
        ) as cluster:
            yield cluster.scheduler_address
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _executed_per_worker(address: str) -> dict[str, int]:
    with Client(address) as client:
        return client.run(lambda dask_worker: dask_worker.state.executed_count)


@pytest.fixture(scope="module")
def small_corpus(wiki_slice: Path, tmp_path_factory) -> list[str]:
    """The real WikiExtractor slice (read as byte ranges) plus one-document text files made from
    its articles: a Gutenberg-framed CRLF file, a Latin-1 file (a dead letter), and plain files."""
    root = tmp_path_factory.mktemp("dask_text")
    articles = [a.split(">", 1)[1] for a in wiki_slice.read_text(encoding="utf-8").split("</doc>\n") if a.strip()]
    for i, body in enumerate(articles):
        (root / f"article{i}.txt").write_text(body, encoding="utf-8")
    pg = ("The Project Gutenberg EBook of Test\n\n*** START OF THIS PROJECT GUTENBERG EBOOK TEST ***\n\n"
          + articles[0][:3000] + "\n\n*** END OF THIS PROJECT GUTENBERG EBOOK TEST ***\nLicence footer.\n")
    (root / "gutenberg.txt").write_bytes(pg.replace("\n", "\r\n").encode("utf-8"))
    (root / "latin1.txt").write_bytes("Caf\u00e9 in Z\u00fcrich.".encode("latin-1"))
    return [f"wikiextractor:{wiki_slice}", f"text:{root}/*.txt"]


def _run(out: Path, inputs: list[str], vocab: Path, *extra: str) -> Manifest:
    argv = [a for spec in inputs for a in ("--input", spec)]
    return run([*argv, "--vocab", str(vocab), "--output", str(out), *extra])


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _assert_same_output(default: Path, dask: Path) -> None:
    """Every file identical, the manifest included (the same read plan; Beam flags are not recorded)."""
    a, b = _files(default), _files(dask)
    assert sorted(a) == sorted(b)
    manifest_a, manifest_b = (json.loads(x.pop("manifest.json")) for x in (a, b))
    for name in a:  # shards, dead letters, unigram counts, tokenizer copies
        assert a[name] == b[name], name
    assert manifest_a == manifest_b
    assert manifest_b["totals"]["documents_read"] > 0 and manifest_b["totals"]["blocks"] > 0


def test_dask_matches_default_runner_without_annotation(dask_scheduler, small_corpus, vocab_path, tmp_path) -> None:
    # Ranges of 40 kB: the WikiExtractor slice alone is 4 ranges, so the reads spread over both workers.
    # (The same read plan on both runners: shard names and contents follow the plan.)
    common = ("--no-annotate", "--num-shards", "3", "--batch-docs", "2", "--split-bytes", "40000")
    default = _run(tmp_path / "default", small_corpus, vocab_path, *common)
    before = _executed_per_worker(dask_scheduler)
    dask = _run(tmp_path / "dask", small_corpus, vocab_path, *common,
                "--runner", "dask", f"--dask_client_address={dask_scheduler}")
    after = _executed_per_worker(dask_scheduler)
    assert all(after[w] > before.get(w, 0) for w in after) and len(after) == 2  # both processes worked
    _assert_same_output(tmp_path / "default", tmp_path / "dask")
    # The inputs' known facts, independently of either run: 3 articles + 5 text files read, the
    # Latin-1 one rejected, the Gutenberg frame stripped.
    assert (dask.totals.documents_read, dask.rejections) == (8, {"invalid_utf8": 1})
    assert dask.cleaning["gutenberg_boilerplate_stripped"] == 1 == default.cleaning["gutenberg_boilerplate_stripped"]


@pytest.fixture(scope="module")
def short_articles(wiki_slice: Path, tmp_path_factory) -> Path:
    """The slice's articles cut to their first ~4,000 characters (whole lines): spaCy's share of
    the test stays a few seconds per run."""
    docs = [d for d in wiki_slice.read_text(encoding="utf-8").split("</doc>\n") if d.strip()]
    cut = ["\n".join(_first_lines(d, 4000)) + "\n" for d in docs]
    path = tmp_path_factory.mktemp("dask_wiki") / "short.txt"
    path.write_text("".join(d + "</doc>\n" for d in cut), encoding="utf-8")
    return path


def _first_lines(text: str, limit: int) -> list[str]:
    out, size = [], 0
    for line in text.split("\n"):
        if size + len(line) > limit and out:
            break
        out.append(line)
        size += len(line) + 1
    return out


def test_dask_matches_default_runner_with_annotation(dask_scheduler, short_articles, vocab_path, tmp_path) -> None:
    """spaCy in the Dask workers (sentences, entities, noun chunks), read as several ranges."""
    # several nlp chunks per article; several ranges
    common = ("--annotate", "--num-shards", "2", "--chunk-chars", "2000", "--split-bytes", "4000")
    # Default runner in this process: spawning its worker processes would double this test's time.
    _run(tmp_path / "default", [f"wikiextractor:{short_articles}"], vocab_path, *common, "--direct_num_workers=1")
    dask = _run(tmp_path / "dask", [f"wikiextractor:{short_articles}"], vocab_path, *common,
                "--runner", "DaskRunner", f"--dask_client_address={dask_scheduler}")
    _assert_same_output(tmp_path / "default", tmp_path / "dask")
    assert dask.totals.documents_read == 3
    assert dask.spans.entity_spans > 0 and dask.spans.noun_phrase_spans > 0


def test_runner_alias_and_partition_default() -> None:
    """`--runner dask` is Beam's DaskRunner by class path; partitions default to the planned ranges
    (at most 32), and a user's own Dask partitioning flag wins."""
    from pipeline.run import _resolve_runner, _runner_defaults

    path = "apache_beam.runners.dask.dask_runner.DaskRunner"
    assert _resolve_runner(["--runner", "dask", "--x"]) == ["--runner", path, "--x"]
    assert _resolve_runner(["--runner=DaskRunner"]) == [f"--runner={path}"]
    assert _resolve_runner(["--runner=DataflowRunner"]) == ["--runner=DataflowRunner"]
    assert _runner_defaults([f"--runner={path}"], 5) == [f"--runner={path}", "--dask_npartitions=5"]
    assert _runner_defaults([f"--runner={path}"], 500)[-1] == "--dask_npartitions=32"
    assert _runner_defaults([f"--runner={path}", "--dask_partition_size=4"], 5)[-1] == "--dask_partition_size=4"
    assert _runner_defaults(["--direct_num_workers=2"], 5) == ["--direct_num_workers=2"]
