"""`python -m finetune squad` and `python -m finetune mrqa`: fine-tune on a train file, decode and score
the dev file, through finetune.loop (the grid, dev scoring during training, the best kept).

The paper's recipe (Appendix B) is the default: max_seq_length 512, stride 128, max query 64, 4 epochs,
batch 32, lr 2e-5, 10% linear warm-up then linear decay. SQuAD 2.0 as the reference's run_squad.py: the
null threshold that maximises dev F1 (the official sweep over the best non-null spans) is applied to the
written predictions; eval.json has the official metrics of those predictions, the threshold, and the
zero-threshold figures. MRQA as run_mrqa.py: the best span, never null, scored by the MRQA scorer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from contract.rundir import RunLock
from contract.tokenizer import Vocabulary, load_tokenizer
from finetune.data import SquadSet, load_squad
from finetune.decode import DecodeConfig, Decoded, decode
from finetune.evaluate_mrqa import score_mrqa
from finetune.evaluate_squad import score_v1, score_v2
from finetune.features import FeatureConfig, Features, build_features, collate
from finetune.loop import Evaluation, LoopConfig, Task, dump, log, run_grid
from finetune.model import (
    BertForQuestionAnswering,
    Pretrained,
    build_model,
    export_qa,
    load_pretrained,
    qa_loss,
)
from finetune.mrqa import MrqaSet, load_mrqa
from trainer.dist import Dist, distributed

PAPER_LRS = (5e-6, 1e-5, 2e-5, 3e-5, 5e-5)
TASKS = ("squad", "mrqa")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the result; written to config.json."""

    model: str
    train: str
    dev: str
    task: str = "squad"  # "squad" (SQuAD JSON) or "mrqa" (gzipped JSONL)
    version: str | None = None  # SQuAD only
    loop: LoopConfig = LoopConfig()
    eval_batch_size: int = 64
    features: FeatureConfig = FeatureConfig()
    decoding: DecodeConfig = DecodeConfig()
    vocab: str | None = None
    data: str | None = None


def run(cfg: FinetuneConfig, out: Path) -> dict[str, Any]:
    with distributed() as d:
        # One writer per --out (contract.rundir): a second fine-tuning run there is refused, naming the holder.
        lock = RunLock(out, "fine-tuning directory", lambda msg: log(d, cfg.task, msg)).acquire() if d.main else None
        try:
            return _run(cfg, out, d)
        finally:
            if lock is not None:
                lock.release()


def _load(cfg: FinetuneConfig) -> tuple[SquadSet, SquadSet, MrqaSet | None]:
    if cfg.task == "mrqa":
        train, dev = load_mrqa(cfg.train, training=True), load_mrqa(cfg.dev, training=False)
        return train.squad, dev.squad, dev
    train_set = load_squad(cfg.train, cfg.version)
    dev_set = load_squad(cfg.dev, cfg.version or train_set.version)
    if dev_set.version != train_set.version:
        raise ValueError(f"{cfg.dev}: SQuAD {dev_set.version}, but {cfg.train} is {train_set.version}; pass --version")
    return train_set, dev_set, None


def _run(cfg: FinetuneConfig, out: Path, d: Dist) -> dict[str, Any]:
    pre = load_pretrained(cfg.model, cfg.vocab, cfg.data)
    if pre.cfg.max_position < cfg.features.max_seq_length:
        raise ValueError(f"{cfg.model}: max_position {pre.cfg.max_position} < --max-seq-length {cfg.features.max_seq_length}")
    tok = load_tokenizer(pre.vocab.path)
    train_set, dev_set, mrqa_dev = _load(cfg)
    t0 = time.perf_counter()
    train_feats = build_features(train_set, tok, cfg.features, training=True)
    dev_feats = build_features(dev_set, tok, cfg.features, training=False)
    what = "MRQA" if cfg.task == "mrqa" else f"SQuAD {train_set.version}"
    log(d, cfg.task, f"{what}: train {len(train_set.questions)} questions -> {len(train_feats)} windows, "
                     f"dev {len(dev_set.questions)} -> {len(dev_feats)} ({time.perf_counter() - t0:.1f} s); "
                     f"model {pre.source}, world {d.world}, device {d.device}")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(dump(
            {**dataclasses.asdict(cfg), "version": train_set.version if cfg.task == "squad" else None,
             "world_size": d.world, "vocab_sha256": pre.vocab.sha256, "model_config": dataclasses.asdict(pre.cfg),
             "train_windows": len(train_feats), "dev_windows": len(dev_feats)}), encoding="utf-8")
    pad = Vocabulary.of(tok).pad

    def evaluate(model: nn.Module) -> Evaluation | None:
        decoded = _predict(model, dev_set, dev_feats, cfg, pad, d)
        if decoded is None:
            return None
        return score_mrqa_run(mrqa_dev, decoded) if mrqa_dev is not None else score_squad_run(dev_set, decoded)

    def export(model: nn.Module, where: Path) -> None:
        export_qa(model, pre.vocab, where, {"source": pre.source, "task": cfg.task})

    task = Task(cfg.task, len(train_feats), lambda seed: build_model(pre, seed),
                lambda idx: collate([train_feats.windows[i] for i in idx], pad),
                lambda net, batch: qa_loss(*net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch),
                evaluate, export)
    summary = run_grid(task, cfg.loop, out, d)
    if d.main:
        summary["version"] = train_set.version if cfg.task == "squad" else None
        (out / "lr_sweep.json").write_text(dump(summary), encoding="utf-8")
    return summary


def score_squad_run(data: SquadSet, decoded: Decoded) -> Evaluation:
    """v1.1: the official metrics. v2.0: the dev-tuned null threshold applied (the reference's run_squad.py):
    the official sweep over the best non-null spans gives best_f1_thresh; predictions.json holds the spans
    with "" where null - best > that threshold; eval.json = the official v2.0 metrics of those predictions
    (what `python -m finetune.evaluate_squad DEV predictions.json` prints) + `null_threshold` +
    `zero_threshold` (the official metrics at threshold 0, with na_prob.json's best_* sweep)."""
    if decoded.na_probs is None:
        scored = score_v1(data, decoded.predictions)
        return Evaluation(scored.metrics, float(scored.metrics["f1"]),
                          {"predictions.json": dump(decoded.predictions), "eval.json": dump(scored.metrics)})
    zero = score_v2(data, decoded.spans, decoded.na_probs, na_prob_thresh=0.0).metrics
    threshold = float(zero["best_f1_thresh"])
    predictions = decoded.at_threshold(threshold)
    metrics = {**score_v2(data, predictions).metrics, "null_threshold": threshold, "zero_threshold": zero}
    return Evaluation(metrics, float(metrics["f1"]), {"predictions.json": dump(predictions),
                                                      "na_prob.json": dump(decoded.na_probs), "eval.json": dump(metrics)})


def score_mrqa_run(data: MrqaSet, decoded: Decoded) -> Evaluation:
    metrics = score_mrqa(data, decoded.predictions).metrics
    return Evaluation(metrics, float(metrics["f1"]),
                      {"predictions.json": dump(decoded.predictions), "eval.json": dump(metrics)})


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


__all__ = ["PAPER_LRS", "TASKS", "FinetuneConfig", "Pretrained", "run"]
