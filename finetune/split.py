"""python -m finetune.split FILE --out DIR [--heldout-fraction 0.5]

Split a SQuAD file by article into DIR/train.json and DIR/heldout.json, deterministically: articles
are ordered by sha256 of their title (not by file position, so the split does not change when articles
are reordered) and the first `heldout_fraction` of them (rounded, at least one each side) are held out.
The SQuAD training sets are not on these machines; the paper splits dev sets in half the same way for
MRQA. Each output is a valid SQuAD file of the input's version.

An MRQA file (.jsonl.gz) is split the same way by context (sha256 of the context text) into
train.jsonl.gz / heldout.jsonl.gz, header kept; a TACRED-layout JSON list by example (sha256 of the id).
"""

from __future__ import annotations

import argparse
import gzip
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
    return _by_hash(articles, lambda a: str(a.get("title", "")), heldout_fraction)


def _by_hash(items: list, key, heldout_fraction: float) -> Split:
    """Items ordered by sha256 of key(item); the first heldout_fraction (rounded, >= 1 each side) held out."""
    keyed = sorted(items, key=lambda x: hashlib.sha256(key(x).encode("utf-8")).hexdigest())
    n = min(len(items) - 1, max(1, round(heldout_fraction * len(items))))
    return Split(train=keyed[n:], heldout=keyed[:n])


def _split_other(path: Path, out: Path, fraction: float) -> None:
    """MRQA (.jsonl.gz, by context) or TACRED (a JSON list, by id)."""
    if path.name.endswith(".jsonl.gz"):
        from finetune.mrqa import load_mrqa, read_lines, write_mrqa

        load_mrqa(path, training=False)  # checked before it is split
        rows = read_lines(path)
        if len(rows) < 2:
            raise SquadError(f"{path}: need at least two contexts to split")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            header = json.loads(f.readline())
        parts = _by_hash(rows, lambda r: r["context"], fraction)
        for name, part in (("train.jsonl.gz", parts.train), ("heldout.jsonl.gz", parts.heldout)):
            write_mrqa([header, *part], out / name)
            print(f"[split] {out / name}: {len(part)} contexts, {sum(len(r['qas']) for r in part)} questions", file=sys.stderr)
        return
    from finetune.tacred import load_tacred

    load_tacred(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    if len(raw) < 2:
        raise SquadError(f"{path}: need at least two examples to split")
    parts = _by_hash(raw, lambda x: str(x["id"]), fraction)
    for name, part in (("train.json", parts.train), ("heldout.json", parts.heldout)):
        (out / name).write_text(json.dumps(part, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"[split] {out / name}: {len(part)} examples", file=sys.stderr)


def _is_squad(path: Path) -> bool:
    if path.name.endswith(".jsonl.gz"):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
    except (OSError, UnicodeDecodeError):
        return True  # load_squad names the problem
    return not head.startswith("[")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.split", description=__doc__.split("\n\n")[1])
    p.add_argument("file", help="SQuAD 1.1 / 2.0 JSON, MRQA .jsonl.gz or TACRED-layout JSON list")
    p.add_argument("--out", required=True, type=Path, help="directory for train.json and heldout.json")
    p.add_argument("--heldout-fraction", type=float, default=0.5, help="share of articles held out (default 0.5)")
    args = p.parse_args(argv)
    if not 0.0 < args.heldout_fraction < 1.0:
        print(f"error: --heldout-fraction {args.heldout_fraction}: must be in (0, 1)", file=sys.stderr)
        return 2
    if not _is_squad(Path(args.file)):
        args.out.mkdir(parents=True, exist_ok=True)
        _split_other(Path(args.file), args.out, args.heldout_fraction)
        return 0
    try:
        data = load_squad(args.file)
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
