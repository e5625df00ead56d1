"""Pipeline cost at growing corpus size, vs bare `tokenizers` and vs HF `datasets` (`make bench`; not a test).

The corpus is the Wikipedia extract + Gutenberg books of ../shared/data, repeated N times with new
document ids (each copy is a symlinked file under a new name, so `<source>#<id>` differs), in a temp
dir. Every measured command runs as its own subprocess; the bench reports for each:

- wall seconds, and CPU seconds of the whole process tree (getrusage(RUSAGE_CHILDREN) delta: exact on a
  shared machine, where wall clock depends on the neighbours);
- peak RSS of each process of the tree (VmHWM polled from /proc every 0.2 s): for the pipeline the
  runner process (which, on Beam's local runner, buffers every shuffle) and the busiest worker;
- words/s (wall) and words per CPU-second.

Rows (per size):
  bare       one `encode_batch` per copy of the cleaned corpus (texts already in memory)
  pipeline   `python -m pipeline --no-annotate`, --num-shards 8 x N (fixed shard-count ratio), 1 worker
             (in-process FnApiRunner) and 2 workers (--direct_running_mode=multi_processing)
  dask       (--dask) the same on Beam's DaskRunner against an embedded LocalCluster of 2 worker processes
             (one thread each): client + scheduler process, nannies and workers, each process's peak; the
             output is compared byte for byte with the 1-worker run's (every file but the manifest)
  datasets   HF `datasets`: load_dataset("json") -> map(tokenize, batched, num_proc=2) -> group into
             510-piece blocks (run_mlm's group_texts, tail kept) -> save_to_disk; same cleaned text,
             same vocabulary (BertTokenizerFast built from the local vocab.txt)
Optional (--annotate-docs K): spaCy with the pipeline's components, bare `nlp.pipe` vs the pipeline with
annotation, 1 worker, on the first K WikiExtractor articles; with --annotate-copies 1,5 the pipeline with
annotation on that many copies of the K articles (the memory bound with spaCy loaded).

Peak RSS is reported for every process of the tree: `runner` (the launching process), then `w1`, `w2`,
... (the other processes, busiest first: Beam's SDK workers, or Dask's worker and nanny processes).

    .venv/bin/python bench/bench_pipeline_scale.py                  # sizes 1,3 (the make bench default)
    .venv/bin/python bench/bench_pipeline_scale.py --sizes 1,10,30 --annotate-docs 106 --json out.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
VOCAB = DATA / "vocab" / "bert-base-cased-vocab.txt"
WIKI = DATA / "wiki" / "enwiki-sample-extracted.txt"
BOOK_DIRS = ("gutenberg", "gutenberg-raw")
BLOCK = 510  # pieces per block (block_size 512 minus [CLS]/[SEP])
SHARDS_PER_COPY = 8  # --num-shards = 8 x N: the shard-count ratio stays fixed as the corpus grows


@dataclass
class Measure:
    label: str
    size: int
    wall: float
    cpu: float
    words: int
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # role -> MB
    extra: dict[str, object] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Corpus copies


def build_copies(root: Path, n: int) -> list[str]:
    """N copies of the corpus as symlinks under new names; returns the pipeline --input flags."""
    (root / "wiki").mkdir(parents=True)
    for k in range(n):
        (root / "wiki" / f"r{k:03d}.txt").symlink_to(WIKI)
    for d in BOOK_DIRS:
        (root / d).mkdir()
        for src in sorted((DATA / "books" / d).glob("*.txt")):
            for k in range(n):
                (root / d / f"r{k:03d}-{src.name}").symlink_to(src)
    flags = ["--input", f"wikiextractor:{root}/wiki/*.txt"]
    for d in BOOK_DIRS:
        flags += ["--input", f"text:{root}/{d}/*.txt"]
    return flags


def cleaned_texts() -> list[str]:
    """The documents the pipeline keeps, after its own framing and cleaning (one copy)."""
    from bench_pipeline import CORPUS  # this folder is sys.path[0] when the script runs
    from bench_pipeline import cleaned_texts as clean

    return clean(CORPUS)


def write_jsonl(texts: list[str], path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for k in range(n):
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": f"r{k}-{i}", "text": t}, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------
# Measuring a subprocess tree


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, dict[int, int], int]:
    """(wall s, CPU s of the tree, peak RSS kB per pid, root pid). Raises if the command fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for pid in _tree(proc.pid):
                peaks[pid] = max(peaks.get(pid, 0), _hwm_kb(pid))
            stop.wait(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, _ = proc.communicate()
    stop.set()
    poller.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... exited {proc.returncode}:\n{out.decode()[-3000:]}")
    return wall, cpu, peaks, proc.pid


def child_cmd(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", *args]


ENV = {"PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}


# ------------------------------------------------------------------------------------------------
# The measured commands


def run_bare(size: int, jsonl1: Path) -> Measure:
    wall, cpu, peaks, root = measure(child_cmd("bare", str(jsonl1), str(size)), ENV)
    res = json.loads(Path(f"{jsonl1}.bare.json").read_text())
    return Measure("bare tokenizers encode_batch", size, res["seconds"], res["cpu"], res["words"],
                   {"process": peaks.get(root, 0) / 1024}, {"wall_process": wall, "cpu_process": cpu})


def per_process_mb(peaks: dict[int, int], root: int) -> dict[str, float]:
    """{'runner': MB, 'w1': MB, 'w2': MB, ...}: every process of the tree, the others busiest first."""
    others = sorted((v for pid, v in peaks.items() if pid != root), reverse=True)
    return {"runner": peaks.get(root, 0) / 1024, **{f"w{i + 1}": v / 1024 for i, v in enumerate(others)}}


def run_pipeline(size: int, inputs: list[str], out: Path, workers: int, annotate: bool = False,
                 dask: bool = False) -> Measure:
    if dask:
        beam = []
        head = child_cmd("dask")
    else:
        beam = ["--direct_num_workers=1"] if workers == 1 else ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
        head = [sys.executable, "-m", "pipeline"]
    cmd = [*head, *inputs, "--vocab", str(VOCAB), "--output", str(out),
           "--num-shards", str(SHARDS_PER_COPY * max(1, size)), "--overwrite", *beam]
    if not annotate:
        cmd.append("--no-annotate")
    wall, cpu, peaks, root = measure(cmd, ENV)
    from contract.schema import read_manifest

    m = read_manifest(out).manifest
    shard_bytes = [s.bytes for s in m.shards]
    label = f"pipeline{'' if annotate else ' --no-annotate'}, {workers} worker{'s' if workers > 1 else ''}"
    if dask:
        label = f"dask{'' if annotate else ' --no-annotate'}, {workers} worker processes"
    return Measure(label, size, wall, cpu, m.totals.words, per_process_mb(peaks, root), {
        "tokens": m.totals.tokens, "blocks": m.totals.blocks, "documents": m.totals.documents_read,
        "shards": len(shard_bytes), "output_bytes": sum(shard_bytes), "max_shard_bytes": max(shard_bytes),
        "output_sha256": output_digest(out),
    })


def run_datasets(size: int, jsonl: Path, out: Path, num_proc: int, words: int) -> Measure:
    """`words`: the pipeline's count on the same text (the token totals are checked equal)."""
    wall, cpu, peaks, root = measure(child_cmd("datasets", str(jsonl), str(out), str(num_proc)), {**ENV, "HF_DATASETS_OFFLINE": "1"})
    res = json.loads((out / "bench.json").read_text())
    others = [v for pid, v in peaks.items() if pid != root]
    rss = {"runner": peaks.get(root, 0) / 1024, **({"worker": max(others) / 1024} if others else {})}
    # Timed from load_dataset to save_to_disk inside the child (python + datasets imports excluded).
    return Measure(f"HF datasets map(num_proc={num_proc}) + group + save", size, res["seconds"], res["cpu"], words, rss,
                   {"tokens": res["tokens"], "blocks": res["blocks"], "output_bytes": res["bytes"],
                    "wall_process": wall, "cpu_process": cpu})


def run_spacy(wiki_slice: Path, batch_size: int) -> Measure:
    wall, cpu, peaks, root = measure(child_cmd("spacy", str(wiki_slice), str(batch_size)), ENV)
    res = json.loads(Path(f"{wiki_slice}.spacy.json").read_text())
    # words: set by the caller from the pipeline's manifest (same documents)
    return Measure(f"bare spaCy nlp.pipe(batch_size={batch_size})", 0, res["seconds"], res["cpu"], 0,
                   {"process": peaks.get(root, 0) / 1024}, {"wall_process": wall, "cpu_process": cpu})


# ------------------------------------------------------------------------------------------------
# Children (run in their own process so that their CPU time and memory are theirs alone)


def child_bare(jsonl1: str, copies: str) -> None:
    import numpy as np

    from contract.tokenizer import wordpiece_from_vocab
    from pipeline.encode import continuation_table

    texts = [json.loads(line)["text"] for line in open(jsonl1, encoding="utf-8")]
    tok = wordpiece_from_vocab(VOCAB)
    cont = continuation_table(tok)
    seconds, cpu, words = 0.0, 0.0, 0
    for _ in range(int(copies)):  # one call per copy: the whole cleaned corpus in one batch, as before
        t, c = time.perf_counter(), time.process_time()  # process_time counts the tokenizer's threads too
        encs = tok.encode_batch(texts, add_special_tokens=False)
        seconds, cpu = seconds + time.perf_counter() - t, cpu + time.process_time() - c
        words += sum(int((~cont[np.asarray(e.ids, dtype=np.int64)]).sum()) for e in encs)
        del encs
    Path(f"{jsonl1}.bare.json").write_text(json.dumps({"seconds": seconds, "cpu": cpu}))


def child_dask(*pipeline_args: str) -> None:
    """The pipeline on Beam's DaskRunner against an embedded LocalCluster (2 processes, 1 thread each)."""
    import logging

    from dask.distributed import LocalCluster

    from pipeline.run import main as pipeline_main

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        rc = pipeline_main([*pipeline_args, "--runner", "dask", f"--dask_client_address={cluster.scheduler_address}"])
    if rc:
        raise SystemExit(rc)


def output_digest(out: Path) -> str:
    """sha256 over every output file but the manifest (which records the runner options), by name:
    equal digests = byte-identical output, comparable across separate bench invocations."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(out.iterdir()):
        if p.name != "manifest.json":
            h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def same_files(a: Path, b: Path) -> bool:
    """Every file but the manifest (which records the runner options) byte-identical."""
    names = sorted(p.name for p in a.iterdir() if p.name != "manifest.json")
    if names != sorted(p.name for p in b.iterdir() if p.name != "manifest.json"):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def child_datasets(jsonl: str, out: str, num_proc: str) -> None:
    """What a user writes instead: HF datasets map + run_mlm-style grouping + save_to_disk."""
    from itertools import chain

    import datasets
    from transformers import BertTokenizerFast

    datasets.disable_progress_bars()
    # The same vocabulary, loaded the way a user would from a local directory (no hub access).
    # (transformers 5 ignores BertTokenizerFast(vocab_file=...): it builds an empty vocabulary.)
    tok_dir = Path(out) / "tokenizer"
    tok_dir.mkdir(parents=True)
    shutil.copy(VOCAB, tok_dir / "vocab.txt")
    tok = BertTokenizerFast.from_pretrained(str(tok_dir), do_lower_case=False)
    tok.model_max_length = 1 << 30  # documents are longer than 512; we group afterwards

    def tokenize(batch: dict) -> dict:
        enc = tok(batch["text"], add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
        return {"input_ids": enc["input_ids"]}

    def group(batch: dict) -> dict:  # run_mlm.py's group_texts, keeping the tail block (crosses documents)
        cat = list(chain.from_iterable(batch["input_ids"]))
        return {"input_ids": [cat[i : i + BLOCK] for i in range(0, len(cat), BLOCK)]}

    cache = Path(out) / "cache"
    t0, c0 = time.perf_counter(), _tree_cpu()
    ds = datasets.load_dataset("json", data_files=jsonl, split="train", cache_dir=str(cache))
    ds = ds.map(tokenize, batched=True, num_proc=int(num_proc), remove_columns=ds.column_names)
    ds = ds.map(group, batched=True, num_proc=int(num_proc), remove_columns=ds.column_names)
    ds.save_to_disk(str(Path(out) / "saved"))
    seconds, cpu = time.perf_counter() - t0, _tree_cpu() - c0
    import pyarrow.compute as pc

    col = ds.data.column("input_ids")
    tokens = int(pc.sum(pc.list_value_length(col)).as_py())
    nbytes = sum(p.stat().st_size for p in (Path(out) / "saved").rglob("*.arrow"))
    (Path(out) / "bench.json").write_text(json.dumps(
        {"seconds": seconds, "cpu": cpu, "tokens": tokens, "blocks": len(col), "bytes": nbytes}))


def _tree_cpu() -> float:
    """CPU seconds of this process (all threads) and its reaped children (the map workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def child_spacy(wiki_slice: str, batch_size: str) -> None:
    from contract.annotate import load_nlp
    from pipeline.documents import CleanOptions, Document, clean_document, frame_wikiextractor

    with open(wiki_slice, "rb") as f:
        texts = [d.text for r in frame_wikiextractor(f, "w") if isinstance(d := clean_document(r, CleanOptions()), Document)]
    nlp = load_nlp()
    t, c = time.perf_counter(), time.process_time()
    for d in nlp.pipe(texts, batch_size=int(batch_size)):
        _ = (d.ents, list(d.noun_chunks), list(d.sents))
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    Path(f"{wiki_slice}.spacy.json").write_text(json.dumps({"seconds": seconds, "cpu": cpu}))


# ------------------------------------------------------------------------------------------------


def fmt_row(m: Measure, bare: Measure | None) -> str:
    rss = " ".join(f"{k} {v:,.0f}" for k, v in m.peak_rss_mb.items())
    ratio = ""
    if bare is not None and m is not bare:
        ratio = f"{m.wall / bare.wall:5.2f}x wall  {m.cpu / bare.cpu:5.2f}x CPU"
    return (f"{m.size:>3}x  {m.label:<46} {m.wall:8.1f} {m.cpu:8.1f} {m.words:>11,} {m.words / m.wall:>10,.0f}"
            f" {m.words / m.cpu:>10,.0f}  {rss:<26} {ratio}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,3", help="corpus copies, comma-separated (default 1,3, as make bench; the README table used 1,10,30)")
    p.add_argument("--workers", default="1,2", help="pipeline worker counts")
    p.add_argument("--no-datasets", action="store_true", help="skip the HF datasets rows")
    p.add_argument("--no-bare", action="store_true", help="skip the bare rows (one call per copy: linear by construction)")
    p.add_argument("--annotate-docs", type=int, default=0, help="also compare spaCy on this many articles (0: skip)")
    p.add_argument("--annotate-copies", default="", help="with --annotate-docs: pipeline with annotation on these copies (e.g. 1,5)")
    p.add_argument("--dask", action="store_true", help="also run on the DaskRunner (2 worker processes) and compare outputs")
    p.add_argument("--json", help="append every measurement as a JSON line to this file")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--child"]:  # before argparse: a child's own arguments may look like our options
        {"bare": child_bare, "datasets": child_datasets, "spacy": child_spacy, "dask": child_dask}[sys.argv[2]](*sys.argv[3:])
        return
    args = p.parse_args()
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          "CPU = CPU-seconds of the process tree; RSS = peak per process (MB)", flush=True)
    print(f"size {'run':<46} {'wall s':>8} {'CPU s':>8} {'words':>11} {'words/s':>10} {'w/CPU-s':>10}  peak RSS MB", flush=True)
    results: list[Measure] = []
    texts = cleaned_texts()
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        tmpdir = Path(tmp)
        jsonl1 = tmpdir / "clean-x1.jsonl"
        write_jsonl(texts, jsonl1, 1)
        for size in (int(s) for s in args.sizes.split(",") if s):
            root = tmpdir / f"x{size}"
            inputs = build_copies(root, size)
            bare = None if args.no_bare else run_bare(size, jsonl1)
            rows = [bare] if bare else []
            if bare:
                print(fmt_row(bare, None), flush=True)
            outs = []
            for w in (int(x) for x in args.workers.split(",") if x):
                m = run_pipeline(size, inputs, root / f"out{w}", w)
                assert bare is None or m.words == bare.words, (m.words, bare.words)  # same documents, same words
                rows.append(m)
                outs.append(root / f"out{w}")
                if len(outs) > 1:
                    m.extra["identical_to_first"] = same_files(outs[0], outs[-1])
                print(fmt_row(m, bare), *(["identical" if m.extra["identical_to_first"] else "OUTPUT DIFFERS"] if len(outs) > 1 else []), flush=True)
            if args.dask:
                m = run_pipeline(size, inputs, root / "out-dask", 2, dask=True)
                outs.append(root / "out-dask")
                if len(outs) > 1:
                    m.extra["identical_to_first"] = same_files(outs[0], outs[-1])
                rows.append(m)
                print(fmt_row(m, bare), *(["identical" if m.extra["identical_to_first"] else "OUTPUT DIFFERS"] if len(outs) > 1 else []), flush=True)
            for m in rows:
                if "output_sha256" in m.extra:
                    print(f"     {m.label}: output sha256 {m.extra['output_sha256'][:16]}", flush=True)
            for o in outs:
                subprocess.run(["rm", "-rf", str(o)], check=True)
            if not args.no_datasets:
                jsonl = root / "clean.jsonl"
                write_jsonl(texts, jsonl, size)
                m = run_datasets(size, jsonl, root / "hf", 2, rows[-1].words)
                m.extra["tokens_equal_pipeline"] = m.extra["tokens"] == rows[-1].extra["tokens"]
                rows.append(m)
                print(fmt_row(m, bare), f" tokens {'==' if m.extra['tokens_equal_pipeline'] else '!='} pipeline's", flush=True)
            subprocess.run(["rm", "-rf", str(root)], check=True)
            results.extend(rows)
        if args.annotate_docs:
            docs = WIKI.read_bytes().split(b"</doc>\n")
            docs = [d for d in docs if d.strip()][: args.annotate_docs]
            wiki_slice = tmpdir / "ann" / "wiki" / "slice.txt"
            wiki_slice.parent.mkdir(parents=True)
            wiki_slice.write_bytes(b"</doc>\n".join(docs) + b"</doc>\n")
            bare = run_spacy(wiki_slice, 1000)
            m = run_pipeline(0, ["--input", f"wikiextractor:{wiki_slice}"], tmpdir / "ann" / "out", 1, annotate=True)
            bare.words = m.words
            print(fmt_row(bare, None), flush=True)
            print(fmt_row(m, bare), flush=True)
            results.extend([bare, m])
            for copies in (int(c) for c in args.annotate_copies.split(",") if c):
                cdir = tmpdir / "ann" / f"x{copies}"
                cdir.mkdir(parents=True)
                for k in range(copies):
                    (cdir / f"r{k:03d}.txt").symlink_to(wiki_slice)
                m = run_pipeline(copies, ["--input", f"wikiextractor:{cdir}/*.txt"], tmpdir / "ann" / f"out{copies}", 1,
                                 annotate=True)
                m.label = f"pipeline (annotate) {args.annotate_docs} articles x{copies}, 1 worker"
                print(fmt_row(m, None), flush=True)
                results.append(m)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            for m in results:
                f.write(json.dumps({**asdict(m), "load": load}) + "\n")


if __name__ == "__main__":
    main()
