"""GLUE and other tasks go through transformers' own classes: an exported pre-trained model loads into
BertForSequenceClassification with only the classifier new (the MLM head the only leftover) and trains."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_export_trains_in_bert_for_sequence_classification(tiny_hf_dir):
    from transformers import BertForSequenceClassification, BertTokenizerFast

    model, info = BertForSequenceClassification.from_pretrained(tiny_hf_dir, num_labels=2, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}  # the new head, nothing else
    # The export carries the MLM head (cls.predictions.*), which a classifier does not use; nothing else is left over.
    assert all(k.startswith("cls.predictions.") for k in info["unexpected_keys"])
    assert not info["mismatched_keys"] and not info.get("error_msgs")
    tok = BertTokenizerFast.from_pretrained(tiny_hf_dir)
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
