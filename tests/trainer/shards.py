"""`write_shards`: a small real shard directory for the trainer, HF, finetune and e2e tests and
bench/bench_trainer.py, written by the pipeline itself (`tests.conftest.build_shards`, i.e.
`pipeline.run.run`) over `tests.conftest.sample_corpus` (the first Wikipedia articles and chapters of
Alice, each cut to `max_chars`), so every reader is tested on what `python -m pipeline` writes.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import VOCAB, build_shards, sample_corpus

__all__ = ["VOCAB", "write_shards"]


def write_shards(out: Path, *, num_docs: int = 12, block_size: int = 128, num_shards: int = 2,
                 max_chars: int = 6000, annotate: bool = False) -> Path:
    """The pipeline's output for `sample_corpus(num_docs, max_chars)` in `out` (its input goes beside it).

    `annotate` runs spaCy (entity and noun-phrase spans, ~10 s); without it the span columns are empty.
    """
    out = Path(out)
    inputs = sample_corpus(out.parent / f"{out.name}-input", num_docs, max_chars)
    # A blank file: dead-lettered ("empty"), so its range writes the one empty shard the readers must skip.
    blank = out.parent / f"{out.name}-input" / "blank" / "blank.txt"
    blank.parent.mkdir(parents=True, exist_ok=True)
    blank.write_text(" \n", encoding="utf-8")
    inputs = [*inputs, f"text:{blank}"]
    flags = ["--block-size", str(block_size), "--num-shards", str(num_shards)]
    # One in-process worker even when annotating: spaCy loads once, no process pool on a 2-core box.
    build_shards(out, inputs, *flags, *(["--direct_num_workers=1"] if annotate else ["--no-annotate"]))
    return out
