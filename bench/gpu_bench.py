"""GPU training throughput, measured as training runs: real shard blocks (their length distribution, so
padding and masks are real), the DataLoader with masking in its workers, the DDP wrapper (one rank),
bf16 autocast, fused AdamW with the on-device non-finite skip, clipping; eager and torch.compile.

    PYTHONPATH=. python3 bench/gpu_bench.py --data SHARDS                 # base and large, 512, eager + compiled
    PYTHONPATH=. python3 bench/gpu_bench.py --data SHARDS --out DIR       # also DIR/gpu_bench.{md,json}
    PYTHONPATH=. python3 bench/gpu_bench.py --data SHARDS --cpu-smoke     # the same code path, tiny model on CPU

Needs only torch, numpy, pyarrow and tokenizers (no Beam, spaCy or transformers). SHARDS: any shard
directory of 512-token blocks; `make gpu-shards` writes a 3 MB one (bench/gpu_check.sh).

Per configuration: 3 repeats of --steps optimizer steps after warm-up (compilation included there),
min and median step time, non-pad tokens/s (the median repeat), peak GPU memory, and MFU by two
conventions, both per non-pad token at the batches' mean real sequence length S:
  MFU(6N)          6 x parameters
  MFU(6N+12LdS)    6 x parameters + attention 12 x layers x hidden x S (GUIDE §5: 2.19 GFLOP/token, large at 512)
Then the loader alone (read + mask + collate), in blocks/s per worker, against what the GPU consumed.

Also (issue 24): the start-up self-check of varlen flash attention on a real batch (trainer/selfcheck.py:
the op, its schema, forward + backward against padded SDPA in bf16), and a sequence-length phases row: the
first size and mode again with every block cut into --phase-len sub-blocks (data.phases' short phase, the
same token budget per step), steps/s and non-pad tokens/s at --phase-len vs --seq. The tables are rewritten
after every configuration, so a run cut short by its time limit still leaves what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer import selfcheck  # noqa: E402
from trainer.config import Phase, load_config  # noqa: E402
from trainer.data import BlockStream, build_loader  # noqa: E402
from trainer.model import SpanBert, decay_groups, flash_op  # noqa: E402
from trainer.train import (  # noqa: E402
    PEAK_BF16_FLOPS,
    _optimizer_step,
    compile_model,
    global_counts,
    to_device,
    train_step,
)


@dataclasses.dataclass
class Result:
    size: str
    compiled: bool
    batch_tokens: int
    step_ms_min: float
    step_ms_median: float
    tokens_per_s: float  # non-pad tokens, median repeat
    padded_share: float  # padding in the measured batches
    mean_len: float  # mean real sequence length S
    params: int
    layers: int
    hidden: int
    peak_mem_gib: float
    warmup_s: float
    seq_len: int = 512  # the longest sequence: --seq, or --phase-len for the phases row

    @property
    def steps_per_s(self) -> float:
        return 1e3 / self.step_ms_median

    def mfu(self, peak: float | None, attention: bool) -> float | None:
        if not peak:
            return None
        flops = 6 * self.params + (12 * self.layers * self.hidden * self.mean_len if attention else 0)
        return self.tokens_per_s * flops / peak


def bench_training(size: str, data: Path, batch_tokens: int, seq: int, compiled: bool, args, device: torch.device,
                   phase_len: int = 0) -> Result:
    """`phase_len` > 0: every step in a short phase of that length (sub-blocks of the same shards)."""
    cfg = load_config(size)
    mcfg = cfg.model
    mcfg.max_position = seq
    dcfg = dataclasses.replace(cfg.data, step_tokens=0, batch_tokens=batch_tokens, num_workers=args.workers)
    stream = BlockStream(data, dcfg, dcfg.masking_for(seed=0, max_sbo_targets=mcfg.max_sbo_targets), max_len=seq,
                         phases=(Phase(0, phase_len),) if phase_len else ())
    batches = build_loader(stream, args.workers, pin_memory=device.type == "cuda")
    loader = iter(batches)

    torch.manual_seed(0)
    model = SpanBert(mcfg).to(device)
    opt = torch.optim.AdamW(decay_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True,
              bucket_cap_mb=args.bucket_mb or cfg.train.ddp_bucket_mb)
    if compiled:
        torch._dynamo.reset()
        net = compile_model(net)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    real, padded, seqs = [0], [0], [0]

    def step() -> None:
        micro = next(loader)
        real[0] += int(micro["attention_mask"].sum()) if "attention_mask" in micro else micro["input_ids"].numel()
        padded[0] += micro["input_ids"].numel()
        rows = len(micro["input_ids"])
        counts = global_counts([micro], 1, device)
        train_step(net, [to_device(micro, device, compiled)], counts.targets, 1, autocast)
        _optimizer_step(opt, torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.zero_grad(set_to_none=True)
        seqs[0] += rows

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, rates = [], []
    real_total, padded_total, seqs_total = 0, 0, 0
    for _ in range(args.repeats):
        real[0] = padded[0] = seqs[0] = 0
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        dt = time.perf_counter() - t
        times.append(dt / args.steps)
        rates.append(real[0] / dt)
        real_total, padded_total, seqs_total = real_total + real[0], padded_total + padded[0], seqs_total + seqs[0]
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    params = model.num_params()
    return Result(size, compiled, batch_tokens, min(times) * 1e3, statistics.median(times) * 1e3, statistics.median(rates),
                  1 - real_total / padded_total, real_total / seqs_total, params,
                  mcfg.num_layers, mcfg.hidden_size, mem, warmup_s, phase_len or seq)


def bench_loader(data: Path, size: str, seq: int, batch_tokens: int, workers: int, batches: int) -> float:
    """Blocks per second per worker: read + mask + collate through the DataLoader, no model."""
    cfg = load_config(size)
    dcfg = dataclasses.replace(cfg.data, step_tokens=0, batch_tokens=batch_tokens, num_workers=workers)
    stream = BlockStream(data, dcfg, dcfg.masking_for(seed=0, max_sbo_targets=cfg.model.max_sbo_targets), max_len=seq)
    it = iter(build_loader(stream, workers, pin_memory=False))
    next(it)  # worker start-up is not throughput
    t, rows = time.perf_counter(), 0
    for b in itertools.islice(it, batches):
        rows += len(b["input_ids"])
    return rows / (time.perf_counter() - t) / max(1, workers)


def varlen_selfcheck(data: Path, size: str, seq: int, batch_tokens: int, device: torch.device) -> dict:
    """The trainer's start-up check of varlen flash attention, on one real batch of `size`'s shape, in bf16."""
    cfg = load_config(size)
    dcfg = dataclasses.replace(cfg.data, step_tokens=0, batch_tokens=batch_tokens, num_workers=0)
    stream = BlockStream(data, dcfg, dcfg.masking_for(seed=0, max_sbo_targets=cfg.model.max_sbo_targets), max_len=seq)
    batch = {k: v.to(device) for k, v in next(iter(stream)).items() if k not in ("row_ids", "epoch")}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t = time.perf_counter()
    problem = selfcheck.varlen_problem(selfcheck.packing_of(batch), cfg.model.num_heads, cfg.model.head_dim, dtype, device)
    op = flash_op()
    return {"size": size, "dtype": str(dtype), "rows": len(batch["input_ids"]), "problem": problem,
            "passed": problem == "", "seconds": time.perf_counter() - t,
            "op_schema": str(op.default._schema) if op is not None else None}


def tables(head: str, results: list[Result], phase_rows: list[Result], loader_rows: list[str], peak: float | None) -> str:
    rows = [
        "| size | mode | tokens/micro-batch | step ms min / median | non-pad tokens/s | padding | mean S | MFU(6N) | MFU(6N+12LdS) | peak GiB | warm-up s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.size} | {'compiled' if r.compiled else 'eager'} | {r.batch_tokens:,} | {r.step_ms_min:.0f} / {r.step_ms_median:.0f} | "
            f"{r.tokens_per_s:,.0f} | {r.padded_share:.1%} | {r.mean_len:.0f} | {_pct(r.mfu(peak, False))} | "
            f"{_pct(r.mfu(peak, True))} | {r.peak_mem_gib:.1f} | {r.warmup_s:.0f} |"
        )
    phases = ["| data.phases | size | mode | sequence length | tokens/step | steps/s | non-pad tokens/s | mean S | x the long phase's tokens/s |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in phase_rows:
        base = phase_rows[-1].tokens_per_s
        phases.append(f"| {'short' if r is not phase_rows[-1] else 'long'} | {r.size} | {'compiled' if r.compiled else 'eager'} | {r.seq_len} | {r.batch_tokens:,} | {r.steps_per_s:.2f} | "
                      f"{r.tokens_per_s:,.0f} | {r.mean_len:.0f} | {r.tokens_per_s / base:.2f}x |")
    return "\n".join([head, "", *rows, "", *(phases if phase_rows else []), "", *loader_rows])


def write_out(out: Path | None, table: str, record: dict) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.md").write_text(table + "\n")
    (out / "gpu_bench.json").write_text(json.dumps(record, indent=1))


def _record(name: str, peak: float | None, check: dict, results: list[Result], phase_rows: list[Result], loader: dict) -> dict:
    def one(r: Result) -> dict:
        return {**dataclasses.asdict(r), "steps_per_s": r.steps_per_s, "mfu_6n": r.mfu(peak, False), "mfu_6n_12lds": r.mfu(peak, True)}

    return {"device": name, "torch": torch.__version__, "peak_flops": peak, "selfcheck_varlen": check,
            "results": [one(r) for r in results], "phases": [one(r) for r in phase_rows],
            "loader_blocks_per_s_per_worker": loader}


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="shard directory (512-token blocks; `make gpu-shards`)")
    p.add_argument("--sizes", nargs="+", default=["base", "large"])
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch-tokens", type=int, nargs="+", default=[32768, 16384],
                   help="padded tokens per micro-batch, per size in order (64 x 512 base, 32 x 512 large)")
    p.add_argument("--compile", choices=["off", "on", "both"], default="both")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10, help="steps before timing (torch.compile compiles here)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    p.add_argument("--bucket-mb", type=float, default=0.0, help="DDP bucket size; 0 = the preset's train.ddp_bucket_mb")
    p.add_argument("--phase-len", type=int, default=128, help="the phases row's short sequence length (0: no phases row)")
    p.add_argument("--out", type=Path, help="write gpu_bench.md and gpu_bench.json here")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model, CPU, fp32, 64-token blocks: checks the code path")
    args = p.parse_args()

    if args.cpu_smoke:
        device, peak, name = torch.device("cpu"), None, "CPU smoke"
        args.sizes, args.batch_tokens, args.seq = ["tiny"], [256], 64
        args.phase_len = min(args.phase_len, 16)
        args.steps, args.repeats, args.warmup, args.workers = 2, 3, 1, 1
        args.compile = "off" if args.compile == "both" else args.compile
        backend = "gloo"
    else:
        if not torch.cuda.is_available():
            _fail("no CUDA device; use --cpu-smoke to exercise the code path on CPU")
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        backend = "nccl"
    if not (args.data / "manifest.json").is_file():
        _fail(f"{args.data}: no manifest.json (make gpu-shards writes one)")
    init = Path(tempfile.mkdtemp()) / "init"
    dist.init_process_group(backend, init_method=f"file://{init}", rank=0, world_size=1)  # DDP as in training

    head = f"{name}, torch {torch.__version__}, peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s, data {args.data}"
    print(head, flush=True)
    # The trainer's start-up self-check first: the bench itself runs varlen attention on CUDA.
    check = varlen_selfcheck(args.data, args.sizes[0], args.seq, args.batch_tokens[0], device)
    print(f"  self-check, varlen flash attention vs padded SDPA ({check['dtype']}): "
          f"{'passed' if check['passed'] else 'FAILED: ' + check['problem']}", flush=True)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    results: list[Result] = []
    phase_rows: list[Result] = []
    loader: dict[int, float] = {}
    loader_rows: list[str] = []

    def save() -> str:
        table = tables(head, results, phase_rows, loader_rows, peak)
        write_out(args.out, table, _record(name, peak, check, results, phase_rows, loader))
        return table

    for size, bt in zip(args.sizes, args.batch_tokens, strict=False):
        for compiled in modes:
            r = bench_training(size, args.data, bt, args.seq, compiled, args, device)
            results.append(r)
            print(f"  {size} {'compiled' if compiled else 'eager'}: {r.tokens_per_s:,.0f} non-pad tokens/s", flush=True)
            if len(results) == 1 and 0 < args.phase_len < args.seq:  # the phases row early: the same size and mode, short phase
                short = bench_training(size, args.data, bt, args.seq, compiled, args, device, args.phase_len)
                phase_rows = [short, r]
                print(f"  phases: {short.seq_len}: {short.steps_per_s:.2f} steps/s, {short.tokens_per_s:,.0f} tokens/s; "
                      f"{r.seq_len}: {r.steps_per_s:.2f} steps/s, {r.tokens_per_s:,.0f} tokens/s", flush=True)
            save()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    # The loader alone: how many blocks/s one worker delivers, against what the GPU consumed.
    consumed = max(r.tokens_per_s / r.mean_len for r in results)
    loader_rows = ["| loader workers | blocks/s per worker | x the fastest GPU config's blocks/s |", "|---:|---:|---:|"]
    for w in sorted({1, args.workers}):
        per_worker = bench_loader(args.data, args.sizes[0], args.seq, args.batch_tokens[0], w, 4 if args.cpu_smoke else 40)
        loader[w] = per_worker
        loader_rows.append(f"| {w} | {per_worker:,.0f} | {per_worker * w / consumed:.1f}x |")
    print("\n" + save())
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
