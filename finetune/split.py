"""python -m finetune.split FILE --out DIR [--heldout-fraction 0.5]

Split a SQuAD file by article into DIR/train.json and DIR/heldout.json, deterministically: articles
are ordered by sha256 of their title (not by file position, so the split does not change when articles
are reordered) and the first `heldout_fraction` of them (rounded, at least one each side) are held out.
The SQuAD training sets are not on these machines; the paper splits dev sets in half the same way for
MRQA. Each output is a valid SQuAD file of the input's version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from contract.cli import run_main
from finetune.data import SquadError, load_squad


@dataclass(frozen=True)
class Split:
    train: list[dict]
    heldout: list[dict]


def split_articles(articles: list[dict], heldout_fraction: float = 0.5) -> Split:
    if len(articles) < 2:
        raise ValueError("need at least two articles to split")
    keyed = sorted(articles, key=lambda a: hashlib.sha256(str(a.get("title", "")).encode("utf-8")).hexdigest())
    n = min(len(articles) - 1, max(1, round(heldout_fraction * len(articles))))
    return Split(train=keyed[n:], heldout=keyed[:n])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.split", description=__doc__.split("\n\n")[1])
    p.add_argument("file", help="SQuAD 1.1 / 2.0 JSON")
    p.add_argument("--out", required=True, type=Path, help="directory for train.json and heldout.json")
    p.add_argument("--heldout-fraction", type=float, default=0.5, help="share of articles held out (default 0.5)")
    args = p.parse_args(argv)
    try:
        data = load_squad(args.file)
        if not 0.0 < args.heldout_fraction < 1.0:
            raise SquadError(f"--heldout-fraction {args.heldout_fraction}: must be in (0, 1)")
        titles = [a.get("title") for a in data.articles]
        if len(set(titles)) != len(titles):
            raise SquadError(f"{args.file}: two articles share a title; the split orders articles by title")
        parts = split_articles(data.articles, args.heldout_fraction)
    except (SquadError, ValueError) as e:
        print(f"error: {args.file}: {e}" if not str(e).startswith(str(args.file)) else f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    raw = json.loads(Path(args.file).read_text(encoding="utf-8"))
    for name, articles in (("train.json", parts.train), ("heldout.json", parts.heldout)):
        (args.out / name).write_text(json.dumps({"version": raw.get("version", data.version), "data": articles},
                                                ensure_ascii=False) + "\n", encoding="utf-8")
        questions = sum(len(p["qas"]) for a in articles for p in a["paragraphs"])
        print(f"[split] {args.out / name}: {len(articles)} articles, {questions} questions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
