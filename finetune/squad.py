"""`python -m finetune squad`: fine-tune on a SQuAD 1.1 / 2.0 train file, decode and score the dev file.

The paper's recipe (Appendix B) is the default: max_seq_length 512, stride 128, max query 64, 4 epochs,
batch 32, AdamW with lr 2e-5, 10% linear warm-up then linear decay. `--lr` takes several values (the
paper picks from 5e-6, 1e-5, 2e-5, 3e-5, 5e-5): each gets a fresh model from the same pre-trained
weights and seed, its own `lr-<value>/` directory, and the best one (dev F1; for 2.0 the official
best_f1) is copied to the top of --out.

Under torchrun every rank takes a slice of each global batch (gloo on CPU, NCCL + bf16 on GPU); the
loss is the global sum over the batch divided by the global batch size, so the gradient does not depend
on the number of ranks. On CPU the same seed gives the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from contract.tokenizer import Vocabulary, load_tokenizer
from finetune.data import SquadSet, load_squad
from finetune.decode import DecodeConfig, Decoded, decode
from finetune.evaluate_squad import Scored, missing_note, score_v1, score_v2
from finetune.features import FeatureConfig, Features, build_features, collate
from finetune.model import (
    BertForQuestionAnswering,
    Pretrained,
    build_model,
    export_qa,
    load_pretrained,
    qa_loss,
)
from trainer.model import decay_groups
from trainer.train import Dist, lr_factor, setup_dist, teardown_dist

PAPER_LRS = (5e-6, 1e-5, 2e-5, 3e-5, 5e-5)


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the result; written to config.json."""

    model: str
    train: str
    dev: str
    version: str | None = None
    lrs: tuple[float, ...] = (2e-5,)
    epochs: float = 4.0
    max_steps: int = 0  # > 0: stop after this many optimizer steps (short runs)
    batch_size: int = 32  # global, over every rank
    warmup: float = 0.1  # share of the steps
    weight_decay: float = 0.01  # BERT's fine-tuning value; not on biases / LayerNorm
    clip_norm: float = 1.0
    seed: int = 1
    eval_batch_size: int = 64
    features: FeatureConfig = FeatureConfig()
    decoding: DecodeConfig = DecodeConfig()
    vocab: str | None = None
    data: str | None = None
    max_minutes: float = 0.0  # > 0: also stop training after this much wall time per --lr value
    save_model: bool = False


@dataclass(frozen=True)
class LrResult:
    lr: float
    steps: int
    metrics: dict[str, float | int]
    missing: int

    def key(self, version: str) -> float:
        return float(self.metrics["best_f1" if version == "2.0" and "best_f1" in self.metrics else "f1"])


def run(cfg: FinetuneConfig, out: Path) -> dict[str, Any]:
    d = setup_dist()
    try:
        summary = _run(cfg, out, d)
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    teardown_dist()
    return summary


def _log(d: Dist, msg: str) -> None:
    if d.main:
        print(f"[finetune] {msg}", file=sys.stderr, flush=True)


def _run(cfg: FinetuneConfig, out: Path, d: Dist) -> dict[str, Any]:
    if cfg.batch_size % d.world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {d.world} ranks")
    pre = load_pretrained(cfg.model, cfg.vocab, cfg.data)
    if pre.cfg.max_position < cfg.features.max_seq_length:
        raise ValueError(f"{cfg.model}: max_position {pre.cfg.max_position} < --max-seq-length {cfg.features.max_seq_length}")
    tok = load_tokenizer(pre.vocab.path)
    train_set = load_squad(cfg.train, cfg.version)
    dev_set = load_squad(cfg.dev, cfg.version or train_set.version)
    if dev_set.version != train_set.version:
        raise ValueError(f"{cfg.dev}: SQuAD {dev_set.version}, but {cfg.train} is {train_set.version}; pass --version")
    t0 = time.perf_counter()
    train_feats = build_features(train_set, tok, cfg.features, training=True)
    dev_feats = build_features(dev_set, tok, cfg.features, training=False)
    _log(d, f"SQuAD {train_set.version}: train {len(train_set.questions)} questions -> {len(train_feats)} windows, "
            f"dev {len(dev_set.questions)} -> {len(dev_feats)} ({time.perf_counter() - t0:.1f} s); "
            f"model {pre.source}, world {d.world}, device {d.device}")
    per_epoch = math.ceil(len(train_feats) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * per_epoch))
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(
            {**dataclasses.asdict(cfg), "version": train_set.version, "total_steps": total, "world_size": d.world,
             "vocab_sha256": pre.vocab.sha256, "model_config": dataclasses.asdict(pre.cfg),
             "train_windows": len(train_feats), "dev_windows": len(dev_feats)}, indent=2) + "\n", encoding="utf-8")
        (out / "metrics.jsonl").unlink(missing_ok=True)
    pad = Vocabulary.of(tok).pad
    results: list[LrResult] = []
    for lr in cfg.lrs:
        model = build_model(pre, cfg.seed).to(d.device)
        steps = _train(model, train_feats, cfg, lr, total, pad, d, out)
        decoded = _predict(model, dev_set, dev_feats, cfg, pad, d)
        if d.main:
            scored = _write_outputs(dev_set, decoded, out / f"lr-{lr:g}")
            results.append(LrResult(lr, steps, scored.metrics, scored.missing))
            best = max(results, key=lambda r: r.key(train_set.version))
            _log(d, f"lr {lr:g}: {json.dumps(scored.metrics)}")
            if best.lr == lr and cfg.save_model:
                export_qa(model.module if isinstance(model, DDP) else model, pre.vocab, out / "model",
                          {"source": pre.source, "lr": lr, "steps": steps})
        del model
    summary: dict[str, Any] = {}
    if d.main:
        best = max(results, key=lambda r: r.key(train_set.version))
        for name in ("predictions.json", "na_prob.json", "eval.json"):
            src = out / f"lr-{best.lr:g}" / name
            if src.is_file():
                shutil.copyfile(src, out / name)
        summary = {"version": train_set.version, "best_lr": best.lr, "best": best.metrics,
                   "lrs": [dataclasses.asdict(r) for r in results]}
        (out / "lr_sweep.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        for r in results:
            _log(d, f"lr {r.lr:g} ({r.steps} steps): " + ", ".join(
                f"{k} {v:.2f}" for k, v in r.metrics.items() if k in ("exact_match", "exact", "f1", "best_exact", "best_f1")))
        _log(d, f"best lr {best.lr:g}; wrote {out}/predictions.json, eval.json, lr_sweep.json")
    return summary


def _train(model: BertForQuestionAnswering, feats: Features, cfg: FinetuneConfig, lr: float, total: int,
           pad: int, d: Dist, out: Path) -> int:
    """`total` optimizer steps of global batch cfg.batch_size; returns the steps taken."""
    net: torch.nn.Module = DDP(model) if d.world > 1 else model
    opt = torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-6)
    warmup = int(cfg.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" else contextlib.nullcontext())
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    net.train()
    from tqdm import tqdm

    bar = tqdm(total=total, disable=not d.main, dynamic_ncols=True, desc=f"squad lr {lr:g}", file=sys.stderr)
    t_start = time.perf_counter()
    step = 0
    with open(out / "metrics.jsonl", "a", encoding="utf-8") if d.main else contextlib.nullcontext() as metrics:
        while step < total:
            if len(order) < cfg.batch_size:  # a new epoch: every window once, in a seeded order
                order += torch.randperm(len(feats), generator=gen).tolist()
            glob, order = order[: cfg.batch_size], order[cfg.batch_size:]
            mine = glob[d.rank::d.world]
            batch = {k: v.to(d.device) for k, v in collate([feats.windows[i] for i in mine], pad).items()}
            with autocast:
                start, end = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss = qa_loss(start, end, batch) / len(glob)
            (loss * d.world).backward()  # DDP averages over ranks; x world makes it the global sum / batch
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
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
                metrics.write(json.dumps({"lr": lr, "step": step, "loss": loss_t.item(), "grad_norm": float(norm),
                                          "lr_now": sched.get_last_lr()[0],
                                          "elapsed_s": round(time.perf_counter() - t_start, 3)}) + "\n")
            if cfg.max_minutes > 0:
                stop = torch.tensor(float(time.perf_counter() - t_start > 60 * cfg.max_minutes), device=d.device)
                if d.world > 1:  # every rank stops at the same step
                    dist.all_reduce(stop, op=dist.ReduceOp.MAX)
                if stop.item():
                    break
    bar.close()
    return step


@torch.no_grad()
def _predict(model: BertForQuestionAnswering, data: SquadSet, feats: Features, cfg: FinetuneConfig, pad: int,
             d: Dist) -> Decoded | None:
    """Logits for every window (ranks take interleaved slices, rank 0 gathers), decoded on rank 0."""
    model.eval()
    mine = list(range(d.rank, len(feats), d.world))
    # Batches of similar length waste less padding; results do not depend on the order.
    mine.sort(key=lambda i: len(feats.windows[i].input_ids))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" else contextlib.nullcontext())
    local: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for b in range(0, len(mine), cfg.eval_batch_size):
        idx = mine[b:b + cfg.eval_batch_size]
        batch = collate([feats.windows[i] for i in idx], pad)
        with autocast:
            start, end = model(batch["input_ids"].to(d.device), batch["attention_mask"].to(d.device),
                               batch["token_type_ids"].to(d.device))
        start, end = start.float().cpu().numpy(), end.float().cpu().numpy()
        for row, i in enumerate(idx):
            n = len(feats.windows[i].input_ids)
            local[i] = (start[row, :n], end[row, :n])
    model.train()
    if d.world > 1:
        parts: list[Any] = [None] * d.world
        dist.all_gather_object(parts, local)
        local = {k: v for p in parts for k, v in p.items()}
    if not d.main:
        return None
    order = range(len(feats))
    return decode(data, feats, [local[i][0] for i in order], [local[i][1] for i in order], cfg.decoding)


def _write_outputs(data: SquadSet, decoded: Decoded, out: Path) -> Scored:
    out.mkdir(parents=True, exist_ok=True)
    _dump(out / "predictions.json", decoded.predictions)
    if decoded.na_probs is not None:
        _dump(out / "na_prob.json", decoded.na_probs)
        scored = score_v2(data, decoded.predictions, decoded.na_probs)
    else:
        scored = score_v1(data, decoded.predictions)
    if scored.missing:  # cannot happen for our own predictions; say so if it ever does
        print(f"[finetune] {missing_note(scored.missing, data.version)}", file=sys.stderr)
    _dump(out / "eval.json", scored.metrics)
    return scored


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


__all__ = ["PAPER_LRS", "FinetuneConfig", "Pretrained", "run"]
