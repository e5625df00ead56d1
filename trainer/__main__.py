"""python -m trainer --config CONFIG --data SHARDS --out RUN_DIR [--max-steps N] [--set section.field=value ...] [--resume auto] [--allow-plan-change] [--init-from HF_DIR] [--verify-shards]

The same command runs under `torchrun --nproc_per_node=N -m trainer ...` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import os
import sys

from contract.cli import run_main
from contract.schema import ShardError, hash_problems, read_manifest
from trainer.config import load_config
from trainer.train import run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", required=True, help="bundled preset (tiny, base, large) or a JSON file")
    p.add_argument("--data", required=True, help="shard directory written by `python -m pipeline` (manifest.json)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, metrics.jsonl, tb/, config.json")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set optim.lr=3e-4 --set data.masking.scheme=subword")
    p.add_argument("--resume", default="never",
                   help="'auto': newest valid checkpoint in --out; a checkpoint path; 'never' (default)")
    p.add_argument("--init-from", metavar="HF_DIR",
                   help="start a fresh run from a transformers BERT directory (ignored when a checkpoint resumes)")
    p.add_argument("--allow-plan-change", action="store_true",
                   help="resume although the data, seed, batch or masking settings differ from the checkpoint's "
                        "(refused otherwise); the change is logged in RUN_DIR/history.jsonl")
    p.add_argument("--verify-shards", action="store_true",
                   help="compare every shard's sha256 with the manifest before training (reads every byte once)")
    args = p.parse_args(argv)
    overrides = list(args.set) + ([f"train.max_steps={args.max_steps}"] if args.max_steps is not None else [])
    cfg = load_config(args.config, overrides)  # every bad value (masking's too) fails here, before any work
    if args.verify_shards:  # before anything decodes a shard: a corrupt file can make Arrow itself fail
        problems = hash_problems(read_manifest(args.data))
        if problems:
            raise ShardError(args.data, f"--verify-shards: {len(problems)} shard(s) differ from the manifest: "
                             + "; ".join(f"{path.name}: {why}" for path, why in problems.items()), args.data)
    summary = run(cfg, args.data, args.out, resume=args.resume, init_from=args.init_from,
                  allow_plan_change=args.allow_plan_change)
    if os.environ.get("RANK", "0") == "0":
        print(f"[trainer] done: {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
