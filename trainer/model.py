"""SpanBERT: a BERT encoder with the masked-LM head, the span boundary objective (SBO) head and, for
the bi-sequence baselines only, the NSP head. Read top to bottom.

Module and parameter names follow HF transformers' `BertForPreTraining` (bert.embeddings.word_embeddings,
bert.encoder.layer.N.attention.self.query, cls.predictions.transform.dense, ...), so exporting to / importing
from HF is a rename-free state-dict copy; only the SBO head (`cls.sbo.*`) has no HF counterpart.

Both heads run only at masked positions: the batch carries fixed-size slots of positions (padded with
label -100), we gather those hidden states and never build a [batch, seq, vocab] logit tensor.

Padded batches can run *unpadded* (model.attention, "auto" = on CUDA): the real tokens are packed into
one [tokens, hidden] tensor (the collator sends their flat indices and cumulative lengths), every
layer works on real tokens only, and attention is the variable-length flash kernel; no padding is
computed and SDPA never needs a mask. That kernel is a private torch op: trainer/selfcheck.py checks it
against padded SDPA before step 1 and, under "auto", falls back to the padded path if it fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.config import ModelConfig
from trainer.data.collate import IGNORE  # the label of an unused slot, defined with the Batch

OBJECTIVES = ("mlm", "sbo", "nsp")  # the heads; metrics are named <objective>_loss / _acc


@dataclass(frozen=True)
class Packing:
    """Where a padded [batch, seq_len] batch's real tokens sit once packed (from the collator)."""

    token_index: Tensor  # [tokens] flat indices into the [batch * seq_len] grid
    cu_seqlens: Tensor  # [batch + 1] int32 cumulative sequence lengths
    mask: Tensor  # [batch, 1, 1, seq_len] bool, for the reference kernel
    seq_len: int  # the padded width: an upper bound of every length (flash's max_seqlen)


def flash_op():
    """torch's private variable-length flash op (what nested-tensor SDPA calls; torch >= 2.2, with dropout and
    autograd, unlike torch.nn.attention.varlen, which has no dropout), or None where this torch lacks it.
    Its signature has changed between releases: trainer/selfcheck.py checks it before step 1."""
    return getattr(torch.ops.aten, "_flash_attention_forward", None)


def flash_call(q: Tensor, k: Tensor, v: Tensor, p: Packing, dropout_p: float) -> tuple[tuple, dict]:
    """The op's (positional, keyword) arguments: the one place they are spelled, so the self-check and the
    tests bind exactly these to the op's schema (torch 2.11 and 2.13, tests/fixtures/torch-schemas/)."""
    cu = p.cu_seqlens  # (query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal, return_debug_mask)
    return (q, k, v, cu, cu, p.seq_len, p.seq_len, dropout_p, False, False), {}


def flash_varlen_attention(q: Tensor, k: Tensor, v: Tensor, p: Packing, dropout_p: float) -> Tensor:
    """Packed [tokens, heads, head_dim] q/k/v through the flash kernel (CUDA, fp16/bf16); output 0 of the op."""
    args, kwargs = flash_call(q, k, v, p, dropout_p)
    return flash_op()(*args, **kwargs)[0]


def padded_attention(q: Tensor, k: Tensor, v: Tensor, p: Packing, dropout_p: float) -> Tensor:
    """The same attention by the padded route: back onto the [batch, seq] grid, masked SDPA, packed again.
    The reference the flash kernel is checked against, and the kernel off CUDA / in fp32 (no speed)."""
    b = len(p.cu_seqlens) - 1

    def grid(t: Tensor) -> Tensor:
        return t.new_zeros(b * p.seq_len, *t.shape[1:]).index_copy(0, p.token_index, t).view(b, p.seq_len, *t.shape[1:]).transpose(1, 2)

    y = F.scaled_dot_product_attention(grid(q), grid(k), grid(v), attn_mask=p.mask, dropout_p=dropout_p)
    return y.transpose(1, 2).reshape(b * p.seq_len, *q.shape[1:]).index_select(0, p.token_index)


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, p: Packing, dropout_p: float) -> Tensor:
    """Attention of packed [tokens, heads, head_dim] q/k/v, each sequence attending only to itself."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return flash_varlen_attention(q, k, v, p, dropout_p)
    return padded_attention(q, k, v, p, dropout_p)


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None, packing: Packing | None = None) -> Tensor:
        seq_len = input_ids.shape[1]
        if packing is None:
            x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:seq_len]
        else:  # only the real tokens: [tokens, hidden]; a token's position is its column in the grid
            idx = packing.token_index
            input_ids = input_ids.reshape(-1).index_select(0, idx)
            token_type_ids = None if token_type_ids is None else token_type_ids.reshape(-1).index_select(0, idx)
            x = self.word_embeddings(input_ids) + self.position_embeddings(idx % seq_len)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]  # single-sequence mode: every token is segment A
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_dropout

    def forward(self, x: Tensor, attn_mask: Tensor | Packing | None) -> Tensor:
        # One GEMM for q, k and v: the weights stay three HF-named Linears, concatenated on the fly.
        w = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        qkv = F.linear(x, w, bias)
        dropout_p = self.dropout_p if self.training else 0.0
        if isinstance(attn_mask, Packing):  # x is [tokens, hidden]
            q, k, v = qkv.view(-1, 3, self.num_heads, self.head_dim).unbind(1)
            return varlen_attention(q, k, v, attn_mask, dropout_p).reshape(x.shape)
        b, s, h = x.shape
        q, k, v = qkv.view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        return y.transpose(1, 2).reshape(b, s, h)


class DenseLayerNorm(nn.Module):
    """dense -> dropout -> residual add -> LayerNorm (post-LN, as BERT). HF: *.output."""

    def __init__(self, d_in: int, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseLayerNorm(cfg.hidden_size, cfg)

    def forward(self, x: Tensor, attn_mask: Tensor | Packing | None) -> Tensor:
        return self.output(self.self(x, attn_mask), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact erf GeLU, as BERT


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseLayerNorm(cfg.intermediate_size, cfg)

    def forward(self, x: Tensor, attn_mask: Tensor | Packing | None) -> Tensor:
        x = self.attention(x, attn_mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: Tensor, attn_mask: Tensor | Packing | None) -> Tensor:
        for layer in self.layer:
            x = layer(x, attn_mask)
        return x


class Pooler(nn.Module):
    """tanh(dense([CLS])): exists only with NSP, so single-sequence runs have no unused parameters."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class Bert(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.pooler = Pooler(cfg) if cfg.objective.nsp else None

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None = None,
                packing: Packing | None = None) -> Tensor:
        """[batch, seq, hidden] hidden states, or [tokens, hidden] (real tokens only) with `packing`."""
        # SDPA takes a boolean mask, True = may attend; [b, 1, 1, s] broadcasts over heads and queries.
        # The collator sends no mask for a batch without padding, so SDPA can pick its fastest kernel.
        attn_mask = None if attention_mask is None else attention_mask[:, None, None, :]
        return self.encoder(self.embeddings(input_ids, token_type_ids, packing), packing or attn_mask)


class Transform(nn.Module):
    """dense -> GeLU -> LayerNorm; the MLM head's transform and each of the SBO head's two layers."""

    def __init__(self, d_in: int, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class MLMHead(nn.Module):
    """HF: cls.predictions. The decoder is the word-embedding matrix (tied); the bias is the head's own."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.transform = Transform(cfg.hidden_size, cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: Tensor) -> Tensor:
        return self.transform(h)  # the caller applies the tied decoder (shared with SBO) and self.bias


class SBOHead(nn.Module):
    """Span boundary objective (paper §3.2): predict x_i from the span's outside neighbours and i's offset.

    h0 = [x_{s-1}; x_{e+1}; p_{i-s+1}]; y = LN(GeLU(W2 LN(GeLU(W1 h0)))); logits = y E^T + b_sbo.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.position_embeddings = nn.Embedding(cfg.max_sbo_targets, cfg.sbo_position_dim)
        self.layer1 = Transform(2 * cfg.hidden_size + cfg.sbo_position_dim, cfg)
        self.layer2 = Transform(cfg.hidden_size, cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))  # separate from the MLM bias, as the reference

    def forward(self, left: Tensor, right: Tensor, rel: Tensor) -> Tensor:
        # rel is 1-based (p_1 is the span's first token); padded slots carry rel 0 and are clamped (ignored).
        pos = self.position_embeddings((rel - 1).clamp_(min=0))
        return self.layer2(self.layer1(torch.cat([left, right, pos], dim=-1)))  # y; decoder applied by the caller


class PreTrainingHeads(nn.Module):
    """HF: cls. predictions (MLM), seq_relationship (NSP) and our sbo."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.predictions = MLMHead(cfg)
        self.sbo = SBOHead(cfg) if cfg.objective.sbo else None
        self.seq_relationship = nn.Linear(cfg.hidden_size, 2) if cfg.objective.nsp else None


class SpanBert(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = Bert(cfg)
        self.cls = PreTrainingHeads(cfg)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        # BERT init: N(0, 0.02) for every matrix and embedding, zero biases, unit LayerNorm.
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # Set by the start-up self-check (trainer/selfcheck.py) when model.attention=auto finds the varlen kernel
    # unusable on this machine: the reason, and from then on the padded path.
    varlen_off: str = ""

    def uses_varlen(self, device: torch.device) -> bool:
        if self.varlen_off:
            return False
        return self.cfg.attention == "varlen" or (self.cfg.attention == "auto" and device.type == "cuda")

    def decoder(self) -> tuple[Tensor, int]:
        """The tied decoder with zero rows appended up to a multiple of model.pad_vocab_to (a GEMM-friendly
        width), and the number of those rows. The parameter itself keeps the true vocabulary (export, import)."""
        w = self.bert.embeddings.word_embeddings.weight
        pad = -len(w) % self.cfg.pad_vocab_to
        return F.pad(w, (0, 0, 0, pad)), pad

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """MLM logits at every given position (inference, HF comparisons); training uses masked slots only."""
        decoder = self.bert.embeddings.word_embeddings.weight
        return F.linear(self.cls.predictions(hidden), decoder, self.cls.predictions.bias)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Summed (not averaged) losses and correct-prediction counts per objective.

        The caller divides by the *global* number of targets (trainer/train.py), which is what makes
        the gradient independent of how the global batch is split over ranks and accumulation steps.
        Positions are in full-sequence coordinates ([CLS] at 0); padded slots have label -100.
        """
        input_ids, attention_mask = batch["input_ids"], batch.get("attention_mask")
        b, s = input_ids.shape
        packing = None
        if attention_mask is not None and "token_index" in batch and self.uses_varlen(input_ids.device):
            packing = Packing(batch["token_index"], batch["cu_seqlens"], attention_mask[:, None, None, :], s)
        hidden = self.bert(input_ids, attention_mask, batch.get("token_type_ids"), packing)
        flat = hidden.reshape(-1, hidden.shape[-1])  # [b * s, h] padded, or [tokens, h] packed
        # flat index of each row's position 0 ([CLS])
        start = torch.arange(b, device=flat.device) * s if packing is None else packing.cu_seqlens[:-1].long()
        row = start[:, None]

        def gather(pos: Tensor) -> Tensor:
            return flat.index_select(0, (row + pos).reshape(-1))

        # name -> (head output at its slots, the head's own decoder bias, labels)
        heads = {"mlm": (self.cls.predictions(gather(batch["mlm_positions"])), self.cls.predictions.bias, batch["mlm_labels"])}
        if self.cls.sbo is not None:
            y = self.cls.sbo(gather(batch["sbo_left"]), gather(batch["sbo_right"]), batch["sbo_rel"].reshape(-1))
            heads["sbo"] = (y, self.cls.sbo.bias, batch["sbo_labels"])
        # Both heads go through the tied decoder in ONE GEMM, so the [vocab, hidden] weight gradient is
        # computed and accumulated into the word embeddings once, not once per head (~10% of a CPU step).
        # The padded vocabulary columns get a -inf bias: never predicted, softmax weight exactly 0, no gradient.
        outputs = [h for h, _, _ in heads.values()]
        decoder, pad = self.decoder()
        logits = F.linear(torch.cat(outputs), decoder)
        out: dict[str, Tensor] = {}
        for (name, (_, bias, labels)), part in zip(heads.items(), logits.split([len(h) for h in outputs]), strict=True):
            bias = F.pad(bias, (0, pad), value=float("-inf"))
            out[f"{name}_loss"], out[f"{name}_correct"] = _ce_sum(part + bias, labels.reshape(-1))

        # NSP only when the batch has pairs: a 2seq model can still be scored on single sequences.
        if self.cls.seq_relationship is not None and "nsp_labels" in batch:
            cls_states = flat.index_select(0, start)[:, None]  # [b, 1, h]: the [CLS] rows, padded or packed
            logits = self.cls.seq_relationship(self.bert.pooler(cls_states))
            out["nsp_loss"], out["nsp_correct"] = _ce_sum(logits, batch["nsp_labels"])
        return out


def _ce_sum(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    # fp32 softmax even under bf16 autocast: the vocabulary is 29k wide.
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
    with torch.no_grad():
        correct = ((logits.argmax(-1) == labels) & (labels != IGNORE)).sum()
    return loss, correct


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: matrices and embeddings decay; biases and LayerNorm weights do not.

    (The reference decays everything; excluding biases/LN is BERT's own recipe, see docs/trainer.md.)
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def flops_per_token(cfg: ModelConfig, seq_len: int, mask_ratio: float) -> float:
    """Training FLOPs per token actually computed (fwd + bwd = 3x fwd, 2 FLOPs per MAC).

    Encoder matmuls 6*N_layer, attention scores/values 12*L*d*S, and the heads only at the masked
    share of tokens (MLM + SBO each pay the tied 29k-wide decoder). Embedding lookups cost nothing.
    """
    h, i, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    layer = 4 * h * h + 2 * h * i
    head = h * h + h * cfg.vocab_size
    if cfg.objective.sbo:
        head += (2 * h + cfg.sbo_position_dim) * h + h * h + h * cfg.vocab_size
    return 6 * n_layers * layer + 12 * n_layers * h * seq_len + 6 * head * mask_ratio
