"""Fixtures for the faults-survived tests (docs/integrity.md): small shard directories built by the real
pipeline without spaCy (a few seconds each), and the trainer's tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.shards import write_shards


@pytest.fixture(scope="package")
def small_shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("rel") / "shards", num_docs=8, block_size=64, num_shards=2,
                        max_chars=2000)


@pytest.fixture(scope="package")
def other_shards(tmp_path_factory) -> Path:
    """Same vocabulary, half the documents: the resume that must be refused."""
    return write_shards(tmp_path_factory.mktemp("rel") / "half", num_docs=4, block_size=64, num_shards=2,
                        max_chars=2000)
