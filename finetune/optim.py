"""Fine-tuning optimizers: AdamW (torch, bias-corrected, global clipping) and the reference's BertAdam.

BertAdam (pytorch_pretrained_bert/optimization.py of facebookresearch/SpanBERT, BERT's Adam): no bias
correction, ε 1e-6 added outside the square root, every parameter's gradient clipped to norm 1.0 on its
own, decoupled weight decay inside the learning-rate product (update = m / (√v + ε) + wd · p), weight
decay 0.01 except on biases and LayerNorm. The learning-rate schedule is the caller's (LambdaLR sets each
group's lr), so both optimizers share trainer.dist.lr_factor.
"""

from __future__ import annotations

import enum

import torch
from torch import nn

from trainer.model import decay_groups


class OptimizerKind(enum.Enum):
    ADAMW = "adamw"
    BERTADAM = "bertadam"


class BertAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "max_grad_norm": max_grad_norm})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["max_grad_norm"] > 0:  # per parameter, as the reference (not over the model)
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
                g = p.grad
                state = self.state[p]
                if not state:
                    state["next_m"], state["next_v"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["next_m"], state["next_v"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = m / (v.sqrt() + group["eps"])  # no bias correction
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


def build_optimizer(kind: OptimizerKind, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Weight decay on matrices and embeddings, none on biases / LayerNorm, for both kinds."""
    groups = decay_groups(model, weight_decay)
    if kind is OptimizerKind.BERTADAM:
        return BertAdam(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)


def clips_per_parameter(kind: OptimizerKind) -> bool:
    """BertAdam clips inside step(); AdamW needs the loop's global clip."""
    return kind is OptimizerKind.BERTADAM
