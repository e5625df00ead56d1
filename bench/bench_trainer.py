"""CPU training-step time: our SpanBERT vs HF transformers' BertForPreTraining, same shape, batch and masks.

One step = forward + backward + AdamW update, in train mode (dropout 0.1). Both models get the same real
batch: blocks of Wikipedia / Gutenberg text masked by masking/ (geometric spans), collated by
trainer/data/; HF receives the same masked positions as a [batch, seq] label tensor (its pre-training
loss: MLM over the full logit tensor + NSP). "ours (MLM)" runs the same objective as HF's MLM (no SBO);
"ours (MLM+SBO)" is the full SpanBERT objective, i.e. strictly more work than HF's.

    .venv/bin/python bench/bench_trainer.py                 # mini and base shapes, seq 128
    .venv/bin/python bench/bench_trainer.py --shapes base --seq 512 --batch 2
Goal: ours <= 0.7x HF's step time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transformers import BertConfig, BertForPreTraining  # noqa: E402

from masking import MaskingConfig  # noqa: E402
from trainer.config import DataConfig, ModelConfig  # noqa: E402
from trainer.data import BlockStream  # noqa: E402
from trainer.model import IGNORE, SpanBert, decay_groups  # noqa: E402

SHAPES = {  # layers, hidden, heads, ffn
    "mini": (4, 256, 4, 1024),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


def make_batch(data: Path | None, seq: int, batch: int) -> dict[str, torch.Tensor]:
    if data is None:
        from tests.trainer.shards import write_shards  # real text in contract-shaped shards

        data = write_shards(Path(tempfile.mkdtemp(prefix="bench_trainer_")), num_docs=8, block_size=seq, max_chars=20000)
    stream = BlockStream(data, DataConfig(batch_size=batch, num_workers=0), MaskingConfig(seed=0), max_len=seq)
    full = torch.nonzero(torch.from_numpy(stream.shards.lengths) == seq - 2).flatten()[:batch].numpy()
    if len(full) < batch:
        raise SystemExit(f"{data}: fewer than {batch} full {seq - 2}-piece blocks")
    b = stream.collate(0, full)
    return {k: v for k, v in b.items() if k not in ("row_ids", "epoch")}


def hf_inputs(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    labels = torch.full_like(b["input_ids"], IGNORE)
    rows = torch.arange(len(labels))[:, None].expand_as(b["mlm_positions"])
    keep = b["mlm_labels"] != IGNORE
    labels[rows[keep], b["mlm_positions"][keep]] = b["mlm_labels"][keep]
    return {"input_ids": b["input_ids"], "labels": labels, "next_sentence_label": torch.zeros(len(labels), dtype=torch.long)}


def step_fn(name: str, layers: int, hidden: int, heads: int, ffn: int, batch: dict[str, torch.Tensor], compile_: bool = False):
    torch.manual_seed(0)
    if name == "hf":
        cfg = BertConfig(vocab_size=28996, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=ffn, hidden_act="gelu", layer_norm_eps=1e-12)
        model = BertForPreTraining(cfg).train()
        params, inputs = model.parameters(), hf_inputs(batch)

        def loss_fn():
            return model(**inputs).loss
    else:
        cfg = ModelConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=ffn,
                          objective="mlm+sbo" if name == "ours_sbo" else "mlm")
        model = SpanBert(cfg).train()
        params = decay_groups(model, 0.1)
        net = torch.compile(model) if compile_ else model
        n_mlm = (batch["mlm_labels"] != IGNORE).sum()
        n_sbo = (batch["sbo_labels"] != IGNORE).sum().clamp(min=1)

        def loss_fn():
            out = net(batch)
            return out["mlm_loss"] / n_mlm + (out["sbo_loss"] / n_sbo if "sbo_loss" in out else 0.0)

    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, fused=True)

    def step() -> float:
        t = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["mini", "base"], choices=list(SHAPES))
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (median reported)")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (HF stays eager)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--data", type=Path, help="a shard directory (default: build a small one from ../shared/data)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = make_batch(args.data, args.seq, args.batch)
    masked = int((batch["mlm_labels"] != IGNORE).sum())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch} x {args.seq}, "
          f"{masked} masked tokens ({masked / batch['input_ids'].numel():.1%}); median of {args.steps} steps\n")
    print("| shape | model | step ms | tokens/s | vs HF |\n|---|---|---:|---:|---:|")
    for shape in args.shapes:
        steps = {name: step_fn(name, *SHAPES[shape], batch, args.compile) for name in ("hf", "ours_mlm", "ours_sbo")}
        for fn in steps.values():  # warm-up (allocator, lazy optimizer state)
            fn()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.steps):  # interleaved, so background load hits every model alike
            for name, fn in steps.items():
                times[name].append(fn())
        hf = statistics.median(times["hf"])
        tag = ", compiled" if args.compile else ""
        labels = {"hf": "HF BertForPreTraining (MLM+NSP)", "ours_mlm": f"ours (MLM{tag})", "ours_sbo": f"ours (MLM+SBO{tag})"}
        for name, ts in times.items():
            t = statistics.median(ts)
            print(f"| {shape} | {labels[name]} | {t * 1e3:.0f} | {batch['input_ids'].numel() / t:,.0f} | {t / hf:.2f}x |")
        del steps


if __name__ == "__main__":
    main()
