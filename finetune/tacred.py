"""`python -m finetune tacred`: relation classification on TACRED's JSON layout, as the reference's
run_tacred.py (its default feature_mode "ner").

Input: `[CLS] sentence [SEP]`, where the subject's words are replaced by one marker token `SUBJ=<type>`
and the object's by `OBJ=<type>`; each marker is an `[unusedN]` slot of the BERT vocabulary, assigned in
order of first use after the reference's four text-mode markers (SUBJ_START, SUBJ_END, OBJ_START,
OBJ_END: [unused1]-[unused4]), so the ids match the reference's. The mapping and the label list are
stored with the model. Length 128 (longer inputs are cut, as the reference), segment ids 0, a
classifier on the pooled [CLS] (transformers' BertForSequenceClassification layout). Labels: no_relation
first, then by frequency in the training file. Scored by finetune.evaluate_tacred (micro P/R/F1).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from contract.tokenizer import Vocabulary, load_tokenizer
from finetune.data import SquadError, read_json
from finetune.evaluate_tacred import NO_RELATION, score_relations
from finetune.loop import Evaluation, LoopConfig, Task, dump, log, run_grid
from finetune.model import Pretrained, export_hf, load_pretrained
from trainer.config import ModelConfig, Objective
from trainer.dist import Dist, distributed
from trainer.hf import fresh_pooler
from trainer.model import Bert

TEXT_MARKERS = ("SUBJ_START", "SUBJ_END", "OBJ_START", "OBJ_END")  # reserved first, as run_tacred.py does
PTB = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}"}  # run_tacred.convert_token
INFO_FILE = "spanbert_tacred.json"


@dataclass(frozen=True)
class TacredConfig:
    model: str
    train: str
    dev: str
    loop: LoopConfig = LoopConfig(lrs=(2e-5,), epochs=3.0)
    max_seq_length: int = 128
    eval_batch_size: int = 64
    vocab: str | None = None
    data: str | None = None


@dataclass(frozen=True)
class Example:
    id: str
    tokens: tuple[str, ...]
    subj: tuple[int, int]  # token indices, inclusive
    obj: tuple[int, int]
    subj_type: str
    obj_type: str
    relation: str


def load_tacred(path: str | Path) -> list[Example]:
    """A TACRED-layout JSON list, checked: spans inside the sentence, start <= end, subject and object apart."""
    raw = read_json(path)
    if not isinstance(raw, list) or not raw:
        raise SquadError(f"{path}: not TACRED JSON (expected a non-empty list of examples)")
    out: list[Example] = []
    for n, x in enumerate(raw):
        try:
            ex = Example(str(x["id"]), tuple(str(t) for t in x["token"]), (int(x["subj_start"]), int(x["subj_end"])),
                         (int(x["obj_start"]), int(x["obj_end"])), str(x["subj_type"]), str(x["obj_type"]),
                         str(x["relation"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SquadError(f"{path}: example {n}: not TACRED ({type(e).__name__}: {e})") from None
        for name, (s, e) in (("subject", ex.subj), ("object", ex.obj)):
            if not 0 <= s <= e < len(ex.tokens):
                raise SquadError(f"{path}: example {ex.id!r}: {name} span [{s}, {e}] is not inside its {len(ex.tokens)} tokens")
        if ex.subj[0] <= ex.obj[1] and ex.obj[0] <= ex.subj[1]:
            raise SquadError(f"{path}: example {ex.id!r}: the subject {list(ex.subj)} and object {list(ex.obj)} overlap")
        out.append(ex)
    return out


@dataclass
class Markers:
    """Marker name (SUBJ=PERSON, ...) -> [unusedN] token, in order of first use; stored with the model."""

    tokens: dict[str, str] = dataclasses.field(default_factory=lambda: {m: f"[unused{i + 1}]" for i, m in enumerate(TEXT_MARKERS)})

    def token(self, name: str) -> str:
        if name not in self.tokens:
            self.tokens[name] = f"[unused{len(self.tokens) + 1}]"
        return self.tokens[name]


def label_list(train: list[Example]) -> list[str]:
    """no_relation first (id 0), then by frequency in train (ties: first seen first), as run_tacred.py."""
    counts = Counter(ex.relation for ex in train)
    return [NO_RELATION] + [r for r, _ in counts.most_common() if r != NO_RELATION]


def encode(examples: list[Example], tok, vocab: Vocabulary, markers: Markers, max_len: int) -> list[np.ndarray]:
    """Input ids per example: [CLS], the words with each entity replaced by its marker, [SEP]; cut to max_len."""
    ids = Vocabulary.of(tok)
    index = {t: i for i, t in enumerate(vocab.tokens)}
    out = []
    for ex in examples:
        words = [PTB.get(t.lower(), t) for t in ex.tokens]
        enc = tok.encode(words, is_pretokenized=True, add_special_tokens=False)
        pieces: list[list[int]] = [[] for _ in words]
        for piece, w in zip(enc.ids, enc.word_ids, strict=True):
            if w is not None:
                pieces[w].append(piece)
        seq = [ids.cls]
        for i in range(len(words)):
            for start, name in ((ex.subj[0], f"SUBJ={ex.subj_type}"), (ex.obj[0], f"OBJ={ex.obj_type}")):
                if i == start:
                    marker = markers.token(name)
                    if marker not in index:
                        raise ValueError(f"{vocab.path}: no {marker} token for the marker {name} (TACRED needs "
                                         f"{len(markers.tokens)} [unusedN] slots)")
                    seq.append(index[marker])
            if not (ex.subj[0] <= i <= ex.subj[1] or ex.obj[0] <= i <= ex.obj[1]):
                seq.extend(pieces[i])
        seq.append(ids.sep)
        out.append(np.asarray(seq[:max_len], dtype=np.int64))  # the reference cuts the [SEP] too
    return out


class BertForSequenceClassification(nn.Module):
    """transformers' layout: bert.embeddings/encoder/pooler + dropout + classifier."""

    def __init__(self, cfg: ModelConfig, num_labels: int):
        super().__init__()
        self.cfg = dataclasses.replace(cfg, objective=Objective.MLM_NSP)  # with NSP, Bert builds the pooler (no heads here)
        self.bert = Bert(self.cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=cfg.init_std)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        hidden = self.bert(input_ids, attention_mask, torch.zeros_like(input_ids))
        return self.classifier(self.dropout(self.bert.pooler(hidden))).float()


def build_classifier(pre: Pretrained, num_labels: int, seed: int) -> BertForSequenceClassification:
    """The pre-trained encoder, its pooler if it has one (else a fresh one, trainer.hf.fresh_pooler), a new classifier."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(pre.cfg, num_labels)
    state = {k: v for k, v in pre.encoder.items() if k.startswith(("bert.embeddings.", "bert.encoder.", "bert.pooler."))}
    if "bert.pooler.dense.weight" not in state:
        state.update(fresh_pooler(pre.cfg))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"{pre.source}: encoder tensors missing {missing[:3]} / unexpected {unexpected[:3]}")
    return model


def collate(seqs: list[np.ndarray], labels: list[int], pad_id: int) -> dict[str, Tensor]:
    length = -(-max(len(s) for s in seqs) // 8) * 8
    input_ids = np.full((len(seqs), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=bool)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = s
        mask[i, :len(s)] = True
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.tensor(labels, dtype=torch.long)}


def run(cfg: TacredConfig, out: Path) -> dict[str, Any]:
    with distributed() as d:
        return _run(cfg, out, d)


def _run(cfg: TacredConfig, out: Path, d: Dist) -> dict[str, Any]:
    pre = load_pretrained(cfg.model, cfg.vocab, cfg.data)
    if pre.cfg.max_position < cfg.max_seq_length:
        raise ValueError(f"{cfg.model}: max_position {pre.cfg.max_position} < --max-seq-length {cfg.max_seq_length}")
    tok = load_tokenizer(pre.vocab.path)
    train, dev = load_tacred(cfg.train), load_tacred(cfg.dev)
    labels = label_list(train)
    label_id = {r: i for i, r in enumerate(labels)}
    markers = Markers()
    train_ids = encode(train, tok, pre.vocab, markers, cfg.max_seq_length)
    dev_ids = encode(dev, tok, pre.vocab, markers, cfg.max_seq_length)
    train_labels = [label_id[ex.relation] for ex in train]
    cut = sum(len(s) == cfg.max_seq_length for s in train_ids + dev_ids)
    log(d, "tacred", f"train {len(train)} examples, dev {len(dev)}, {len(labels)} labels, {len(markers.tokens)} markers, "
                     f"{cut} cut at {cfg.max_seq_length} pieces; model {pre.source}, world {d.world}, device {d.device}")
    unseen = sorted({ex.relation for ex in dev} - set(labels))
    if unseen:  # scored as gold, never predictable: say so
        log(d, "tacred", f"warning: {len(unseen)} dev relation(s) not in the training file, e.g. {unseen[0]!r}")
    pad = Vocabulary.of(tok).pad
    info = {"labels": labels, "markers": markers.tokens, "source": pre.source, "max_seq_length": cfg.max_seq_length}
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(dump({**dataclasses.asdict(cfg), **info, "world_size": d.world,
                                               "vocab_sha256": pre.vocab.sha256,
                                               "model_config": dataclasses.asdict(pre.cfg)}), encoding="utf-8")

    def loss(net: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(net(batch["input_ids"], batch["attention_mask"]), batch["labels"], reduction="sum")

    def evaluate(model: nn.Module) -> Evaluation | None:
        predicted = _predict(model, dev_ids, cfg.eval_batch_size, pad, d)
        if predicted is None:
            return None
        names = [labels[i] for i in predicted]
        metrics = score_relations([ex.relation for ex in dev], names).metrics()
        return Evaluation(metrics, metrics["f1"], {"predictions.txt": "".join(f"{n}\n" for n in names),
                                                   "eval.json": dump(metrics)})

    def export(model: nn.Module, where: Path) -> None:
        export_hf(model, pre.vocab, where, "BertForSequenceClassification",
                  {"id2label": dict(enumerate(labels)), "label2id": label_id}, info, INFO_FILE)

    task = Task("tacred", len(train), lambda seed: build_classifier(pre, len(labels), seed),
                lambda idx: collate([train_ids[i] for i in idx], [train_labels[i] for i in idx], pad), loss, evaluate, export)
    summary = run_grid(task, cfg.loop, out, d)
    if d.main:
        (out / INFO_FILE).write_text(dump(info), encoding="utf-8")
    return summary


@torch.no_grad()
def _predict(model: nn.Module, seqs: list[np.ndarray], batch_size: int, pad: int, d: Dist) -> list[int] | None:
    """The argmax label id of every example (ranks take interleaved slices, rank 0 gathers)."""
    model.eval()
    mine = sorted(range(d.rank, len(seqs), d.world), key=lambda i: len(seqs[i]))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" else contextlib.nullcontext())
    local: dict[int, int] = {}
    for b in range(0, len(mine), batch_size):
        idx = mine[b:b + batch_size]
        batch = collate([seqs[i] for i in idx], [0] * len(idx), pad)
        with autocast:
            logits = model(batch["input_ids"].to(d.device), batch["attention_mask"].to(d.device))
        local.update(zip(idx, logits.argmax(-1).tolist(), strict=True))
    model.train()
    if d.world > 1:
        parts: list[Any] = [None] * d.world
        dist.all_gather_object(parts, local)
        local = {k: v for p in parts for k, v in p.items()}
    return [local[i] for i in range(len(seqs))] if d.main else None


__all__ = ["TacredConfig", "run"]
