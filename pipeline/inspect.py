"""`python -m pipeline.inspect DIR`: manifest summary, shard verification, one decoded block.

Every shard's size and sha256 are compared with the manifest before anything is decoded, and every
mismatch is reported (MISMATCH lines on stderr); then the shards whose bytes match get the structural
checks the trainer makes on open. Exit status 1 when anything disagrees with the manifest, so the
command doubles as a check in scripts; 2 (`error: ...`) when the directory has no readable manifest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.cli import run_main
from contract.schema import (
    ShardDirectory,
    ShardError,
    hash_problems,
    open_checked,
    open_shard,
    read_manifest,
    summarize,
)
from contract.tokenizer import load_tokenizer


def verify(directory: Path) -> list[str]:
    """Problems found (empty list: every shard matches the manifest). Bytes first: size and sha256 of every
    shard before anything is decoded (a corrupt file can crash Arrow); then, for the shards whose bytes
    match, the checks the trainer makes on open (schema, rows, tokens)."""
    return [f"{path.name}: {why}" for path, why in _problems(read_manifest(directory)).items()]


def _problems(manifest: ShardDirectory) -> dict[Path | str, str]:
    problems: dict[Path | str, str] = dict(hash_problems(manifest))
    for index, path in enumerate(manifest.shard_paths):
        if path not in problems:
            try:
                open_checked(manifest, index)
            except ShardError as e:
                problems[path] = e.reason
    counts, totals = manifest.unigram_counts(), manifest.manifest.totals
    if totals is None:
        problems[Path(manifest.manifest.unigram_counts)] = "the manifest records no totals to check the counts against"
    elif int(counts.sum()) != totals.tokens:
        problems[Path(manifest.manifest.unigram_counts)] = (
            f"counts sum to {int(counts.sum())}, totals say {totals.tokens} tokens")
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


def sample(manifest: ShardDirectory, shard: int, row: int) -> str:
    """One decoded block with its spans marked (only ever called on a shard that verified)."""
    table = open_shard(manifest.shard_paths[shard])
    if not table.num_rows:
        return f"sample: {manifest.shard_paths[shard].name} has no rows"
    r = table.slice(min(row, table.num_rows - 1), 1).to_pylist()[0]
    path = manifest.tokenizer_path
    tok = load_tokenizer(path)
    tokens = [tok.id_to_token(i) for i in r["input_ids"]]
    return "\n".join([
        f"sample: {r['doc_id']} block {r['block_index'] + 1}/{r['num_blocks']}, {len(tokens)} pieces,"
        f" {len(r['entity_spans'])} entities [..]LABEL, {len(r['noun_phrase_spans'])} noun phrases {{..}}:",
        mark_spans(tokens, r["entity_spans"], r["noun_phrase_spans"]),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.inspect", description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path)
    p.add_argument("--shard", type=int, default=0, help="shard of the sample block")
    p.add_argument("--row", type=int, default=0, help="row of the sample block")
    args = p.parse_args(argv)
    manifest = read_manifest(args.directory)
    n = len(manifest.shards)
    if not 0 <= args.shard < n:
        p.error(f"--shard {args.shard}: the manifest lists {n} shards")
    print(summarize(manifest.manifest, str(manifest.directory)))
    problems = _problems(manifest)  # every mismatch, before anything decodes a shard
    for where, why in problems.items():
        print(f"MISMATCH {where}: {why}", file=sys.stderr)
    chosen = manifest.shard_paths[args.shard]
    if chosen in problems:
        print(f"\nsample: skipped, {chosen.name} failed verification")
    else:
        print("\n" + sample(manifest, args.shard, args.row))
    print(f"\nverified {n} shards: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
