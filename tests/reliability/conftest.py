"""Fixtures for the faults-survived tests (docs/integrity.md): small shard directories built by the real
pipeline without spaCy (a few seconds each), and the trainer's tiny config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.trainer.conftest import one_torch_thread  # noqa: F401 - autouse here too: one intra-op thread on the CI box
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


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB tmpfs to fill: room for a run's small files, not for a checkpoint of the tiny model (~11 MB)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
