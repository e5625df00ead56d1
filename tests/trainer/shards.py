"""Shard directories for the trainer, HF and e2e tests: `python -m pipeline` (its API) on real text.

Kept as a module so existing tests keep their import; there is no shard writer here, only the call.
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
    flags = ["--block-size", str(block_size), "--num-shards", str(num_shards)]
    # One in-process worker even when annotating: spaCy loads once, no process pool on a 2-core box.
    build_shards(out, inputs, *flags, *(["--direct_num_workers=1"] if annotate else ["--no-annotate"]))
    return out
