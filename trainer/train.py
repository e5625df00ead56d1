"""The training loop in three parts: build (model, optimizer, data, wrapping), resume (a checkpoint ->
TrainState), and the loop (one optimizer step per iteration), each a function of its own.

Loss normalisation (the one subtle part). Per optimizer step, over the *global* batch (every rank,
every accumulation micro-batch):

    loss = sum(MLM CE) / N_mlm + sum(SBO CE) / N_sbo  (+ sum(NSP CE) / N_nsp)

with N_* the global target counts. The counts are known from the labels before any forward pass, so
each step first all-reduces them (one tiny all-reduce, which also carries the stop flag), then every
micro-batch backpropagates its summed loss divided by the global counts, times the world size because
DDP averages gradients over ranks. The gradient is therefore identical however the global batch is
split over ranks and accumulation steps (tests/trainer/test_trainer_ddp.py checks this to 1e-6).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from contract.rundir import RunLock, WriteFailed
from contract.schema import read_manifest
from trainer import checkpoint, selfcheck
from trainer.checkpoint import Checkpoint, RunPlan, TrainState, run_plan
from trainer.config import Config, TrainConfig
from trainer.data import BlockStream, build_loader
from trainer.dist import Dist, distributed, lr_factor
from trainer.metrics import ObjectiveSums, StepCounts, target_counts
from trainer.model import OBJECTIVES, SpanBert, decay_groups, flops_per_token

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 spec sheets


def global_counts(micro_batches: list[dict[str, torch.Tensor]], world: int, device: torch.device, flag: float = 0.0) -> StepCounts:
    """The target counts summed over this rank's micro-batches (from the labels, CPU, no sync) and the
    stop flag, then all-reduced over ranks in one tensor."""
    local = [sum(c) for c in zip(*map(target_counts, micro_batches), strict=True)]
    counts = StepCounts(torch.tensor(local, dtype=torch.float64), torch.tensor(flag, dtype=torch.float64)).pack()
    if torch.device(device).type == "cuda":  # a pageable host->device copy would wait for the GPU to drain
        counts = counts.pin_memory()
    counts = counts.to(device, non_blocking=True)
    if world > 1:
        dist.all_reduce(counts)
    return StepCounts.unpack(counts)


def train_step(
    model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], counts: torch.Tensor,
    world: int, autocast: contextlib.AbstractContextManager,
) -> ObjectiveSums:
    """Forward + backward over this rank's micro-batches, `counts` the global targets per objective
    (StepCounts.targets); returns this rank's summed losses and correct counts with those global
    targets (gradients left in .grad)."""
    denom = counts.clamp(min=1)  # an objective with no targets contributes 0, not NaN
    sums = ObjectiveSums.zeros(counts.device)
    sums.targets = counts
    ddp = getattr(model, "_orig_mod", model)  # torch.compile(DDP(...)): no_sync lives on the DDP inside
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # DDP all-reduces gradients only on the last micro-batch of the step.
        sync = contextlib.nullcontext() if last or not isinstance(ddp, DDP) else ddp.no_sync()
        with sync:
            with autocast:
                out = model(batch)
            loss = sum(out[f"{o}_loss"] / denom[k] for k, o in enumerate(OBJECTIVES) if f"{o}_loss" in out)
            (loss * world).backward()
        sums.add_output(out)
    return sums


def use_compile(setting: bool | str, device: torch.device) -> bool:
    """train.compile: "auto" compiles on CUDA only (on CPU it measured no faster, docs/trainer.md)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_model(net: nn.Module, backend: Any = "inductor") -> nn.Module:
    # Default dynamic=None: dim 0 is marked dynamic (to_device); a dimension seen with a second value
    # (the padded width) becomes dynamic on that one recompile, so the graphs stop growing after warm-up.
    return torch.compile(net, backend=backend)


def to_device(batch: dict[str, torch.Tensor], device: torch.device, compiled: bool) -> dict[str, torch.Tensor]:
    """A loader batch on the device, without the bookkeeping keys. Compiled: the row count (and the packed
    token count) vary from batch to batch, so dim 0 is marked dynamic up front; the padded width takes a
    few values (data.pad_to_multiple), so the set of graphs stays small and is complete after warm-up."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in ("row_ids", "epoch")}
    if compiled:
        for v in out.values():
            torch._dynamo.maybe_mark_dynamic(v, 0)
    return out


def lr_schedule(cfg: Config) -> tuple[float, int, int]:
    """(peak lr, warm-up steps, step where the lr reaches 0): all the LR depends on."""
    return cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.schedule_steps or cfg.train.max_steps


def run(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: str = "never",
        init_from: str | Path | None = None, allow_plan_change: bool = False) -> dict[str, Any]:
    """Train; returns a summary. `resume`: "never", "auto" (newest valid checkpoint in out_dir) or a path.
    `init_from`: a transformers BERT directory to start from (trainer/hf.py), unless a checkpoint resumes.
    `allow_plan_change`: resume although the data or the batch/mask settings differ (PlanChanged otherwise)."""
    with distributed() as d:
        return _run(cfg, Path(data_dir), Path(out_dir), resume, d, init_from, allow_plan_change)


@dataclass
class Trainer:
    """Everything the loop runs on (built once; the loop's own state is a TrainState)."""

    cfg: Config
    d: Dist
    out_dir: Path
    log: _Logger
    model: SpanBert  # the bare model: state dicts, clipping
    optimizer: torch.optim.Optimizer
    net: nn.Module  # the model as trained: wrapped in DDP and/or compiled
    compiled: bool
    autocast: torch.autocast
    stream: BlockStream
    batches: Iterator[dict[str, torch.Tensor]]
    paths: selfcheck.RunPaths = field(default_factory=selfcheck.RunPaths)  # set by the start-up self-checks
    plan: RunPlan | None = None  # recorded in every checkpoint; a resume compares against it


def _run(cfg: Config, data_dir: Path, out_dir: Path, resume: str, d: Dist, init_from: str | Path | None,
         allow_plan_change: bool = False) -> dict[str, Any]:
    log = _Logger(out_dir, d.main)
    # One writer per run directory (rank 0 writes): held until the run ends, however it ends.
    lock = RunLock(out_dir, "run directory", log.info).acquire() if d.main else None
    try:
        if d.main:
            checkpoint.remove_stale_temporaries(out_dir, log.info)
        plan = run_plan(cfg, d.world, read_manifest(data_dir))
        # The order matters for bit-exact resumes: model init, then the RNG restore, then the loader
        # (its iterator draws the workers' base seed from torch's RNG).
        model, optimizer = build_model(cfg, d)
        ts = restore(cfg, model, optimizer, d, log, out_dir=out_dir, resume=resume, init_from=init_from, data_dir=data_dir,
                     plan=plan, allow_plan_change=allow_plan_change)
        log.open_metrics(ts.step)
        stream, batches = build_data(cfg, data_dir, d, ts.data_position)
        if d.main:
            _write_run_files(cfg, out_dir, stream, model, d, log, fresh=ts.step == 0)
        net, compiled = wrap(model, cfg.train, d)
        t = Trainer(cfg=cfg, d=d, out_dir=out_dir, log=log, model=model, optimizer=optimizer, net=net, compiled=compiled,
                    autocast=_autocast(cfg.train, d.device), stream=stream, batches=batches, plan=plan)
        ts = loop(t, ts)
    finally:
        log.close()
        if lock is not None:
            lock.release()
    return {"step": ts.step, "data_position": ts.data_position, "nonfinite_total": ts.nonfinite_total,
            "stopped": ts.step < cfg.train.max_steps}


# -- build -----------------------------------------------------------------------------------------
def build_model(cfg: Config, d: Dist) -> tuple[SpanBert, torch.optim.Optimizer]:
    """The model (identical init on every rank) and AdamW; leaves torch's RNG seeded per rank for dropout."""
    oc = cfg.optim
    torch.manual_seed(cfg.train.seed)
    model = SpanBert(cfg.model).to(d.device)
    fused = oc.fused and d.device.type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW(pretraining_groups(model, oc.weight_decay), lr=oc.lr, betas=oc.betas, eps=oc.eps, fused=fused)
    torch.manual_seed(cfg.train.seed + 1 + d.rank)  # dropout differs per rank
    return model, optimizer


def pretraining_groups(model: SpanBert, weight_decay: float) -> list[dict]:
    """decay_groups, with the token-type embeddings also undecayed: single-sequence pre-training never
    uses row 1 (segment B), so weight decay 0.1 would shrink it by exp(-0.1 * sum of lr) toward 0
    (e^-12 over the paper's schedule) before fine-tuning puts the context there (docs/trainer.md, Fidelity)."""
    groups = decay_groups(model, weight_decay)
    token_type = model.bert.embeddings.token_type_embeddings.weight
    groups[0]["params"] = [p for p in groups[0]["params"] if p is not token_type]
    groups[1]["params"].append(token_type)
    return groups


def build_data(cfg: Config, data_dir: Path, d: Dist, position: int) -> tuple[BlockStream, Iterator[dict[str, torch.Tensor]]]:
    """This rank's batch stream from global micro-batch `position` on, and the DataLoader over it."""
    stream = BlockStream(
        data_dir, cfg.data, cfg.masking, max_len=cfg.model.max_position, rank=d.rank, world=d.world, start=position, objective=cfg.model.objective,
        grad_accum=cfg.train.grad_accum, phases=cfg.phase_schedule(),
    )
    if stream.vocab.size != cfg.model.vocab_size:
        raise ValueError(f"model.vocab_size {cfg.model.vocab_size} != the shards' vocabulary size {stream.vocab.size}")
    return stream, iter(build_loader(stream, cfg.data.num_workers, pin_memory=d.device.type == "cuda"))


def _write_run_files(cfg: Config, out_dir: Path, stream: BlockStream, model: SpanBert, d: Dist, log: _Logger,
                     fresh: bool = True) -> None:
    # config.json is the run's config as it started; what a resume changed goes to HISTORY_FILE.
    if fresh or not (out_dir / "config.json").is_file():
        checkpoint.atomic_write(out_dir / "config.json", lambda f: f.write(json.dumps(cfg.to_dict(), indent=2).encode()))
    # Keep the vocabulary with the run, so `python -m trainer.export RUN_DIR OUT` needs no --data.
    tokenizer = stream.shards.manifest.tokenizer_path
    shutil.copyfile(tokenizer, out_dir / tokenizer.name)
    log.info(
        f"{model.num_params() / 1e6:.1f}M parameters, {len(stream.shards)} blocks, world {d.world}, "
        f"grad_accum {cfg.train.grad_accum}, device {d.device}"
    )


def wrap(model: SpanBert, tc: TrainConfig, d: Dist) -> tuple[nn.Module, bool]:
    """DDP (several ranks), then torch.compile (train.compile); returns the module to train and whether compiled."""
    net: nn.Module = model
    if d.world > 1:  # gradients live in DDP's buckets (no copy); bucket size: docs/trainer.md "DDP notes"
        net = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                  gradient_as_bucket_view=True, bucket_cap_mb=tc.ddp_bucket_mb)
    compiled = use_compile(tc.compile, d.device)
    return (compile_model(net) if compiled else net), compiled


def _autocast(tc: TrainConfig, device: torch.device) -> torch.autocast:
    bf16 = tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


# -- resume ----------------------------------------------------------------------------------------
HISTORY_FILE = "history.jsonl"  # one line per resume that changed the config (config.json keeps the start)


class PlanChanged(ValueError):
    """A resume whose data or batch/mask settings differ from the checkpoint's plan."""


def restore(cfg: Config, model: SpanBert, optimizer: torch.optim.Optimizer, d: Dist, log: _Logger, *,
            out_dir: Path, resume: str, init_from: str | Path | None, data_dir: Path, plan: RunPlan | None = None,
            allow_plan_change: bool = False) -> TrainState:
    """The TrainState to start from: a checkpoint's (`resume`), else step 0 of a fresh run, which refuses a
    run directory holding checkpoints and may start from transformers weights (`init_from`)."""
    found = _find_checkpoint(out_dir, resume, log)
    if found is not None:
        if plan is not None:
            check_plan(found, cfg, plan, out_dir, log, allow=allow_plan_change, main=d.main)
        return resume_from(found, cfg, model, optimizer, d, log)
    if resume == "never" and checkpoint.ckpt_dir(out_dir).is_dir() and any(checkpoint.ckpt_dir(out_dir).glob("*.pt")):
        raise FileExistsError(f"{out_dir} already has checkpoints: pass --resume auto to continue, or a fresh --out")
    if init_from is not None:  # a fresh run starting from transformers weights (checked against the shards' vocab)
        from trainer.hf import check_case, load_hf_weights

        manifest = read_manifest(data_dir)
        check_case(init_from, manifest.lowercase)  # before the vocabulary: same pieces, other normaliser
        report = load_hf_weights(model, init_from, vocab_sha256=manifest.vocab_sha256)
        log.info(report.summary())
    return TrainState()


def check_plan(ckpt: Checkpoint, cfg: Config, plan: RunPlan, out_dir: Path, log: _Logger, *, allow: bool,
               main: bool) -> None:
    """Refuse a resume that would continue in another plan (other data, seed, batches or masks), unless
    `allow`; then, and for any other config change (the LR schedule), append the change to HISTORY_FILE."""
    changes = plan.differences(ckpt.plan) if ckpt.plan is not None else []
    if ckpt.plan is None:
        log.info(f"{ckpt.path} records no run plan (written before plans were recorded): data and batch settings unchecked")
    if changes and not allow:
        raise PlanChanged(f"{ckpt.path}: resuming would change the run's plan: {'; '.join(changes)}; pass "
                          f"--allow-plan-change to continue deliberately, or train into a fresh --out")
    config_changes = _config_changes(ckpt.config.to_dict(), cfg.to_dict())
    if changes:
        log.info(f"plan changed on resume (--allow-plan-change): {'; '.join(changes)}")
    if main and (changes or config_changes):
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": ckpt.step,
                 "checkpoint": str(ckpt.path), "plan_changes": changes, "config_changes": config_changes}
        path = out_dir / HISTORY_FILE
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as e:
            raise WriteFailed(path, e) from None


def _config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {checkpoint.plain(a)!r} -> {checkpoint.plain(b)!r}")  # enums by value
    return out


def resume_from(ckpt: Checkpoint, cfg: Config, model: SpanBert, optimizer: torch.optim.Optimizer,
                d: Dist, log: _Logger) -> TrainState:
    """Load a checkpoint into model, optimizer and this rank's RNG; check it fits the run; its TrainState."""
    path, saved = ckpt.path, ckpt.config
    if replace(saved.model, attention=cfg.model.attention) != cfg.model:  # the kernel may change
        raise ValueError(f"{path}: the checkpoint's model config differs from this run's --config/--set")
    if ckpt.optimizer is None or ckpt.rng is None:
        raise ValueError(f"{path}: holds a model but no optimizer/RNG state, so it cannot be resumed (export or evaluate it)")
    model.load_state_dict(ckpt.model)
    sizes = [len(g["params"]) for g in ckpt.optimizer["param_groups"]]
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:  # e.g. written before pretraining_groups
        raise ValueError(f"{path}: its optimizer has parameter groups of {sizes} tensors, this version "
                         f"{[len(g['params']) for g in optimizer.param_groups]} (token_type_embeddings left weight decay "
                         "in pretraining_groups): resume it with the version that wrote it, or export it and --init-from")
    optimizer.load_state_dict(ckpt.optimizer)  # its stored lr is stale by design: overwritten each step
    ts = replace(ckpt.train_state)
    # The LR of step t is a function of (t, config), never carried in optimizer or checkpoint state, so a
    # resume with a new schedule applies it at once; say so.
    if (old := lr_schedule(saved)) != (new := lr_schedule(cfg)):
        log.info(
            f"LR schedule changed on resume: peak {old[0]:g} -> {new[0]:g}, warm-up {old[1]} -> {new[1]}, "
            f"zero at step {old[2]} -> {new[2]}; step {ts.step + 1} runs at "
            f"lr {new[0] * lr_factor(ts.step, new[1], new[2]):.6g} (the new schedule)"
        )
    cfg.data.vocab_sha256 = cfg.data.vocab_sha256 or ckpt.vocab_sha256  # shards must match the run
    if ckpt.world_size == d.world:
        checkpoint.set_rng_state(ckpt.rng[d.rank])
    else:
        log.info(f"world size changed {ckpt.world_size} -> {d.world}: dropout RNG reseeded (not bit-exact)")
        torch.manual_seed(cfg.train.seed + 1 + d.rank + 1_000_003 * ts.step)
    log.info(f"resumed from {path} at step {ts.step}, data position {ts.data_position}")
    return ts


def _find_checkpoint(out_dir: Path, resume: str, log: _Logger) -> Checkpoint | None:
    if resume == "never":
        return None
    if resume == "auto":
        return checkpoint.latest(out_dir, log=log.info)
    return checkpoint.load(resume)  # a step-N.pt, or another run directory's newest


# -- the loop --------------------------------------------------------------------------------------
def loop(t: Trainer, ts: TrainState) -> TrainState:
    """Optimizer steps until train.max_steps, SIGTERM or train.max_minutes; checkpoints on the way and at
    the end. No host sync per step: a non-finite step is skipped on the device (fused AdamW's found_inf)
    and counted there; the stop flag, the counters and the metrics are read every train.log_every steps,
    at the same step on every rank."""
    tc, d = t.cfg.train, t.d
    peak_lr, warmup, total = lr_schedule(t.cfg)
    stop, meter, first_step = _Stop(tc.max_minutes), _Meter(t, ts), ts.step
    try:
        while ts.step < tc.max_steps:
            micro = [next(t.batches) for _ in range(tc.grad_accum)]
            counts = global_counts(micro, d.world, d.device, flag=stop.poll())
            if ts.step % tc.log_every == 0 and counts.stop.item() > 0:  # some rank got SIGTERM / ran out of time
                t.log.info(f"{stop.reason}: saving step {ts.step} and exiting")
                break
            epoch, sizes = int(micro[0]["epoch"][0]), _sizes(micro)
            micro = [to_device(b, d.device, t.compiled) for b in micro]

            lr = peak_lr * lr_factor(ts.step, warmup, total)  # skipped (non-finite) steps still advance the schedule
            for group in t.optimizer.param_groups:
                group["lr"] = lr
            if ts.step == first_step:  # with the start-up self-checks (trainer/selfcheck.py)
                sums = _first_step(t, micro, counts.targets)
            else:
                sums = train_step(t.net, micro, counts.targets, d.world, t.autocast)
            norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.optim.clip_grad_norm or math.inf)
            found_inf = _optimizer_step(t.optimizer, norm)  # identical on every rank: gradients are all-reduced
            t.optimizer.zero_grad(set_to_none=True)
            ts.step += 1
            ts.data_position += tc.grad_accum * d.world
            meter.add(sums, found_inf, sizes)

            if ts.step % tc.log_every == 0 or ts.step == tc.max_steps:
                meter.log(ts, epoch=epoch, lr=lr, grad_norm=float(norm))
            if ts.step % tc.ckpt_every == 0 and ts.step < tc.max_steps:
                save(t, meter.sync(ts))
        if ts.step > first_step:  # at the end and on a stop; a run resumed at its end has nothing new to save
            save(t, meter.sync(ts))
    finally:
        meter.close()
        stop.close()
    return ts


def _first_step(t: Trainer, micro: list[dict[str, torch.Tensor]], counts: torch.Tensor) -> ObjectiveSums:
    """The run's first step: varlen attention checked on its first batch, compilation (which happens in this
    step) falling back to eager; each falls back under "auto" and fails when asked for explicitly."""
    dtype = t.autocast.fast_dtype if t.autocast._enabled else torch.float32
    t.paths.attention = selfcheck.choose_attention(t.model, micro[0], t.d.device, dtype, t.log.info)
    if t.compiled:
        sums, t.net = selfcheck.first_compiled_step(
            lambda net: train_step(net, micro, counts, t.d.world, t.autocast), t.net, t.net._orig_mod,
            t.cfg.train.compile, lambda: t.optimizer.zero_grad(set_to_none=True), t.log.info)
        t.compiled = hasattr(t.net, "_orig_mod")  # False after the fall-back to eager
    else:
        sums = train_step(t.net, micro, counts, t.d.world, t.autocast)
    t.paths.compiled = t.compiled
    t.log.info(f"paths used: attention {t.paths.attention}, {'compiled' if t.compiled else 'eager'}")
    return sums


def save(t: Trainer, ts: TrainState) -> None:
    """Every rank takes part (the RNG states are gathered); rank 0 writes."""
    model, optimizer, rng = t.model.state_dict(), t.optimizer.state_dict(), _gather_rng(t.d)
    if t.d.main:
        checkpoint.save_training(
            t.out_dir, ts, model=model, optimizer=optimizer, rng=rng, config=t.cfg.to_dict(),
            vocab_sha256=t.stream.vocab.sha256, world_size=t.d.world, keep_last=t.cfg.train.keep_last, plan=t.plan,
        )


def _sizes(micro: list[dict[str, torch.Tensor]]) -> tuple[int, int, int]:
    """(real tokens, padded tokens, sequences) of this rank's micro-batches (host tensors, before the copy)."""
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in micro)
    padded = sum(b["input_ids"].numel() for b in micro)
    seqs = sum(len(b["input_ids"]) for b in micro)
    return tokens, padded, seqs


class _Stop:
    """SIGTERM or the train.max_minutes budget, as the flag all-reduced with the target counts (so every
    rank stops at the same step): 1 = SIGTERM, 2 = time is up."""

    def __init__(self, max_minutes: float) -> None:
        self.flag = 0.0
        self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._deadline = time.monotonic() + max_minutes * 60 if max_minutes > 0 else math.inf

    def _on_sigterm(self, *_: Any) -> None:
        self.flag = 1.0

    def poll(self) -> float:
        if time.monotonic() > self._deadline and not self.flag:
            self.flag = 2.0
        return self.flag

    @property
    def reason(self) -> str:
        return "train.max_minutes reached" if self.flag == 2.0 else "SIGTERM"

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._old_handler)


class _NonFinite:
    """Skipped (non-finite) steps, counted on the device: [run total, current run of skips in a row,
    longest run in a row since the last read]."""

    def __init__(self, total: int, device: torch.device) -> None:
        self.counts = torch.tensor([float(total), 0.0, 0.0], device=device)

    def add(self, found_inf: torch.Tensor) -> None:
        c = self.counts
        c[0] += found_inf
        c[1] = (c[1] + found_inf) * found_inf
        c[2] = torch.maximum(c[2], c[1])

    def total(self) -> int:
        return int(self.counts[0])

    def read(self) -> tuple[int, int, int]:
        """(total, in a row now, longest run since the last read) — a host sync; the next window starts at 0."""
        total, in_a_row, worst = (int(x) for x in self.counts.tolist())
        self.counts[2] = 0.0
        return total, in_a_row, worst


class _Meter:
    """The loop's bookkeeping: non-finite counters, the metrics window, metrics lines and the progress bar."""

    def __init__(self, t: Trainer, ts: TrainState) -> None:
        self.t, self.peak = t, _peak_flops(t.d.device)
        self.nonfinite = _NonFinite(ts.nonfinite_total, t.d.device)
        self.window = _Window()
        self.progress = t.log.progress(ts.step, t.cfg.train.max_steps)

    def add(self, sums: ObjectiveSums, found_inf: torch.Tensor, sizes: tuple[int, int, int]) -> None:
        self.nonfinite.add(found_inf)
        self.window.add(sums, found_inf, *(n * self.t.d.world for n in sizes))
        self.progress.update(1)

    def sync(self, ts: TrainState) -> TrainState:
        """ts with the device's non-finite total (a host sync: before a checkpoint)."""
        ts.nonfinite_total = self.nonfinite.total()
        return ts

    def log(self, ts: TrainState, *, epoch: int, lr: float, grad_norm: float) -> None:
        """One metrics line (all ranks reduce, rank 0 writes); stops the run after too many skips in a row."""
        t, tc = self.t, self.t.cfg.train
        m, self.window = self.window.reduce(t.d), _Window()
        ts.nonfinite_total, in_a_row, worst = self.nonfinite.read()
        m.update(step=ts.step, epoch=epoch, lr=lr, grad_norm=grad_norm, nonfinite_total=ts.nonfinite_total,
                 data_position=ts.data_position, **t.paths.metrics())
        if m["skipped"]:
            t.log.info(f"step {ts.step}: {m['skipped']} non-finite step(s) since the last log, updates skipped ({in_a_row} in a row)")
        if self.peak:
            mask_ratio = t.cfg.data.masking.mask_ratio
            m["mfu"] = m["tokens_per_s"] * flops_per_token(t.cfg.model, m["mean_seq_len"], mask_ratio) / (self.peak * t.d.world)
        t.log.metrics(m)
        self.progress.set_postfix(loss=f"{m['loss']:.3f}")
        if worst >= tc.max_nonfinite_in_a_row:
            raise RuntimeError(
                f"stopping at step {ts.step}: {worst} non-finite steps in a row "
                f"(train.max_nonfinite_in_a_row); lower optim.lr or check the data"
            )

    def close(self) -> None:
        self.progress.close()


def _optimizer_step(optimizer: torch.optim.Optimizer, norm: torch.Tensor) -> torch.Tensor:
    """Step unless the gradient norm is non-finite; returns found_inf (1.0 = skipped) on the device.
    Fused AdamW skips on the device (its found_inf input, as under GradScaler: parameters, moments and
    step count untouched); other optimizers need a host read of the flag."""
    found_inf = (~torch.isfinite(norm)).float()
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = found_inf
        optimizer.step()
        del optimizer.found_inf
    elif not found_inf.item():
        optimizer.step()
    return found_inf


def _gather_rng(d: Dist) -> list[dict]:
    state = checkpoint.rng_state()
    if d.world == 1:
        return [state]
    states: list[Any] = [None] * d.world
    dist.all_gather_object(states, state)
    return states


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


@dataclass
class _Window:
    """Metrics summed since the last log line; reduced over ranks only when logging (then a fresh window)."""

    sums: ObjectiveSums | None = None  # local loss/correct sums, global target counts
    skipped: torch.Tensor | None = None  # non-finite steps (updates skipped), the same on every rank
    tokens: int = 0
    padded: int = 0
    seqs: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, sums: ObjectiveSums, found_inf: torch.Tensor, tokens: int, padded: int, seqs: int) -> None:
        found_inf = found_inf.to(torch.float64)
        self.sums = sums if self.sums is None else self.sums + sums
        self.skipped = found_inf if self.skipped is None else self.skipped + found_inf
        self.tokens += tokens
        self.padded += padded
        self.seqs += seqs

    def reduce(self, d: Dist) -> dict[str, Any]:
        sums = self.sums.all_reduce_local() if d.world > 1 else self.sums
        elapsed = time.perf_counter() - self.t0
        m: dict[str, Any] = sums.means()
        m["loss"] = sums.total_loss()
        m["tokens_per_s"] = float(self.tokens / elapsed)
        m["padded_tokens_per_s"] = float(self.padded / elapsed)
        m["mean_seq_len"] = float(self.padded / max(1, self.seqs))
        m["skipped"] = int(self.skipped)  # non-finite steps (updates skipped) in this window
        return m


class _Logger:
    """Rank 0 only: tqdm progress bar, metrics.jsonl and TensorBoard scalars in the run directory.

    metrics.jsonl holds each step once: on opening, lines past the step the run restarts from (steps a
    killed run logged after its last checkpoint, which the resume runs again) are dropped. A write that
    fails at the OS level (disk full) is WriteFailed naming the file; TensorBoard's writer thread fails
    silently and its error is raised here, in the training thread, the same way."""

    def __init__(self, out_dir: Path, main: bool):
        self.main, self.out_dir = main, out_dir
        self.metrics_path = out_dir / "metrics.jsonl"
        self._jsonl = None
        self._tb = None
        self._excepthook = None

    def open_metrics(self, step: int) -> None:
        if not self.main:
            return
        path = self.metrics_path
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [x for x in lines if x.strip() and _line_step(x) <= step]
            if len(kept) != len(lines):
                self.info(f"{path}: dropped {len(lines) - len(kept)} line(s) past step {step} (re-run by this resume)")
                checkpoint.atomic_write(path, lambda f: f.write("".join(kept).encode()))
        try:
            self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise WriteFailed(path, e) from None

    def info(self, msg: str) -> None:
        if self.main:
            print(f"[trainer] {msg}", file=sys.stderr, flush=True)

    def progress(self, initial: int, total: int):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, disable=not self.main, dynamic_ncols=True, desc="train")

    def metrics(self, m: dict[str, Any]) -> None:
        if not self.main:
            return
        try:
            self._jsonl.write(json.dumps(m) + "\n")
            self._jsonl.flush()
        except OSError as e:
            raise WriteFailed(self.metrics_path, e) from None
        with self._tensorboard_errors():
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._quiet_writer_thread()
                self._tb = SummaryWriter(str(self.out_dir / "tb"))
            for k, v in m.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, m["step"])

    @contextlib.contextmanager
    def _tensorboard_errors(self):
        try:
            yield
        except Exception as e:  # the writer thread's OSError, re-raised by TensorBoard on the next call
            cause = e if isinstance(e, OSError) else (e.__cause__ or e.__context__)
            if isinstance(cause, OSError) and not isinstance(cause, WriteFailed):
                raise WriteFailed(self.out_dir / "tb", cause) from None
            raise

    def _quiet_writer_thread(self) -> None:
        """TensorBoard's writer thread re-raises its error after storing it (the main thread gets it on the
        next call): keep that thread's traceback off stderr."""
        original = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if type(args.thread).__name__ != "_AsyncWriterThread":
                original(args)

        self._excepthook, threading.excepthook = original, hook

    def close(self) -> None:
        try:
            if self._jsonl:
                self._jsonl.close()
            if self._tb:
                with self._tensorboard_errors():
                    self._tb.close()
        finally:
            self._jsonl = self._tb = None
            if self._excepthook is not None:
                threading.excepthook, self._excepthook = self._excepthook, None


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return sys.maxsize  # a torn last line (killed mid-write): dropped with the steps past the checkpoint


