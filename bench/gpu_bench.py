"""GPU throughput: tokens/s and MFU of a full SpanBERT training step (MLM + SBO, bf16 autocast, fused
AdamW, clipping) for BERT-base and BERT-large at sequence length 512. Goal: >= 45% MFU for large on an
H100/H200.

    .venv/bin/python bench/gpu_bench.py                      # base and large, seq 512, bf16 (needs CUDA)
    .venv/bin/python bench/gpu_bench.py --compile            # with torch.compile
    .venv/bin/python bench/gpu_bench.py --cpu-smoke          # the same code path, tiny model on CPU (no GPU needed)

Batches are synthetic but realistic: random vocabulary ids with ~75% word starts, masked by masking/
(geometric spans, 15%), collated by trainer/data.py exactly as in training. Two MFU figures:
  MFU        FLOPs actually needed (encoder 6*N_layers + attention 12*L*d*S + heads at masked tokens only)
  MFU(6N)    the common 6*N_params + 12*L*d*S convention (GUIDE §5: 2.19 GFLOP/token for large at 512),
             which charges the 29k-wide decoder at every token, as a model without masked-only heads pays.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import DataConfig, ModelConfig, load_config  # noqa: E402
from trainer.data import Vocab, build_masker, collate_blocks  # noqa: E402
from trainer.model import SpanBert, decay_groups, flops_per_token  # noqa: E402
from trainer.train import PEAK_BF16_FLOPS, global_counts, train_step  # noqa: E402

VOCAB = Vocab(size=28996, sha256="", pad=0, cls=101, sep=102, mask=103, specials=(0, 100, 101, 102, 103))


def synthetic_batch(cfg: DataConfig, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    n = seq - 2
    parts = [{"ids": rng.integers(999, VOCAB.size, n).astype(np.int32), "word_start": rng.random(n) < 0.75} for _ in range(batch)]
    masker = build_masker(cfg, VOCAB, None, 15, seed)
    return collate_blocks(parts, masker, VOCAB, cfg, seq, 0, np.arange(batch))


def bench(model_cfg: ModelConfig, batch: int, seq: int, steps: int, warmup: int, device: torch.device,
          bf16: bool, compile_: bool) -> dict[str, float]:
    torch.manual_seed(0)
    model = SpanBert(model_cfg).to(device)
    opt = torch.optim.AdamW(decay_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)
    net = torch.compile(model) if compile_ else model
    data_cfg = DataConfig(batch_size=batch, num_workers=0)
    batches = [{k: v.to(device) for k, v in synthetic_batch(data_cfg, batch, seq, s).items()} for s in range(4)]
    counts = [global_counts([b], 1, device)[:3] for b in batches]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(i: int) -> None:
        train_step(net, [batches[i % 4]], counts[i % 4], 1, autocast)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    sync()
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    dt = (time.perf_counter() - t) / steps
    tokens = batch * seq / dt
    n_params = model.num_params()
    out = {"step_ms": dt * 1e3, "tokens_per_s": tokens, "params_M": n_params / 1e6,
           "flops_per_token": flops_per_token(model_cfg, seq, 0.15),
           "flops_per_token_6n": 6 * n_params + 12 * model_cfg.num_layers * model_cfg.hidden_size * seq}
    if device.type == "cuda":
        out["max_mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["base", "large"])
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, nargs="+", default=[64, 32], help="per size, in order")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny config, CPU, fp32, 2 steps: checks the code path")
    args = p.parse_args()

    if args.cpu_smoke:
        device, bf16, peak = torch.device("cpu"), False, None
        sizes, batches, seq, steps, warmup = ["tiny"], [2], 64, 2, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device; use --cpu-smoke to exercise the code path on CPU")
        device, bf16 = torch.device("cuda"), True
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        torch.backends.cuda.matmul.allow_tf32 = True
        sizes, batches, seq, steps, warmup = args.sizes, args.batch, args.seq, args.steps, args.warmup
        print(f"{name}, torch {torch.__version__}, peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    print("\n| size | params | batch x seq | step ms | tokens/s | MFU | MFU(6N) | mem GiB |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, batch in zip(sizes, batches, strict=False):
        model_cfg = load_config(size).model
        if args.cpu_smoke:
            model_cfg.max_position = seq
        r = bench(model_cfg, batch, seq, steps, warmup, device, bf16, args.compile)
        mfu = f"{r['tokens_per_s'] * r['flops_per_token'] / peak:.1%}" if peak else "n/a"
        mfu6 = f"{r['tokens_per_s'] * r['flops_per_token_6n'] / peak:.1%}" if peak else "n/a"
        print(f"| {size} | {r['params_M']:.0f}M | {batch} x {seq} | {r['step_ms']:.0f} | {r['tokens_per_s']:,.0f} | "
              f"{mfu} | {mfu6} | {r.get('max_mem_GiB', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
