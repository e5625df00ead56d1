"""Real English Wikipedia text for the demo, from a registry package: no hub, no ../shared.

The PyPI wheel of gensim 4.4.0 ships, as test data, a real `pages-articles` dump excerpt (206 pages).
We download the wheel without installing it, take the dump out of it, and run PyPI's WikiExtractor
on it: the same route that produced ../shared/data/wiki/enwiki-sample-extracted.txt.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

GENSIM_WHEEL = "gensim==4.4.0"
DUMP_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def fetch_wikipedia_dump(cache: Path) -> Path:
    """The bz2 MediaWiki dump excerpt, downloaded once into `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    dump = cache / Path(DUMP_MEMBER).name
    if dump.is_file():
        return dump
    wheels = sorted(cache.glob("gensim-4.4.0-*.whl"))
    if not wheels:
        print(f"[demo] downloading the {GENSIM_WHEEL} wheel from PyPI (it carries a real Wikipedia dump excerpt)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", GENSIM_WHEEL, "-d", str(cache)],
            check=True,
        )
        wheels = sorted(cache.glob("gensim-4.4.0-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {GENSIM_WHEEL} left no wheel in {cache}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        if DUMP_MEMBER not in wheel.namelist():
            raise RuntimeError(f"{wheels[0]}: no {DUMP_MEMBER} inside")
        tmp = dump.with_suffix(".part")
        tmp.write_bytes(wheel.read(DUMP_MEMBER))
        tmp.replace(dump)
    return dump


def extract_articles(dump: Path, out_dir: Path) -> list[Path]:
    """WikiExtractor's `<doc ...>` files for the dump (cached)."""
    files = sorted(p for p in out_dir.rglob("wiki_*") if p.is_file()) if out_dir.exists() else []
    if files:
        return files
    print(f"[demo] extracting article text with WikiExtractor -> {out_dir}")
    subprocess.run(
        [sys.executable, "-m", "wikiextractor.WikiExtractor", "--quiet", "-o", str(out_dir), "-b", "10M", str(dump)],
        check=True,
    )
    files = sorted(p for p in out_dir.rglob("wiki_*") if p.is_file())
    if not files or "<doc " not in files[0].read_text(encoding="utf-8")[:1000]:
        raise RuntimeError(f"WikiExtractor produced no <doc> files in {out_dir}")
    return files


def wikipedia_sample(work_dir: Path) -> list[Path]:
    return extract_articles(fetch_wikipedia_dump(work_dir / "cache"), work_dir / "wiki-extracted")


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
