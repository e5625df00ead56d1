"""The fine-tuning loop every task shares (SQuAD, MRQA, TACRED): a grid of (batch size, lr) cells, each a
fresh model from the same pre-trained weights and seed; dev scored during training (`eval_every`) and the
best evaluation of each cell kept (its files in `<cell>/`), the best cell's copied to the top of --out,
its weights exported with `save_model`.

Under torchrun every rank takes a slice of each global batch; the task's loss is a sum over its slice and
is divided by the global batch size, times the world size because DDP averages over ranks, so the
gradient does not depend on the number of ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from finetune.optim import OptimizerKind, build_optimizer, clips_per_parameter
from trainer.dist import Dist, lr_factor


@dataclass(frozen=True)
class LoopConfig:
    """The settings every task shares; written to config.json."""

    lrs: tuple[float, ...] = (2e-5,)
    batch_sizes: tuple[int, ...] = (32,)  # global, over every rank
    epochs: float = 4.0
    max_steps: int = 0  # > 0: stop after this many optimizer steps (short runs)
    warmup: float = 0.1  # share of the steps
    weight_decay: float = 0.01  # not on biases / LayerNorm
    clip_norm: float = 1.0
    optimizer: OptimizerKind = OptimizerKind.ADAMW
    eval_every: float = 0.0  # 0: at the end only; < 1: that fraction of an epoch; >= 1: every N steps
    seed: int = 1
    max_minutes: float = 0.0  # > 0: also stop each cell after this much training time
    save_model: bool = False


@dataclass(frozen=True)
class Evaluation:
    """One scoring of dev: the metrics (eval.json), the selection key, and the files that go with it."""

    metrics: dict[str, Any]
    key: float  # higher is better (dev F1)
    files: dict[str, str]  # file name -> text (eval.json included)


@dataclass
class Task:
    """What a task gives the loop. `evaluate` runs on every rank and returns the Evaluation on rank 0
    (None elsewhere); `loss` is the summed loss of a batch slice."""

    name: str
    n_train: int
    build_model: Callable[[int], nn.Module]  # seed -> a fresh model
    collate: Callable[[list[int]], dict[str, Tensor]]  # training item indices -> batch
    loss: Callable[[nn.Module, dict[str, Tensor]], Tensor]
    evaluate: Callable[[nn.Module], Evaluation | None]
    export: Callable[[nn.Module, Path], None]  # the model (bare, fine-tuned) -> a transformers directory


@dataclass
class CellResult:
    lr: float
    batch_size: int
    steps: int
    best_step: int
    metrics: dict[str, Any]
    evals: list[dict[str, float]] = field(default_factory=list)  # every evaluation: step, key

    single_batch_size: bool = True  # then cells are named by lr alone

    @property
    def name(self) -> str:
        return f"lr-{self.lr:g}" if self.single_batch_size else f"bs-{self.batch_size}-lr-{self.lr:g}"

    @property
    def best_key(self) -> float:
        return max((e["key"] for e in self.evals), default=-math.inf)


def eval_steps(eval_every: float, per_epoch: int, total: int) -> list[int]:
    """The optimizer steps after which dev is scored; the last step always is."""
    if eval_every <= 0:
        return [total]
    interval = max(1, round(eval_every * per_epoch)) if eval_every < 1 else int(eval_every)
    return sorted({*range(interval, total + 1, interval), total})


def log(d: Dist, task: str, msg: str) -> None:
    if d.main:
        print(f"[finetune {task}] {msg}", file=sys.stderr, flush=True)


def run_grid(task: Task, cfg: LoopConfig, out: Path, d: Dist) -> dict[str, Any]:
    """Every (batch size, lr) cell; returns (and on rank 0 writes) the summary, lr_sweep.json."""
    for b in cfg.batch_sizes:
        if b % d.world:
            raise ValueError(f"--batch-size {b} is not divisible by the {d.world} ranks")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "evals.jsonl"):
            (out / name).unlink(missing_ok=True)
    results: list[CellResult] = []
    best_state: dict[str, Tensor] | None = None
    for bs in cfg.batch_sizes:
        for lr in cfg.lrs:
            cell = CellResult(lr, bs, 0, 0, {}, single_batch_size=len(cfg.batch_sizes) == 1)
            overall = max((r.best_key for r in results), default=-math.inf)
            model = task.build_model(cfg.seed).to(d.device)
            state = _train_cell(task, model, cfg, cell, out, d, beat=overall)
            if state is not None:
                best_state = state
            results.append(cell)
            del model
    summary: dict[str, Any] = {}
    if d.main:
        best = max(results, key=lambda r: r.best_key)  # the first cell keeps a tie
        for src in (out / best.name).iterdir():
            if src.is_file():
                shutil.copyfile(src, out / src.name)
        summary = {"task": task.name, "best_lr": best.lr, "best_batch_size": best.batch_size, "best_step": best.best_step,
                   "best": best.metrics, "lrs": [{k: v for k, v in dataclasses.asdict(r).items() if k != "single_batch_size"}
                                                 for r in results]}
        (out / "lr_sweep.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        for r in results:
            log(d, task.name, f"{r.name} ({r.steps} steps, best at step {r.best_step}): {json.dumps(r.metrics)}")
        if cfg.save_model and best_state is not None:
            model = task.build_model(cfg.seed)
            model.load_state_dict(best_state)
            task.export(model, out / "model")
        log(d, task.name, f"best: batch {best.batch_size}, lr {best.lr:g}, step {best.best_step}; wrote {out}")
    return summary


def _train_cell(task: Task, model: nn.Module, cfg: LoopConfig, cell: CellResult, out: Path, d: Dist,
                beat: float) -> dict[str, Tensor] | None:
    """Train one cell, scoring dev at eval_steps; the cell's best evaluation's files go to out/<cell>/.
    Returns a CPU copy of the weights when an evaluation beat `beat` (the best of the earlier cells)
    and save_model is on, else None."""
    net: nn.Module = DDP(model) if d.world > 1 else model
    opt = build_optimizer(cfg.optimizer, model, cell.lr, cfg.weight_decay)
    bs = cell.batch_size
    per_epoch = math.ceil(task.n_train / bs)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * per_epoch))
    warmup = int(cfg.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    when = set(eval_steps(cfg.eval_every, per_epoch, total))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" else contextlib.nullcontext())
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    best_state: dict[str, Tensor] | None = None
    cell_dir = out / cell.name
    net.train()
    from tqdm import tqdm

    bar = tqdm(total=total, disable=not d.main, dynamic_ncols=True, desc=f"{task.name} {cell.name}", file=sys.stderr)
    t_start, eval_s = time.perf_counter(), 0.0
    step = 0
    with open(out / "metrics.jsonl", "a", encoding="utf-8") if d.main else contextlib.nullcontext() as metrics:
        while step < total:
            if len(order) < bs:  # a new epoch: every item once, in a seeded order
                order += torch.randperm(task.n_train, generator=gen).tolist()
            glob, order = order[:bs], order[bs:]
            batch = {k: v.to(d.device) for k, v in task.collate(glob[d.rank::d.world]).items()}
            with autocast:
                loss = task.loss(net, batch) / len(glob)
            (loss * d.world).backward()  # DDP averages over ranks; x world makes it the global sum / batch
            norm = (torch.tensor(float("nan")) if clips_per_parameter(cfg.optimizer)
                    else torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            loss_t = loss.detach().clone()
            if d.world > 1:
                dist.all_reduce(loss_t)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_t.item():.3f}")
            if metrics is not None:
                metrics.write(json.dumps({"lr": cell.lr, "batch_size": bs, "step": step, "loss": loss_t.item(),
                                          "grad_norm": float(norm), "lr_now": sched.get_last_lr()[0],
                                          "elapsed_s": round(time.perf_counter() - t_start, 3)}) + "\n")
            stop = False
            if cfg.max_minutes > 0:
                trained = time.perf_counter() - t_start - eval_s  # dev evaluations do not count
                flag = torch.tensor(float(trained > 60 * cfg.max_minutes), device=d.device)
                if d.world > 1:  # every rank stops at the same step
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if step in when or stop:
                t_eval = time.perf_counter()
                ev = task.evaluate(model)
                eval_s += time.perf_counter() - t_eval
                net.train()
                if ev is not None and _keep(task.name, cell, ev, step, cell_dir, out, d):
                    if cfg.save_model and ev.key > beat:
                        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                        beat = ev.key
            if stop:
                break
    bar.close()
    cell.steps = step
    return best_state


def _keep(task: str, cell: CellResult, ev: Evaluation, step: int, cell_dir: Path, out: Path, d: Dist) -> bool:
    """Record an evaluation (rank 0); True when it is the cell's best so far (its files are then written)."""
    best = cell.best_key
    cell.evals.append({"step": step, "key": ev.key})
    with open(out / "evals.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"lr": cell.lr, "batch_size": cell.batch_size, "step": step, "metrics": ev.metrics}) + "\n")
    log(d, task, f"{cell.name} step {step}: key {ev.key:.3f}")
    if ev.key <= best:  # an earlier evaluation keeps a tie
        return False
    cell.best_step, cell.metrics = step, ev.metrics
    cell_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ev.files.items():
        (cell_dir / name).write_text(text, encoding="utf-8")
    return True


def _enum_value(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dump(obj: Any) -> str:
    """Indented JSON with a final newline; enums as their values (config.json)."""
    return json.dumps(obj, indent=2, default=_enum_value) + "\n"
