"""The training loop, read top to bottom: setup, resume, then one optimizer step per iteration.

Loss normalisation (the one subtle part). Per optimizer step, over the *global* batch (every rank,
every accumulation micro-batch):

    loss = sum(MLM CE) / N_mlm + sum(SBO CE) / N_sbo  (+ sum(NSP CE) / N_nsp)

with N_* the global target counts. The counts are known from the labels before any forward pass, so
each step first all-reduces them (one tiny all-reduce, which also carries the SIGTERM flag), then every
micro-batch backpropagates its summed loss divided by the global counts, times the world size because
DDP averages gradients over ranks. The gradient is therefore identical however the global batch is
split over ranks and accumulation steps (tests/trainer/test_ddp.py checks this to 1e-6).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.schema import read_manifest
from trainer import checkpoint
from trainer.config import Config, ModelConfig
from trainer.data import BlockStream, build_loader
from trainer.model import IGNORE, OBJECTIVES, SpanBert, decay_groups, flops_per_token

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 spec sheets


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_dist() -> Dist:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*; a plain `python -m trainer` is one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, device)


def teardown_dist() -> None:
    # barrier first: gloo can abort a peer that is still talking when another rank tears down.
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def target_counts(batch: dict[str, torch.Tensor]) -> list[float]:
    """Local number of MLM / SBO / NSP targets in one micro-batch (from the labels, CPU, no sync)."""
    return [
        float((batch["mlm_labels"] != IGNORE).sum()),
        float((batch["sbo_labels"] != IGNORE).sum()) if "sbo_labels" in batch else 0.0,
        float(len(batch["nsp_labels"])) if "nsp_labels" in batch else 0.0,
    ]


def global_counts(micro_batches: list[dict[str, torch.Tensor]], world: int, device: torch.device, flag: float = 0.0) -> torch.Tensor:
    """[N_mlm, N_sbo, N_nsp, flag] summed over this rank's micro-batches, then all-reduced over ranks."""
    local = [sum(c) for c in zip(*map(target_counts, micro_batches), strict=True)] + [flag]
    counts = torch.tensor(local, dtype=torch.float64)
    if torch.device(device).type == "cuda":  # a pageable host->device copy would wait for the GPU to drain
        counts = counts.pin_memory()
    counts = counts.to(device, non_blocking=True)
    if world > 1:
        dist.all_reduce(counts)
    return counts


def train_step(
    model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], counts: torch.Tensor,
    world: int, autocast: contextlib.AbstractContextManager,
) -> torch.Tensor:
    """Forward + backward over this rank's micro-batches; returns local summed metrics
    [mlm_loss, mlm_correct, sbo_loss, sbo_correct, nsp_loss, nsp_correct] (gradients left in .grad)."""
    denom = counts.clamp(min=1)  # an objective with no targets contributes 0, not NaN
    sums = torch.zeros(6, dtype=torch.float64, device=counts.device)
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
        for k, o in enumerate(OBJECTIVES):
            if f"{o}_loss" in out:
                sums[2 * k] += out[f"{o}_loss"].detach()
                sums[2 * k + 1] += out[f"{o}_correct"]
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


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to the peak, then linear decay to 0 at `total` (paper §4.2)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def lr_schedule(cfg: dict[str, Any]) -> tuple[float, int, int]:
    """(peak lr, warm-up steps, step where the lr reaches 0) of a config dict: all the LR depends on."""
    optim, train = cfg["optim"], cfg["train"]
    return optim["lr"], optim["warmup_steps"], optim["schedule_steps"] or train["max_steps"]


def run(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: str = "never",
        init_from: str | Path | None = None) -> dict[str, Any]:
    """Train; returns a summary. `resume`: "never", "auto" (newest valid checkpoint in out_dir) or a path.
    `init_from`: a transformers BERT directory to start from (trainer/hf.py), unless a checkpoint resumes."""
    d = setup_dist()
    try:
        summary = _run(cfg, Path(data_dir), Path(out_dir), resume, d, init_from)
    except BaseException:
        if dist.is_initialized():  # no barrier on the way out of an error: a peer may be gone or stuck
            dist.destroy_process_group()
        raise
    teardown_dist()
    return summary


def _run(cfg: Config, data_dir: Path, out_dir: Path, resume: str, d: Dist, init_from: str | Path | None) -> dict[str, Any]:
    tc, oc = cfg.train, cfg.optim
    out_dir.mkdir(parents=True, exist_ok=True)
    log = _Logger(out_dir, d.main)

    # -- model, optimizer, schedule ------------------------------------------------------------
    torch.manual_seed(tc.seed)  # identical init on every rank
    model = SpanBert(cfg.model).to(d.device)
    fused = oc.fused and d.device.type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW(decay_groups(model, oc.weight_decay), lr=oc.lr, betas=oc.betas, eps=oc.eps, fused=fused)
    # The LR of step t is oc.lr * lr_factor(t, ...), set before every update: a function of (step, config),
    # never carried in optimizer or checkpoint state, so a resume with a new schedule applies it at once.
    peak_lr, warmup, total = lr_schedule(cfg.to_dict())
    torch.manual_seed(tc.seed + 1 + d.rank)  # dropout differs per rank

    # -- resume --------------------------------------------------------------------------------
    step, position, nonfinite_total = 0, 0, 0
    found = _find_checkpoint(out_dir, resume, log)
    if found is not None:
        path, state = found
        saved = ModelConfig(**state["config"]["model"])  # older checkpoints: newer fields take their defaults
        if replace(saved, attention=cfg.model.attention) != cfg.model:  # the kernel may change
            raise ValueError(f"{path}: the checkpoint's model config differs from this run's --config/--set")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # its stored lr is stale by design: overwritten each step
        step, position, nonfinite_total = state["step"], state["data"]["next_batch"], state["nonfinite"]
        if (old := lr_schedule(state["config"])) != (peak_lr, warmup, total):
            log.info(
                f"LR schedule changed on resume: peak {old[0]:g} -> {peak_lr:g}, warm-up {old[1]} -> {warmup}, "
                f"zero at step {old[2]} -> {total}; step {step + 1} runs at "
                f"lr {peak_lr * lr_factor(step, warmup, total):.6g} (the new schedule)"
            )
        cfg.data.vocab_sha256 = cfg.data.vocab_sha256 or state["vocab_sha256"]  # shards must match the run
        if state["world_size"] == d.world:
            checkpoint.set_rng_state(state["rng"][d.rank])
        else:
            log.info(f"world size changed {state['world_size']} -> {d.world}: dropout RNG reseeded (not bit-exact)")
            torch.manual_seed(tc.seed + 1 + d.rank + 1_000_003 * step)
        log.info(f"resumed from {path} at step {step}, data position {position}")
    elif resume == "never" and checkpoint.ckpt_dir(out_dir).is_dir() and any(checkpoint.ckpt_dir(out_dir).glob("*.pt")):
        raise FileExistsError(f"{out_dir} already has checkpoints: pass --resume auto to continue, or a fresh --out")
    elif init_from is not None:  # a fresh run starting from transformers weights (checked against the shards' vocab)
        from trainer.hf import load_hf_weights

        report = load_hf_weights(model, init_from, vocab_sha256=read_manifest(data_dir).vocab_sha256)
        log.info(report.summary())

    # -- data ----------------------------------------------------------------------------------
    stream = BlockStream(
        data_dir, cfg.data, max_len=cfg.model.max_position, max_sbo_targets=cfg.model.max_sbo_targets,
        seed=tc.seed, rank=d.rank, world=d.world, start=position, sbo=cfg.model.use_sbo, grad_accum=tc.grad_accum,
    )
    if stream.vocab.size != cfg.model.vocab_size:
        raise ValueError(f"model.vocab_size {cfg.model.vocab_size} != the shards' vocabulary size {stream.vocab.size}")
    batches = iter(build_loader(stream, cfg.data.num_workers, pin_memory=d.device.type == "cuda"))
    if d.main:
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        # Keep the vocabulary with the run, so `python -m trainer.export RUN_DIR OUT` needs no --data.
        tokenizer = stream.shards.manifest.tokenizer_path
        shutil.copyfile(tokenizer, out_dir / tokenizer.name)
        log.info(
            f"{model.num_params() / 1e6:.1f}M parameters, {len(stream.shards)} blocks, world {d.world}, "
            f"grad_accum {tc.grad_accum}, device {d.device}"
        )

    # -- wrap: DDP, then compile ---------------------------------------------------------------
    net: nn.Module = model
    if d.world > 1:  # gradients live in DDP's buckets (no copy); bucket size: docs/trainer.md "DDP notes"
        net = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                  gradient_as_bucket_view=True, bucket_cap_mb=tc.ddp_bucket_mb)
    compiled = use_compile(tc.compile, d.device)
    if compiled:
        net = compile_model(net)
    bf16 = tc.precision == "bf16" or (tc.precision == "auto" and d.device.type == "cuda")
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=bf16)

    stop = {"flag": 0.0}
    old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=1.0))
    deadline = time.monotonic() + tc.max_minutes * 60 if tc.max_minutes > 0 else math.inf

    def save() -> None:
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "data": {"next_batch": position}, "rng": _gather_rng(d), "config": cfg.to_dict(),
            "vocab_sha256": stream.vocab.sha256, "world_size": d.world, "nonfinite": int(nonfinite[0]),
        }
        if d.main:
            checkpoint.save(out_dir, step, state, tc.keep_last)

    # -- the loop ------------------------------------------------------------------------------
    # No host sync per step: a non-finite step is skipped on the device (fused AdamW's found_inf) and
    # counted there; the stop flag, the counters and the metrics are read every log_every steps, at the
    # same step on every rank (one sync per log_every steps).
    peak = _peak_flops(d.device)
    mask_ratio = cfg.data.masking.mask_ratio
    nonfinite = torch.tensor([float(nonfinite_total), 0.0, 0.0], device=d.device)  # total, in a row, worst in a row
    window, first_step = _Window(), step
    progress = log.progress(step, tc.max_steps)
    try:
        while step < tc.max_steps:
            micro = [next(batches) for _ in range(tc.grad_accum)]
            if time.monotonic() > deadline and not stop["flag"]:
                stop["flag"] = 2.0
            counts = global_counts(micro, d.world, d.device, flag=stop["flag"])
            if step % tc.log_every == 0 and counts[3].item() > 0:  # some rank got SIGTERM / ran out of time
                reason = "train.max_minutes reached" if stop["flag"] == 2.0 else "SIGTERM"
                log.info(f"{reason}: saving step {step} and exiting")
                break
            epoch = int(micro[0]["epoch"][0])
            tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in micro)
            padded = sum(b["input_ids"].numel() for b in micro)
            seqs = sum(len(b["input_ids"]) for b in micro)
            micro = [to_device(b, d.device, compiled) for b in micro]

            lr = peak_lr * lr_factor(step, warmup, total)  # skipped (non-finite) steps still advance the schedule
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums = train_step(net, micro, counts[:3], d.world, autocast)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), oc.clip_grad_norm or math.inf)
            found_inf = _optimizer_step(optimizer, norm)  # identical on every rank: gradients are all-reduced
            nonfinite[0] += found_inf
            nonfinite[1] = (nonfinite[1] + found_inf) * found_inf
            nonfinite[2] = torch.maximum(nonfinite[2], nonfinite[1])
            optimizer.zero_grad(set_to_none=True)
            step += 1
            position += tc.grad_accum * d.world
            window.add(sums, counts[:3], found_inf, tokens * d.world, padded * d.world, seqs * d.world)
            progress.update(1)

            if step % tc.log_every == 0 or step == tc.max_steps:
                m = window.reduce(d)
                skipped_total, in_a_row, worst = (int(x) for x in nonfinite.tolist())
                nonfinite[2] = 0.0
                m.update(step=step, epoch=epoch, lr=lr, grad_norm=float(norm), nonfinite_total=skipped_total, data_position=position)
                if m["skipped"]:
                    log.info(f"step {step}: {m['skipped']} non-finite step(s) since the last log, updates skipped ({in_a_row} in a row)")
                if peak:
                    m["mfu"] = m["tokens_per_s"] * flops_per_token(cfg.model, m["mean_seq_len"], mask_ratio) / (peak * d.world)
                log.metrics(m)
                progress.set_postfix(loss=f"{m['loss']:.3f}")
                if worst >= tc.max_nonfinite_in_a_row:
                    raise RuntimeError(
                        f"stopping at step {step}: {worst} non-finite steps in a row "
                        f"(train.max_nonfinite_in_a_row); lower optim.lr or check the data"
                    )
            if step % tc.ckpt_every == 0 and step < tc.max_steps:
                save()
        if step > first_step:  # at the end and on SIGTERM; a run resumed at its end has nothing new to save
            save()
    finally:
        progress.close()
        log.close()
        signal.signal(signal.SIGTERM, old_handler)
    return {"step": step, "data_position": position, "nonfinite_total": int(nonfinite[0]), "stopped": step < tc.max_steps}


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


def _find_checkpoint(out_dir: Path, resume: str, log: _Logger) -> tuple[Path, dict] | None:
    if resume == "never":
        return None
    if resume == "auto":
        return checkpoint.latest_valid(out_dir, log=log.info)
    return checkpoint.load_run_or_file(resume)  # a step-N.pt, or another run directory's newest


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


class _Window:
    """Metrics summed since the last log line; reduced over ranks only when logging."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.tokens, self.padded, self.seqs, self.t0 = 0, 0, 0, time.perf_counter()

    def add(self, sums: torch.Tensor, counts: torch.Tensor, found_inf: torch.Tensor, tokens: int, padded: int, seqs: int) -> None:
        row = torch.cat([sums, counts.to(sums.dtype), found_inf.to(sums.dtype)[None]])  # local sums, global counts, skipped
        self.sums = row if self.sums is None else self.sums + row
        self.tokens += tokens
        self.padded += padded
        self.seqs += seqs

    def reduce(self, d: Dist) -> dict[str, Any]:
        s = self.sums
        if d.world > 1:
            s = s.clone()
            dist.all_reduce(s[:6])
        s = s.cpu().numpy()
        elapsed = time.perf_counter() - self.t0
        m: dict[str, Any] = {}
        loss = 0.0
        for k, o in enumerate(OBJECTIVES):
            n = s[6 + k]
            if n > 0:
                m[f"{o}_loss"] = s[2 * k] / n
                m[f"{o}_acc"] = s[2 * k + 1] / n
                loss += s[2 * k] / n
        m["loss"] = loss
        m["tokens_per_s"] = self.tokens / elapsed
        m["padded_tokens_per_s"] = self.padded / elapsed
        m["mean_seq_len"] = self.padded / max(1, self.seqs)
        m = {k: float(v) for k, v in m.items()}
        m["skipped"] = int(s[9])  # non-finite steps (updates skipped) in this window
        self.__init__()
        return m


class _Logger:
    """Rank 0 only: tqdm progress bar, metrics.jsonl and TensorBoard scalars in the run directory."""

    def __init__(self, out_dir: Path, main: bool):
        self.main, self.out_dir = main, out_dir
        self._jsonl = open(out_dir / "metrics.jsonl", "a") if main else None  # noqa: SIM115 - closed in close()
        self._tb = None

    def info(self, msg: str) -> None:
        if self.main:
            print(f"[trainer] {msg}", file=sys.stderr, flush=True)

    def progress(self, initial: int, total: int):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, disable=not self.main, dynamic_ncols=True, desc="train")

    def metrics(self, m: dict[str, Any]) -> None:
        if not self.main:
            return
        self._jsonl.write(json.dumps(m) + "\n")
        self._jsonl.flush()
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"))
        for k, v in m.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
                self._tb.add_scalar(f"train/{k}", v, m["step"])

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()

