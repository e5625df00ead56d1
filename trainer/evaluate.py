"""`python -m trainer.evaluate --checkpoint RUN_DIR_OR_CKPT --data SHARDS`: held-out MLM / SBO (/ NSP) loss
and accuracy with fixed masks, so runs — and the rows of an ablation — are comparable.

What is fixed: the rows (the held-out documents the run never trained on: `data.holdout_fraction`, split
by a hash of the document id, so the split does not depend on sharding), and the masks (a pure function
of `--seed`, epoch 0 and the row id, whatever seed the run trained with). The scheme and objectives are
the checkpoint's own unless `--scheme` asks for another (e.g. score every ablation row with the same
geometric masks).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.cli import run_main
from masking.config import SCHEMES
from trainer import checkpoint
from trainer.config import Objective
from trainer.data import BlockStream
from trainer.metrics import ObjectiveSums
from trainer.model import SpanBert

EVAL_SEED = 20_200_101  # masks for evaluation: independent of every training seed


def evaluate(
    model: SpanBert, stream: BlockStream, rows: np.ndarray, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Summed losses / correct counts over `rows`, divided by the target counts at the end (a token-level
    average, the same normalisation as training)."""
    model.eval()
    sums = ObjectiveSums.zeros(device)
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in stream.collate(0, rows[i : i + batch_size]).items()}
        with torch.no_grad():  # a context, not a decorator: mutation testing (docs/testing.md) skips decorated functions
            out = model(batch)
        sums.add_output(out, batch)
    return sums.means(with_targets=True)


def evaluate_checkpoint(
    checkpoint_path: str | Path, data: str | Path, *, split: str = "heldout", scheme: str | None = None,
    single_sequence: bool = False, holdout_fraction: float | None = None, seed: int = EVAL_SEED,
    max_blocks: int = 0, batch_size: int = 16,
) -> dict[str, Any]:
    """Held-out (or all-row) metrics of a checkpoint. `scheme` / `single_sequence` re-mask with another
    scheme in one sequence, so differently trained rows can be scored on the same task."""
    ckpt = checkpoint.load(checkpoint_path)
    cfg = ckpt.config
    data_cfg = replace(cfg.data, vocab_sha256=ckpt.vocab_sha256)
    # the run's masking, with the evaluation's fixed seed (and --scheme's scheme): the one place it is built
    masking = cfg.data.masking_for(seed=seed, max_sbo_targets=cfg.model.max_sbo_targets)
    if scheme is not None:
        masking = replace(masking, scheme=scheme)
    # --single-sequence scores an NSP model's MLM head on single blocks (its NSP head then scores nothing)
    objective = Objective.MLM if single_sequence and cfg.model.objective.nsp else cfg.model.objective
    if holdout_fraction is not None:
        data_cfg = replace(data_cfg, holdout_fraction=holdout_fraction)
    stream = BlockStream(data, data_cfg, masking, max_len=cfg.model.max_position, objective=objective)
    rows = stream.heldout_rows if split == "heldout" else np.arange(len(stream.shards))
    if len(rows) == 0:
        raise ValueError(
            f"{data}: the run held out no documents (data.holdout_fraction={data_cfg.holdout_fraction}); "
            "evaluate --split all, or give a holdout fraction to score a fixed set of documents"
        )
    if max_blocks:
        rows = rows[:max_blocks]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = SpanBert(cfg.model)
    model.load_state_dict(ckpt.model)
    return {
        "checkpoint": str(ckpt.path), "step": ckpt.step, "split": split, "blocks": int(len(rows)),
        "scheme": str(masking.scheme), "objective": str(objective), "mask_seed": seed,
        **evaluate(model.to(device), stream, rows, batch_size, device),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="run directory (newest valid checkpoint) or a step-N.pt")
    p.add_argument("--data", required=True, help="shard directory (the one the run trained on)")
    p.add_argument("--split", choices=("heldout", "all"), default="heldout",
                   help="heldout: the documents the run held out (data.holdout_fraction); all: every row")
    p.add_argument("--holdout-fraction", type=float, default=None,
                   help="override the run's data.holdout_fraction (to score runs that held out nothing)")
    p.add_argument("--scheme", choices=SCHEMES, default=None, help="mask with this scheme instead of the run's")
    p.add_argument("--single-sequence", action="store_true", help="score a bi-sequence (NSP) run on single sequences")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="mask seed (the same for every run compared)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-blocks", type=int, default=0, help="evaluate at most this many rows (0 = all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    result = evaluate_checkpoint(  # a bad checkpoint or shard directory: one `error:` line (contract.cli)
        args.checkpoint, args.data, split=args.split, scheme=args.scheme, single_sequence=args.single_sequence,
        holdout_fraction=args.holdout_fraction, seed=args.seed, max_blocks=args.max_blocks,
        batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>14}  {v:.4f}" if isinstance(v, float) else f"{k:>14}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
