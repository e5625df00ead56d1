"""pytest plugin for `make mutate`: build the tests' pipeline shards once per group, not once per mutant.

mutmut starts a fresh pytest for every mutant, so every session fixture is rebuilt each time; the
spaCy-annotated `shard_dir` (tests/conftest.py) costs ~10 s of an idle core — most of a trainer mutant.
tests/mutate.py loads this plugin (PYTEST_PLUGINS) only for groups whose mutated files the pipeline
never imports (the pipeline depends on contract/ alone, never on trainer/ or masking/), so the cached
directory is byte for byte what the fixture would build. The first build fills MUTATE_SHARD_CACHE;
later sessions copy it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import tests.trainer.shards as shards

_build = shards.write_shards


def _cached_write_shards(out: Path, **kw) -> Path:
    out = Path(out)
    cache = Path(os.environ["MUTATE_SHARD_CACHE"]) / hashlib.sha256(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:16]
    if not (cache / "complete").exists():
        shutil.rmtree(cache, ignore_errors=True)
        _build(cache / "shards", **kw)
        (cache / "complete").touch()
    shutil.copytree(cache / "shards", out)
    shutil.copytree(cache / "shards-input", out.parent / f"{out.name}-input")  # write_shards' input, beside it
    return out


if os.environ.get("MUTATE_SHARD_CACHE"):
    shards.write_shards = _cached_write_shards
