"""The Wikipedia cache the suite and the demo share: reused when intact, rebuilt when damaged, never
published unverified."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from demo.corpus import DUMP_MEMBER, EXTRACT_NAME, EXTRACT_SHA256, _publish, wikipedia_extract


def test_a_damaged_extract_is_rebuilt_and_an_intact_one_reused(real_text: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(real_text.parent / Path(DUMP_MEMBER).name, cache)  # the download itself is not repeated here
    damaged = bytearray(real_text.read_bytes())
    damaged[1000] ^= 1
    (cache / EXTRACT_NAME).write_bytes(bytes(damaged))
    out = wikipedia_extract(cache)  # runs WikiExtractor again on the cached dump
    assert out == cache / EXTRACT_NAME
    assert hashlib.sha256(out.read_bytes()).hexdigest() == EXTRACT_SHA256 and out.read_bytes().count(b"<doc ") == 106
    before = out.stat().st_mtime_ns
    assert wikipedia_extract(cache) == out and out.stat().st_mtime_ns == before  # intact: not rebuilt
    assert sorted(p.name for p in cache.iterdir()) == sorted([".lock", EXTRACT_NAME, Path(DUMP_MEMBER).name])


def test_a_file_with_the_wrong_hash_is_never_published(tmp_path: Path):
    part, dest = tmp_path / "part", tmp_path / "final.txt"
    part.write_bytes(b"not the article text")
    with pytest.raises(RuntimeError, match="sha256"):
        _publish(part, dest, EXTRACT_SHA256, "test file")
    assert not dest.exists()
