"""Pipeline overhead vs the bare libraries, on the same documents (`make bench`; not a test).

1. `python -m pipeline --no-annotate` on the whole shared corpus vs bare `tokenizers`
   `encode_batch` over the same cleaned documents (goal: <= 1.25x the bare time).
2. `python -m pipeline` with spaCy on a WikiExtractor slice vs bare `nlp.pipe` with the same
   components (lemmatizer excluded) over the same documents (goal: <= 1.15x).
Pipeline times are wall clock of `pipeline.run.run` (Beam start-up, reading, shuffles, writing and
hashing shards included); bare times cover only the library call on texts already in memory.
Both pipeline modes are also run with 2 worker processes (--direct_running_mode=multi_processing).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from contract.annotate import load_nlp
from contract.tokenizer import word_starts, wordpiece_from_vocab
from pipeline.documents import FRAMERS, CleanOptions, Document, clean_document
from pipeline.inputs import source_base
from pipeline.run import run

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VOCAB = DATA / "vocab" / "bert-base-cased-vocab.txt"
WIKI = DATA / "wiki" / "enwiki-sample-extracted.txt"
CORPUS = [("wikiextractor", str(WIKI)), ("text", f"{DATA}/books/gutenberg/*.txt"), ("text", f"{DATA}/books/gutenberg-raw/*.txt")]
ONE_WORKER = ["--direct_num_workers=1"]
TWO_WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
REPEATS = 2  # best of: the machine may be shared, and the fastest run is the least disturbed


def cleaned_texts(specs: list[tuple[str, str]]) -> list[str]:
    texts = []
    for fmt, pattern in specs:
        base = source_base(pattern)
        for path in sorted(glob.glob(pattern)):
            with open(path, "rb") as f:
                for raw in FRAMERS[fmt](f, path[len(base) :]):
                    doc = clean_document(raw, CleanOptions())
                    if isinstance(doc, Document):
                        texts.append(doc.text)
    return texts


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def pipeline_time(specs: list[tuple[str, str]], extra: list[str], repeats: int = 1) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out:
        argv = [a for fmt, pat in specs for a in ("--input", f"{fmt}:{pat}")]
        argv += ["--vocab", str(VOCAB), "--output", out, "--num-shards", "8", "--overwrite", *extra]
        seconds, manifest = timed(lambda: run(argv), repeats)
    return seconds, manifest.totals.words


def wiki_slice(n_docs: int, directory: Path) -> Path:
    docs = WIKI.read_bytes().split(b"</doc>\n")[:n_docs]
    path = directory / f"wiki{n_docs}.txt"
    path.write_bytes(b"</doc>\n".join(docs) + b"</doc>\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotate-docs", type=int, default=24, help="WikiExtractor articles for the spaCy comparison")
    args = p.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    rows: list[tuple[str, float, int, str]] = []
    load = os.getloadavg()

    texts = cleaned_texts(CORPUS)
    tok = wordpiece_from_vocab(VOCAB)
    bare_tok, encs = timed(lambda: tok.encode_batch(texts, add_special_tokens=False), REPEATS)
    words = sum(int(word_starts(e.word_ids).sum()) for e in encs)
    rows.append(("bare tokenizers encode_batch", bare_tok, words, ""))
    for label, extra in (("1 worker", ONE_WORKER), ("2 workers", TWO_WORKERS)):
        t, w = pipeline_time(CORPUS, ["--no-annotate", *extra], REPEATS)
        assert w == words, (w, words)  # same documents, same words
        rows.append((f"pipeline --no-annotate, {label}", t, w, f"{t / bare_tok:.2f}x bare (goal <= 1.25x)"))

    with tempfile.TemporaryDirectory() as tmp:
        spec = [("wikiextractor", str(wiki_slice(args.annotate_docs, Path(tmp))))]
        slice_texts = cleaned_texts(spec)
        nlp = load_nlp()
        bare_nlp, _ = timed(lambda: [(d.ents, list(d.noun_chunks), list(d.sents)) for d in nlp.pipe(slice_texts, batch_size=64)])
        t1, w1 = pipeline_time(spec, ONE_WORKER)
        rows.append((f"bare spaCy nlp.pipe ({len(slice_texts)} articles)", bare_nlp, w1, ""))
        rows.append(("pipeline annotate, 1 worker", t1, w1, f"{t1 / bare_nlp:.2f}x bare (goal <= 1.15x)"))
        t2, w2 = pipeline_time(spec, TWO_WORKERS)
        rows.append(("pipeline annotate, 2 workers", t2, w2, f"{t2 / bare_nlp:.2f}x bare"))

    print(f"\n{os.cpu_count()} cores, load average before: {load[0]:.1f}; best of {REPEATS} for the --no-annotate rows")
    print(f"{'run':<46} {'seconds':>8} {'words':>10} {'words/s':>10}  ratio")
    for name, seconds, w, note in rows:
        print(f"{name:<46} {seconds:8.2f} {w:10d} {w / seconds:10.0f}  {note}")


if __name__ == "__main__":
    main()
