"""The QA model against transformers' BertForQuestionAnswering, and every --model source."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from contract.tokenizer import read_vocabulary
from finetune.model import BertForQuestionAnswering, build_model, export_qa, load_pretrained
from trainer import checkpoint
from trainer.model import SpanBert


def _batch(vocab_size: int):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, vocab_size, (3, 40), generator=g)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 25:] = False  # padding
    types = torch.zeros(3, 40, dtype=torch.long)
    types[:, 12:] = 1
    return ids, mask, types


def test_logits_equal_transformers_and_export_loads_with_nothing_missing(tmp_path, tiny_cfg, squad_vocab):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = BertForQuestionAnswering(tiny_cfg).eval()
    with torch.no_grad():  # a qa head that is not all-small, so a swapped start/end shows
        ours.qa_outputs.weight.normal_(0, 1.0)
        ours.qa_outputs.bias.copy_(torch.tensor([0.3, -0.2]))
    out = export_qa(ours, read_vocabulary(squad_vocab), tmp_path / "qa")
    hf, info = transformers.BertForQuestionAnswering.from_pretrained(str(out), output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    ids, mask, types = _batch(tiny_cfg.vocab_size)
    with torch.no_grad():
        start, end = ours(ids, mask, types)
        ref = hf(input_ids=ids, attention_mask=mask.long(), token_type_ids=types)
    real = mask  # padded positions: both compute something, neither is ever an answer
    assert (start - ref.start_logits)[real].abs().max() <= 1e-5
    assert (end - ref.end_logits)[real].abs().max() <= 1e-5
    # The comparison is not vacuous: the logits vary.
    assert start[real].std() > 1e-2 and end[real].std() > 1e-2


def test_load_from_hf_dir_run_dir_and_checkpoint_gives_the_same_encoder(tmp_path, tiny_hf_dir, tiny_cfg, squad_vocab):
    from trainer.hf import read_weights

    hf_state, _ = read_weights(tiny_hf_dir)
    from_hf = load_pretrained(tiny_hf_dir)
    assert torch.equal(from_hf.encoder["bert.encoder.layer.1.output.dense.weight"],
                       hf_state["bert.encoder.layer.1.output.dense.weight"])
    # A run directory: a checkpoint with the same weights and the vocabulary beside it.
    torch.manual_seed(0)
    model = SpanBert(dataclasses.replace(tiny_cfg, objective="mlm+sbo"))
    model.load_state_dict({**model.state_dict(), **{k: v for k, v in hf_state.items() if k in model.state_dict()}})
    run = tmp_path / "run"
    vocab = read_vocabulary(squad_vocab)
    path = checkpoint.save(run, 7, {"model": model.state_dict(), "config": {"model": {**dataclasses.asdict(model.cfg), "objective": str(model.cfg.objective)}},
                                    "vocab_sha256": vocab.sha256}, keep_last=1)
    (run / "vocab.txt").write_text(squad_vocab.read_text())
    for src in (run, path):
        pre = load_pretrained(src)
        assert pre.vocab.sha256 == vocab.sha256
        assert not any(k.startswith("cls.") for k in pre.encoder)  # no pre-training heads
        qa = build_model(pre, seed=1)
        assert torch.equal(qa.bert.encoder.layer[1].output.dense.weight, hf_state["bert.encoder.layer.1.output.dense.weight"])
    # The vocabulary must be the checkpoint's.
    (run / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n" + "\n".join(f"t{i}" for i in range(tiny_cfg.vocab_size - 5)) + "\n")
    with pytest.raises(ValueError, match="sha256"):
        load_pretrained(run)
