"""Two measurements behind the cost model in docs/pipeline.md (not a test; needs shards from `python -m pipeline`).

1. The trainer's data path: blocks per CPU-second of one DataLoader worker (trainer.data.BlockStream:
   shard read + geometric masking + SBO targets + collate, batch 32 x 512), measured in-process with
   `time.process_time` so that a loaded machine does not distort it, then through `build_loader` with 2
   workers (wall) as a check.
2. The shard writer's memory: `_WriteShardFn` sorts and builds a whole shard in memory. Each size runs in
   a fresh process: RSS before (input already held, as Beam's grouped iterable would be) and VmHWM after
   writing, for shards of 1x, 2x, 4x the largest shard of the given run.

    .venv/bin/python bench/bench_data_path.py SHARD_DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def loader_rate(shards: str, batches: int) -> None:
    import torch

    from masking import MaskingConfig
    from trainer.config import DataConfig
    from trainer.data import BlockStream, build_loader

    torch.set_num_threads(1)
    stream = BlockStream(shards, DataConfig(batch_size=32, num_workers=0), MaskingConfig(seed=0), max_len=512)
    it = iter(stream)
    next(it)  # builds the masker
    c, t = time.process_time(), time.perf_counter()
    blocks = tokens = 0
    for _ in range(batches):
        b = next(it)
        blocks += len(b["row_ids"])
        tokens += int((b["input_ids"] != stream.vocab.pad).sum())
    cpu, wall = time.process_time() - c, time.perf_counter() - t
    print(f"one worker (in-process): {blocks} blocks in {cpu:.2f} CPU-s ({wall:.2f} s wall): "
          f"{blocks / cpu:,.0f} blocks per CPU-second, {tokens / cpu:,.0f} non-pad tokens per CPU-second, "
          f"{tokens / blocks:.1f} non-pad tokens per block", flush=True)
    loader = iter(build_loader(stream, num_workers=2, pin_memory=False))
    next(loader)
    t = time.perf_counter()
    n = sum(len(next(loader)["row_ids"]) for _ in range(batches))
    wall = time.perf_counter() - t
    print(f"build_loader, 2 workers: {n} blocks in {wall:.2f} s wall: {n / wall:,.0f} blocks/s (shared cores)", flush=True)


def shard_memory(shards: str, multiple: int) -> None:
    """Child: stream one shard holding `multiple` copies of the largest shard's documents through the
    range shard writer; print RSS (the writer holds one record batch, so the increase should not grow)."""
    import numpy as np

    from contract.schema import open_shard, read_manifest
    from pipeline.encode import BlockRows
    from pipeline.shards import RangeShardWriter

    m = read_manifest(shards)
    table = max((open_shard(p) for p in m.shard_paths), key=lambda t: t.num_rows)
    ids = table.column("input_ids").to_pylist()
    ws = table.column("word_start").to_pylist()
    doc_ids = table.column("doc_id").to_pylist()
    docs: dict[str, BlockRows] = {}
    for k in range(multiple):
        for i, d in enumerate(doc_ids):
            key = f"{d}~{k}"
            rows = docs.setdefault(key, BlockRows(key, [], [], [], []))
            rows.input_ids.append(np.asarray(ids[i], dtype=np.int32))
            rows.word_start.append(np.asarray(ws[i], dtype=bool))
            rows.entity_spans.append([])
            rows.noun_phrase_spans.append([])
    blocks = list(docs.values())
    del ids, ws, table
    before = _status_kb("VmRSS")
    with tempfile.TemporaryDirectory() as out:
        writer = RangeShardWriter(out, 0, target_input_bytes=1 << 62)  # one part: the whole shard
        for rows in blocks:
            writer.add(rows, 1)
        (info,) = writer.close()
    peak = _status_kb("VmHWM")
    print(json.dumps({"multiple": multiple, "rows": info.rows, "tokens": info.tokens, "shard_bytes": info.bytes,
                      "rss_before_kb": before, "peak_kb": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shards", help="a pipeline output directory")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--multiples", default="1,2,4")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        shard_memory(args.shards, args.child)
        return
    loader_rate(args.shards, args.batches)
    print("shard writer (streams record batches): shard MB, pieces, RSS before -> peak MB, increase / shard bytes")
    for k in (int(x) for x in args.multiples.split(",")):
        out = subprocess.run([sys.executable, __file__, args.shards, "--child", str(k)], check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        inc = (r["peak_kb"] - r["rss_before_kb"]) * 1024
        print(f"  {k}x: {r['shard_bytes'] / 1e6:7.1f} MB, {r['tokens']:>10,} pieces, RSS {r['rss_before_kb'] / 1024:7.0f}"
              f" -> {r['peak_kb'] / 1024:7.0f} MB, +{inc / 1e6:6.0f} MB = {inc / r['shard_bytes']:.2f} x shard bytes", flush=True)


if __name__ == "__main__":
    main()
