"""`python -m pipeline.inspect DIR`: manifest summary, shard verification, one decoded block.

Exit status 1 when a shard is missing or its sha256 / row count / token count disagrees with the
manifest, so the command doubles as a check in scripts.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from pipeline.schema import open_shard, read_manifest
from pipeline.tokenizer import load_tokenizer


def verify(directory: Path) -> list[str]:
    """Problems found (empty list: every shard matches the manifest)."""
    manifest = read_manifest(directory)
    problems = []
    for entry, path in zip(manifest.raw["shards"], manifest.shard_paths, strict=True):
        if not path.is_file():
            problems.append(f"{entry['file']}: missing")
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            problems.append(f"{entry['file']}: sha256 {digest[:12]}… != manifest {entry['sha256'][:12]}…")
            continue
        table = open_shard(path)
        tokens = int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0)
        if table.num_rows != entry["rows"] or tokens != entry["tokens"]:
            problems.append(f"{entry['file']}: {table.num_rows} rows / {tokens} tokens, manifest says {entry['rows']} / {entry['tokens']}")
    counts = manifest.unigram_counts()
    if int(counts.sum()) != manifest.raw["totals"]["tokens"]:
        problems.append(f"unigram counts sum to {int(counts.sum())}, totals say {manifest.raw['totals']['tokens']} tokens")
    return problems


def mark_spans(tokens: list[str], entities: list[dict[str, Any]], noun_phrases: list[dict[str, Any]]) -> str:
    """Decode pieces to text with entities as [text]LABEL and noun phrases as {text}."""
    opens: list[list[str]] = [[] for _ in range(len(tokens) + 1)]
    closes: list[list[str]] = [[] for _ in range(len(tokens) + 1)]
    # Longer spans open first and close last, so nested markers stay balanced.
    for s in sorted(noun_phrases, key=lambda s: (s["start"], -s["end"])):
        opens[s["start"]].append("{")
        closes[s["end"]].insert(0, "}")
    for s in sorted(entities, key=lambda s: (s["start"], -s["end"])):
        opens[s["start"]].append("[")
        closes[s["end"]].insert(0, f"]{s['label']}")
    out: list[str] = []
    for i, tok in enumerate(tokens):
        out.extend(closes[i])
        glue = tok.startswith("##")
        if i > 0 and not glue:
            out.append(" ")
        out.extend(opens[i])
        out.append(tok[2:] if glue else tok)
    out.extend(closes[len(tokens)])
    return "".join(out)


def describe(directory: Path, shard: int = 0, row: int = 0) -> str:
    manifest = read_manifest(directory)
    raw = manifest.raw
    t = raw["totals"]
    lines = [
        f"{directory}: format {raw['format_version']}, block size {raw['block_size']}, "
        f"annotated {raw['annotated']}, vocab {manifest.vocab_size} ({manifest.vocab_sha256[:12]}…)",
        f"documents read {t['documents_read']} = written {t['documents_written']} + rejected {t['documents_rejected']}"
        f"; blocks {t['blocks']}, tokens {t['tokens']}, words {t['words']}",
    ]
    lines += [f"  rejected {k}: {v}" for k, v in sorted(raw["rejections"].items())]
    lines += [f"  cleaned {k}: {v}" for k, v in raw["cleaning"].items() if v]
    lines += [f"  {k}: {v}" for k, v in raw["spans"].items() if v]
    for s in raw["shards"]:
        lines.append(f"  {s['file']}: {s['rows']} rows, {s['tokens']} tokens, sha256 {s['sha256'][:16]}…")
    table = open_shard(manifest.shard_paths[shard])
    if table.num_rows:
        r = table.slice(min(row, table.num_rows - 1), 1).to_pylist()[0]
        tok = load_tokenizer(tokenizer_json=manifest.tokenizer_path)
        tokens = [tok.id_to_token(i) for i in r["input_ids"]]
        lines.append(
            f"\nsample: {r['doc_id']} block {r['block_index'] + 1}/{r['num_blocks']}, {len(tokens)} pieces,"
            f" {len(r['entity_spans'])} entities [..]LABEL, {len(r['noun_phrase_spans'])} noun phrases {{..}}:"
        )
        lines.append(mark_spans(tokens, r["entity_spans"], r["noun_phrase_spans"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.inspect", description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path)
    p.add_argument("--shard", type=int, default=0, help="shard of the sample block")
    p.add_argument("--row", type=int, default=0, help="row of the sample block")
    args = p.parse_args(argv)
    print(describe(args.directory, args.shard, args.row))
    problems = verify(args.directory)
    for line in problems:
        print(f"MISMATCH {line}", file=sys.stderr)
    n = len(read_manifest(args.directory).raw["shards"])
    print(f"\nverified {n} shards: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
