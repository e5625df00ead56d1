"""The shared fine-tuning loop: evaluation points, the best evaluation kept (files and weights), the
(batch size, lr) grid; BertAdam against the reference's update re-computed by hand; SQuAD 2.0's
dev-tuned null threshold applied to the written predictions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from squad_fixtures import V2
from torch import nn

from finetune.data import load_squad
from finetune.decode import Decoded
from finetune.evaluate_squad import score_v2
from finetune.loop import Evaluation, LoopConfig, Task, eval_steps, run_grid
from finetune.optim import BertAdam, OptimizerKind, build_optimizer
from finetune.squad import score_squad_run
from trainer.dist import Dist


@pytest.mark.parametrize("every, per_epoch, total, expected", [
    (0, 10, 25, [25]),                 # at the end only
    (0.2, 10, 25, [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25]),  # 5 per epoch, and the last step
    (0.5, 3, 6, [2, 4, 6]),            # round(1.5) = 2 steps
    (7, 10, 21, [7, 14, 21]),          # every 7 steps; the last is one of them
])
def test_eval_steps(every, per_epoch, total, expected):
    assert eval_steps(every, per_epoch, total) == expected


class _Scripted:
    """A task whose evaluations return scripted keys, remembering the weights at each evaluation."""

    def __init__(self, keys):
        self.keys, self.calls, self.states = list(keys), 0, []

    def task(self) -> Task:
        def build(seed):
            torch.manual_seed(seed)
            return nn.Linear(3, 1)

        def evaluate(model):
            key = self.keys[self.calls]
            self.calls += 1
            self.states.append({k: v.clone() for k, v in model.state_dict().items()})
            return Evaluation({"f1": key}, key, {"eval.json": json.dumps({"f1": key}), "n.txt": str(self.calls)})

        def export(model, where):
            where.mkdir(parents=True)
            torch.save(model.state_dict(), where / "w.pt")

        x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
        return Task("scripted", 12, build, lambda idx: {"x": x[idx]}, lambda net, b: net(b["x"]).pow(2).sum(), evaluate, export)


def test_the_best_evaluation_keeps_its_files_and_weights_across_the_grid(tmp_path):
    # 2 batch sizes x 2 lrs, 3 evaluations each (steps 2, 4, 6); the overall best is cell 3's second evaluation.
    keys = [1, 5, 2,  0, 1, 1,  3, 9, 4,  9, 2, 2]
    s = _Scripted(keys)
    cfg = LoopConfig(lrs=(1e-2, 1e-1), batch_sizes=(4, 6), max_steps=6, eval_every=2, save_model=True, warmup=0)
    summary = run_grid(s.task(), cfg, tmp_path, Dist())
    assert [(c["batch_size"], c["lr"], c["best_step"]) for c in summary["lrs"]] == [(4, 1e-2, 4), (4, 1e-1, 4), (6, 1e-2, 4), (6, 1e-1, 2)]
    assert summary["best_batch_size"] == 6 and summary["best_lr"] == 1e-2 and summary["best"] == {"f1": 9}  # first of the tied 9s
    assert (tmp_path / "n.txt").read_text() == "8" and (tmp_path / "bs-6-lr-0.01" / "n.txt").read_text() == "8"
    assert (tmp_path / "bs-4-lr-0.1" / "n.txt").read_text() == "5"  # keys 0, 1, 1: the first 1 keeps the tie
    saved = torch.load(tmp_path / "model" / "w.pt")
    assert all(torch.equal(saved[k], s.states[7][k]) for k in saved)  # the best evaluation's weights, not the last
    assert not torch.equal(saved["weight"], s.states[8]["weight"])
    lines = [json.loads(x) for x in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 24


def _reference_bertadam(p, grads, lr, wd, b1=0.9, b2=0.999, eps=1e-6, clip=1.0):
    """The reference's BertAdam.step (pytorch_pretrained_bert/optimization.py), re-written in numpy."""
    p = p.astype(np.float64).copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        g = g.astype(np.float64)
        norm = np.sqrt((g ** 2).sum())
        if norm > clip:
            g = g * clip / (norm + 1e-6)  # clip_grad_norm_'s coefficient
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        update = m / (np.sqrt(v) + eps) + wd * p
        p = p - lr * update
    return p


def test_bertadam_is_the_reference_update():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) * s for s in (0.1, 5.0, 0.3)]  # the second is clipped
    w = nn.Parameter(torch.tensor(p0))
    opt = BertAdam([{"params": [w], "weight_decay": 0.01}], lr=1e-2)
    for g in grads:
        w.grad = torch.tensor(g)
        opt.step()
    assert w.detach().numpy() == pytest.approx(_reference_bertadam(p0, grads, 1e-2, 0.01), abs=1e-9)


def test_bertadam_first_step_has_no_bias_correction_and_clips_each_parameter_alone():
    big, small = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = BertAdam([{"params": [big, small], "weight_decay": 0.0}], lr=1.0)
    big.grad, small.grad = torch.tensor([100.0]), torch.tensor([0.5])
    opt.step()
    # m = 0.1 g, v = 0.001 g^2: the step is 0.1 / sqrt(0.001) = 3.162 lr (AdamW's bias correction: 1.0 lr).
    assert big.item() == pytest.approx(-0.1 / math.sqrt(0.001), rel=1e-4)
    assert small.item() == pytest.approx(-0.1 / math.sqrt(0.001), rel=1e-4)
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    groups = build_optimizer(OptimizerKind.BERTADAM, model, 1e-3, 0.01).param_groups
    assert [(g["weight_decay"], len(g["params"])) for g in groups] == [(0.01, 1), (0.0, 3)]  # bias, LayerNorm: none


def test_squad2_tuned_threshold_is_applied_and_equals_the_sweeps_best():
    data = load_squad(V2)
    rng = np.random.default_rng(3)
    # Wrong spans are a word that does not normalise to "": the official sweep charges an unanswerable question
    # for any non-empty raw prediction, the scorer does not when it normalises to "" (e.g. "The").
    spans = {q.qid: (q.answers[0].text if q.answers and rng.random() < 0.6 else "zebra") for q in data.questions}
    # an informative but noisy null score: lower for answerable questions
    na = {q.qid: float(rng.normal(1.0 if q.is_impossible else -1.0, 1.5)) for q in data.questions}
    decoded = Decoded({k: "" if na[k] > 0 else t for k, t in spans.items()}, na, spans)
    ev = score_squad_run(data, decoded)
    m, t = ev.metrics, ev.metrics["null_threshold"]
    written = json.loads(ev.files["predictions.json"])
    assert all((written[k] == "") == (na[k] > t) or spans[k] == "" for k in written)
    sweep = score_v2(data, spans, na).metrics  # the official sweep over the raw spans
    assert t == sweep["best_f1_thresh"] and m["f1"] == pytest.approx(sweep["best_f1"])
    assert m["zero_threshold"]["f1"] == pytest.approx(score_v2(data, decoded.predictions).metrics["f1"])
    assert m["f1"] > m["zero_threshold"]["f1"] and t != 0.0  # the tuned threshold helps on this data
    assert json.loads(ev.files["eval.json"]) == m and ev.key == m["f1"]
