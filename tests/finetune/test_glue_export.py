"""GLUE and other tasks go through transformers' own classes: a pre-trained model exported encoder-only
(`python -m trainer.export --encoder-only`: encoder + pooler, fresh when the run had no NSP) loads into
BertForSequenceClassification with exactly the classifier new and nothing left over, and trains."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_export_trains_in_bert_for_sequence_classification(tmp_path, squad_vocab, tiny_cfg):
    from transformers import BertForSequenceClassification, BertTokenizerFast

    from contract.tokenizer import read_vocabulary
    from trainer.export import export_model
    from trainer.model import SpanBert

    torch.manual_seed(0)
    export_model(SpanBert(tiny_cfg).state_dict(), tiny_cfg, read_vocabulary(squad_vocab), tmp_path, encoder_only=True)
    model, info = BertForSequenceClassification.from_pretrained(tmp_path, num_labels=2, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}  # the new head, nothing else
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    tok = BertTokenizerFast.from_pretrained(tmp_path)
    pos = ["a lovely film", "great fun", "wonderful acting", "a joy"]
    neg = ["a dull film", "boring and long", "awful acting", "a mess"]
    batch = tok(pos + neg, padding=True, return_tensors="pt")
    labels = torch.tensor([1] * 4 + [0] * 4)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(15):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
