"""`--format wikidump` against WikiExtractor's own output of the same dump (not a test).

    python bench/bench_wikidump.py [--dump DUMP.xml.bz2] [--extracted EXTRACTED.txt] [--vocab VOCAB]

Runs `python -m pipeline --no-annotate` three times, with the bert-base-cased vocabulary:
1. `wikidump:DUMP` (the raw dump, one range),
2. `wikidump:` the same dump rewritten in the multistream layout (20 pages a stream, index beside it)
   and cut into several ranges (`--split-bytes`), which must give the same pieces per article,
3. `wikiextractor:EXTRACTED` (the dump run through `python -m wikiextractor.WikiExtractor`).
Then compares, by page id: which articles each kept, total word pieces (goal: within 2% on the
articles both kept) and the distribution of per-article piece-count ratios (wikidump / WikiExtractor).
Prints one JSON object. Times are wall clock and CPU seconds of each run (this process and its
children; the machine is shared, so CPU seconds are the figure to compare).
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import json
import logging
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from contract.schema import Manifest, open_shard, read_manifest
from pipeline.run import run
from pipeline.wikidump import multistream, plan_dump

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def pipeline_pieces(out: Path, spec: str, vocab: Path, *flags: str) -> tuple[dict[str, int], Manifest, dict[str, float]]:
    """Run the pipeline; (page id -> word pieces, manifest, timing)."""
    wall, cpu = time.perf_counter(), _cpu()
    with contextlib.redirect_stdout(sys.stderr):  # the pipeline's summary; stdout is the report
        run(["--input", spec, "--vocab", str(vocab), "--output", str(out), "--no-annotate", "--num-shards", "2",
             "--overwrite", *flags])
    timing = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(_cpu() - cpu, 2)}
    manifest = read_manifest(out)
    pieces: dict[str, int] = defaultdict(int)
    for path in manifest.shard_paths:
        table = open_shard(path)
        lengths = table.column("input_ids").combine_chunks().value_lengths().to_numpy()
        for doc_id, n in zip(table.column("doc_id").to_pylist(), lengths, strict=True):
            pieces[doc_id.rsplit("#", 1)[1]] += int(n)
    return dict(pieces), manifest.manifest, timing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dump", type=Path, default=DATA / "wiki" / "enwiki-sample-pages-articles.xml.bz2")
    p.add_argument("--extracted", type=Path, default=DATA / "wiki" / "enwiki-sample-extracted.txt")
    p.add_argument("--vocab", type=Path, default=DATA / "vocab" / "bert-base-cased-vocab.txt")
    p.add_argument("--split-bytes", type=int, default=200_000, help="range size for the multistream run")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ours, ours_manifest, ours_time = pipeline_pieces(root / "wikidump", f"wikidump:{args.dump}", args.vocab)
        ms_dir = root / "ms"
        ms_dir.mkdir()
        dump, index = multistream(bz2.decompress(args.dump.read_bytes()), pages_per_stream=20)
        ms_path = ms_dir / "enwiki-sample-pages-articles-multistream.xml.bz2"
        ms_path.write_bytes(dump)
        (ms_dir / "enwiki-sample-pages-articles-multistream-index.txt.bz2").write_bytes(index)
        multi, _, multi_time = pipeline_pieces(root / "multi", f"wikidump:{ms_dir}/*.xml.bz2", args.vocab,
                                               "--split-bytes", str(args.split_bytes))
        ms_ranges = len(plan_dump(str(ms_path), len(dump), args.split_bytes))
        ref, ref_manifest, ref_time = pipeline_pieces(root / "ref", f"wikiextractor:{args.extracted}", args.vocab)
    common = sorted(set(ours) & set(ref))
    ratios = np.array([ours[k] / ref[k] for k in common])
    ours_total, ref_total = sum(ours[k] for k in common), sum(ref[k] for k in common)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "dump": str(args.dump),
        "articles": {"wikidump": len(ours), "wikiextractor": len(ref), "both": len(common),
                     "only_wikiextractor": sorted(set(ref) - set(ours)), "only_wikidump": sorted(set(ours) - set(ref))},
        "skipped": ours_manifest.skipped,
        "pieces": {
            "wikidump_common": ours_total, "wikiextractor_common": ref_total,
            "relative_difference": round((ours_total - ref_total) / ref_total, 6),
            "wikiextractor_all": sum(ref.values()),
        },
        "per_article_ratio": {
            "identical": int((ratios == 1).sum()),
            "min": round(float(ratios.min()), 5), "p5": round(float(np.percentile(ratios, 5)), 5),
            "median": round(float(np.median(ratios)), 5), "p95": round(float(np.percentile(ratios, 95)), 5),
            "max": round(float(ratios.max()), 5),
            "outside_1pct": {k: round(ours[k] / ref[k], 4) for k in common if abs(ours[k] / ref[k] - 1) > 0.01},
        },
        "multistream_ranges": ms_ranges,
        "multistream_ranges_same_pieces": multi == ours,
        "time": {"wikidump": ours_time, "wikidump_multistream": multi_time, "wikiextractor_format": ref_time},
        "documents_read": {"wikidump": ours_manifest.totals.documents_read,
                           "wikiextractor": ref_manifest.totals.documents_read},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
