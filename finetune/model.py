"""The QA model: the trainer's BERT encoder + `qa_outputs` Linear(hidden, 2), named as transformers'
`BertForQuestionAnswering` (bert.embeddings.*, bert.encoder.*, qa_outputs.*; no pooler), so its state
dict is that class's, rename-free, and `export_qa` writes a directory it loads with nothing missing.

`load_pretrained` takes what `--model` names: a run directory (newest valid checkpoint), a checkpoint
file, or a transformers BERT directory (trainer.hf import, vocabulary and shape checks included).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.tokenizer import Vocabulary, read_vocabulary
from trainer import checkpoint
from trainer.config import ModelConfig, Objective
from trainer.export import locate_vocab, save_tokenizer
from trainer.hf import (
    CONFIG_FILE,
    ENCODER_PREFIXES,
    check_vocab,
    find_vocab,
    hf_config_dict,
    load_hf_weights,
    model_config_from_hf,
    save_weights,
)
from trainer.model import Bert, SpanBert

QA_PREFIX = "qa_outputs."


class BertForQuestionAnswering(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = dataclasses.replace(cfg, objective=Objective.MLM)  # no pooler, no pre-training heads
        self.bert = Bert(self.cfg)
        self.qa_outputs = nn.Linear(cfg.hidden_size, 2)
        nn.init.normal_(self.qa_outputs.weight, std=cfg.init_std)  # BERT init; the encoder is loaded over
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(start_logits, end_logits), each [batch, seq], fp32."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        start, end = self.qa_outputs(hidden).float().unbind(-1)
        return start, end


def qa_loss(start: Tensor, end: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Summed (start CE + end CE) / 2 over the batch; padded positions can never be the answer, so
    the loss does not depend on how much padding the batch has."""
    pad = ~batch["attention_mask"]
    start, end = start.masked_fill(pad, -1e4), end.masked_fill(pad, -1e4)
    return (F.cross_entropy(start, batch["start_positions"], reduction="sum")
            + F.cross_entropy(end, batch["end_positions"], reduction="sum")) / 2


@dataclass(frozen=True)
class Pretrained:
    """An encoder to fine-tune: its shape, its tensors (our names) and the vocabulary it reads."""

    cfg: ModelConfig
    encoder: dict[str, Tensor]  # bert.embeddings.* / bert.encoder.* (+ qa_outputs.* from a fine-tuned export)
    vocab: Vocabulary
    source: str


def load_pretrained(src: str | Path, vocab: str | None = None, data: str | None = None) -> Pretrained:
    """A run directory / checkpoint file (vocabulary from the run dir, --vocab or --data) or an HF BERT dir."""
    src = Path(src)
    if src.is_dir() and (src / CONFIG_FILE).is_file() and not (src / "checkpoints").is_dir():
        cfg = model_config_from_hf(src, objective=Objective.MLM)
        vocab_path = Path(vocab) if vocab else find_vocab(src)
        if vocab_path is None:
            raise FileNotFoundError(f"{src}: no vocab.txt or tokenizer.json; pass --vocab")
        v = read_vocabulary(vocab_path)
        model = SpanBert(cfg)
        load_hf_weights(model, src, vocab_sha256=v.sha256)  # checks shape, vocabulary, every tensor
        state = {k: t for k, t in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
        qa = _qa_head(src)
        return Pretrained(cfg, {**state, **qa}, v, str(src))
    ckpt = checkpoint.load(src)
    cfg = ckpt.config.model
    v = check_vocab(locate_vocab(ckpt.path, vocab, None, data), ckpt.vocab_sha256, cfg.vocab_size, f"checkpoint {ckpt.path}")
    encoder = {k: t for k, t in ckpt.model.items() if k.startswith(ENCODER_PREFIXES)}
    return Pretrained(cfg, encoder, v, str(ckpt.path))


def _qa_head(hf_dir: Path) -> dict[str, Tensor]:
    from trainer.hf import read_weights

    raw, _ = read_weights(hf_dir)
    return {k: v for k, v in raw.items() if k.startswith(QA_PREFIX)}


def build_model(pre: Pretrained, seed: int, dropout: float | None = None) -> BertForQuestionAnswering:
    """A fresh QA model: the pre-trained encoder, and a qa_outputs initialised from `seed`."""
    cfg = pre.cfg if dropout is None else dataclasses.replace(pre.cfg, dropout=dropout)
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(cfg)
    missing, unexpected = model.load_state_dict(pre.encoder, strict=False)
    missing = [k for k in missing if not k.startswith(QA_PREFIX)]
    if missing or unexpected:
        raise ValueError(f"{pre.source}: encoder tensors missing {missing[:3]} / unexpected {unexpected[:3]}")
    return model


def export_qa(model: BertForQuestionAnswering, vocab: Vocabulary, out_dir: str | Path, info: dict | None = None) -> Path:
    """A transformers directory that BertForQuestionAnswering.from_pretrained loads with nothing missing."""
    return export_hf(model, vocab, out_dir, "BertForQuestionAnswering", {}, info)


def export_hf(model: nn.Module, vocab: Vocabulary, out_dir: str | Path, architecture: str, config_extra: dict,
              info: dict | None = None, info_file: str = "spanbert_finetune.json") -> Path:
    """The fine-tuned model's state dict (transformers' names) + config.json naming `architecture` (with
    `config_extra`, e.g. the labels) + the tokenizer files + `info_file` (what trained it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bare = model.module if hasattr(model, "module") else model
    cfg = bare.cfg
    save_weights({k: v.detach().cpu().contiguous().clone() for k, v in bare.state_dict().items()}, {}, cfg, out_dir)
    config = hf_config_dict(cfg, pad_token_id=vocab.tokens.index("[PAD]") if "[PAD]" in vocab.tokens else 0)
    config.update(architectures=[architecture], **config_extra)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_tokenizer(vocab, cfg.max_position, out_dir)
    (out_dir / info_file).write_text(json.dumps({**(info or {}), "vocab_sha256": vocab.sha256,
                                                 "model_config": dataclasses.asdict(cfg)}, indent=2) + "\n")
    return out_dir
