"""Real English Wikipedia text from a registry package, cached once for the demo and the tests.

The PyPI wheel of gensim 4.4.0 ships, as test data, a real `pages-articles` dump excerpt (206 pages).
We download the wheel without installing it, take the dump out of it, and run PyPI's WikiExtractor
on it: 106 `<doc>` articles, 411k words. Both files live in one cache directory (`cache_dir()`):
written atomically, checked against their sha256, and reused by every later run; a file that fails
its check is rebuilt. Nothing here needs ../shared.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from contract.schema import file_sha256

GENSIM_WHEEL = "gensim==4.4.0"
DUMP_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
DUMP_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
# WikiExtractor 3.1.0 (`-b 10M`: one output file) on that dump; 106 articles, 2,626,001 bytes.
EXTRACT_NAME = "enwiki-sample-extracted.txt"
EXTRACT_SHA256 = "e22eae591bcceb1d3d594000146162822c88972837c750eadbed4c5a7ae83ef6"


def cache_dir() -> Path:
    """$SPANBERT_CACHE, else $XDG_CACHE_HOME/spanbert, else ~/.cache/spanbert."""
    if os.environ.get("SPANBERT_CACHE"):
        return Path(os.environ["SPANBERT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spanbert"


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path)[1] == sha256


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder at a time per cache (concurrent test sessions and demos share it)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _publish(data_path: Path, dest: Path, sha256: str, what: str) -> None:
    """Move a finished file under its final name only once it matches its expected hash."""
    got = file_sha256(data_path)[1]
    if got != sha256:
        raise RuntimeError(f"{what} has sha256 {got}, expected {sha256}")
    os.replace(data_path, dest)  # same directory: atomic, never a half-written file under `dest`


def fetch_wikipedia_dump(cache: Path | None = None) -> Path:
    """The bz2 MediaWiki dump excerpt, downloaded once (the 27 MB wheel itself is not kept)."""
    cache = cache or cache_dir()
    dump = cache / Path(DUMP_MEMBER).name
    if _verified(dump, DUMP_SHA256):
        return dump
    with _locked(cache):
        if _verified(dump, DUMP_SHA256):  # another process built it while we waited
            return dump
        print(f"[corpus] downloading the {GENSIM_WHEEL} wheel from PyPI into {cache} "
              "(it carries a real Wikipedia dump excerpt)", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            r = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", GENSIM_WHEEL, "-d", tmp],
                capture_output=True, text=True,
            )
            wheels = sorted(Path(tmp).glob("gensim-4.4.0-*.whl"))
            if r.returncode != 0 or not wheels:
                raise RuntimeError(f"`pip download {GENSIM_WHEEL}` failed (is PyPI reachable?): "
                                   f"{(r.stderr or r.stdout).strip()[-500:]}")
            with zipfile.ZipFile(wheels[0]) as wheel:
                if DUMP_MEMBER not in wheel.namelist():
                    raise RuntimeError(f"{wheels[0].name}: no {DUMP_MEMBER} inside")
                part = Path(tmp) / dump.name
                part.write_bytes(wheel.read(DUMP_MEMBER))
            _publish(part, dump, DUMP_SHA256, f"{wheels[0].name}:{DUMP_MEMBER}")
    return dump


def wikipedia_extract(cache: Path | None = None) -> Path:
    """The dump's 106 articles as one WikiExtractor `<doc ...>` file (built once, then reused)."""
    cache = cache or cache_dir()
    out = cache / EXTRACT_NAME
    if _verified(out, EXTRACT_SHA256):
        return out
    dump = fetch_wikipedia_dump(cache)
    with _locked(cache):
        if _verified(out, EXTRACT_SHA256):
            return out
        print(f"[corpus] extracting article text with WikiExtractor -> {out}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".extract-") as tmp:
            subprocess.run(
                [sys.executable, "-m", "wikiextractor.WikiExtractor", "--quiet", "-o", f"{tmp}/out", "-b", "10M",
                 str(dump)],
                check=True,
            )
            files = sorted(p for p in Path(tmp, "out").rglob("wiki_*") if p.is_file())
            part = Path(tmp) / EXTRACT_NAME
            part.write_bytes(b"".join(p.read_bytes() for p in files))
            _publish(part, out, EXTRACT_SHA256, f"WikiExtractor output of {dump}")
    return out


def wikipedia_sample() -> list[Path]:
    """The demo's corpus: the cached WikiExtractor file (a list, as `--input` takes several)."""
    return [wikipedia_extract()]


def first_articles(files: list[Path], count: int, out: Path) -> Path:
    """The first `count` `<doc>` articles of WikiExtractor files, in one file (a quicker demo)."""
    docs: list[str] = []
    for path in files:
        for chunk in path.read_text(encoding="utf-8").split("</doc>\n"):
            if len(docs) < count and "<doc " in chunk:
                docs.append(chunk + "</doc>\n")
    if not docs:
        raise RuntimeError(f"no <doc> articles in {[str(f) for f in files]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(docs), encoding="utf-8")
    return out
