"""Shards -> masked, padded batches: a deterministic, resumable stream shared by every rank, split by job.

| module | job |
|---|---|
| `shards.py` | `ShardSet` (memory-mapped rows, checked against the manifest; a row as a `masking.Block`), `split_rows` (held-out documents) |
| `plan.py` | `BatchPlan`: each epoch's micro-batches of row ids, a pure function of (seed, epoch); token budgets |
| `pairs.py` | NSP pairing (A/B cut, IS_NEXT / NOT_NEXT) for the bi-sequence baselines, as a `PairBlock` |
| `phases.py` | sequence-length phases: `SubBlocks`, blocks cut at word boundaries for a short phase (`cut_at_words`) |
| `collate.py` | `masking.Block` (or `PairBlock`: A + B) -> masked -> `FullSequence` (with specials) -> `Batch`, the model's input |
| `stream.py` | `BlockStream` (rank / worker split), `build_loader`, `build_masker` |

Data flows down this table: each module imports only those above it.
"""

from trainer.data.collate import Batch, FullSequence, PairBlock, collate_blocks, num_specials
from trainer.data.pairs import IS_NEXT, NOT_NEXT, pair_block
from trainer.data.phases import SubBlocks, cut_at_words
from trainer.data.plan import BatchPlan
from trainer.data.shards import ShardSet, split_rows
from trainer.data.stream import BlockStream, build_loader, build_masker

__all__ = [
    "IS_NEXT",
    "NOT_NEXT",
    "Batch",
    "BatchPlan",
    "BlockStream",
    "FullSequence",
    "PairBlock",
    "ShardSet",
    "SubBlocks",
    "build_loader",
    "build_masker",
    "collate_blocks",
    "cut_at_words",
    "num_specials",
    "pair_block",
    "split_rows",
]
