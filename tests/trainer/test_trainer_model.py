"""The model: numerically HF's BERT under the same weights, heads only at masked slots, SBO as §3.2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForPreTraining

from trainer.config import ModelConfig
from trainer.model import IGNORE, SpanBert, decay_groups

V = 28996


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position=64,
                dropout=0.0, attention_dropout=0.0)
    return ModelConfig(**{**base, **kw})


def _batch(b=3, s=24, m=5, pad_last=6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, V, (b, s), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[-1, s - pad_last :] = False  # the last row is padded
    ids[~mask] = 0
    pos = torch.stack([torch.randperm(s - pad_last - 2, generator=g)[:m].sort().values + 1 for _ in range(b)])
    labels = torch.randint(1000, V, (b, m), generator=g)
    labels[0, -2:] = IGNORE  # padded slots
    return {"input_ids": ids, "attention_mask": mask, "mlm_positions": pos, "mlm_labels": labels}


def test_same_numbers_as_hf_bert_for_pretraining():
    torch.manual_seed(0)
    ours = SpanBert(_cfg(objective="mlm+nsp")).eval()
    hf_cfg = BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        layer_norm_eps=1e-12, hidden_act="gelu")
    hf = BertForPreTraining(hf_cfg).eval()
    sd = ours.state_dict()
    # The only names HF has that we do not: its tied decoder (our word embeddings and MLM bias).
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"]
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"]
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)

    batch = _batch()
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    batch["token_type_ids"][:, 10:] = 1
    batch["nsp_labels"] = torch.tensor([0, 1, 0])
    with torch.no_grad():
        out = ours(batch)
        hf_out = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].long(),
                    token_type_ids=batch["token_type_ids"])
    rows = torch.arange(3)[:, None].expand_as(batch["mlm_positions"])
    hf_logits = hf_out.prediction_logits[rows, batch["mlm_positions"]]
    expect_mlm = F.cross_entropy(hf_logits.reshape(-1, V), batch["mlm_labels"].reshape(-1), reduction="sum")
    expect_nsp = F.cross_entropy(hf_out.seq_relationship_logits, batch["nsp_labels"], reduction="sum")
    torch.testing.assert_close(out["mlm_loss"], expect_mlm, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["nsp_loss"], expect_nsp, rtol=1e-5, atol=1e-5)


def test_heads_run_only_at_the_masked_slots():
    model = SpanBert(_cfg())
    seen = []
    model.cls.predictions.transform.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model.cls.sbo.layer1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    batch = _batch(b=3, s=24, m=5)
    batch.update(sbo_left=batch["mlm_positions"] - 1, sbo_right=batch["mlm_positions"] + 1,
                 sbo_rel=torch.ones_like(batch["mlm_positions"]), sbo_labels=batch["mlm_labels"])
    model(batch)
    assert seen == [torch.Size([15, 32]), torch.Size([15, 2 * 32 + 200])]  # 3 rows x 5 slots, never 3 x 24


def test_sbo_head_is_the_papers_formula():
    torch.manual_seed(1)
    model = SpanBert(_cfg()).eval()
    batch = _batch(b=2, s=20, m=4, pad_last=0)
    del batch["attention_mask"]
    left = torch.tensor([[2, 2, 9, 0], [5, 5, 5, 0]])
    right = torch.tensor([[5, 5, 12, 0], [9, 9, 9, 0]])
    rel = torch.tensor([[1, 2, 1, 0], [1, 2, 3, 0]])
    labels = torch.randint(1000, V, (2, 4))
    labels[:, 3] = IGNORE
    batch.update(sbo_left=left, sbo_right=right, sbo_rel=rel, sbo_labels=labels)
    with torch.no_grad():
        out = model(batch)
        h = model.bert(batch["input_ids"], None)
        sbo = model.cls.sbo
        expect = 0.0
        for b in range(2):
            for k in range(3):
                h0 = torch.cat([h[b, left[b, k]], h[b, right[b, k]], sbo.position_embeddings.weight[rel[b, k] - 1]])
                h1 = F.layer_norm(F.gelu(sbo.layer1.dense(h0)), (32,), sbo.layer1.LayerNorm.weight, sbo.layer1.LayerNorm.bias, 1e-12)
                y = F.layer_norm(F.gelu(sbo.layer2.dense(h1)), (32,), sbo.layer2.LayerNorm.weight, sbo.layer2.LayerNorm.bias, 1e-12)
                logits = y @ model.bert.embeddings.word_embeddings.weight.T + sbo.bias  # tied decoder, own bias
                expect = expect + F.cross_entropy(logits[None], labels[b, k][None], reduction="sum")
    torch.testing.assert_close(out["sbo_loss"], expect, rtol=1e-5, atol=1e-5)
    assert sbo.position_embeddings.weight.shape == (15, 200)
    assert sbo.bias is not model.cls.predictions.bias


def test_padding_does_not_change_a_rows_loss():
    torch.manual_seed(2)
    model = SpanBert(_cfg(objective="mlm")).eval()
    batch = _batch(b=3, s=24, m=5, pad_last=6)
    alone = {k: v[-1:, :18] for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    alone.update(mlm_positions=batch["mlm_positions"][-1:], mlm_labels=batch["mlm_labels"][-1:])
    del alone["attention_mask"]  # unpadded: no mask at all
    padded_last = {k: v[-1:] for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(alone)["mlm_loss"], model(padded_last)["mlm_loss"], rtol=1e-5, atol=1e-5)


def test_weight_decay_skips_biases_and_layernorm():
    model = SpanBert(_cfg())
    decay, no_decay = decay_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "bert.embeddings.word_embeddings.weight" in decayed and "cls.sbo.position_embeddings.weight" in decayed
    assert "bert.encoder.layer.0.attention.self.query.weight" in decayed
    assert all(n.endswith("bias") or "LayerNorm" in n for n in skipped)
    assert "cls.predictions.bias" in skipped and "bert.embeddings.LayerNorm.weight" in skipped
    assert len(decayed) + len(skipped) == len(list(model.parameters()))
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
