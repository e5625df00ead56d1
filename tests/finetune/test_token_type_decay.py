"""Pre-training leaves the token-type embeddings undecayed (trainer.train.pretraining_groups): single-sequence
training never uses row 1, which fine-tuning then uses for the context; with weight decay it would shrink
by prod(1 - lr_t * wd) toward 0 (docs/trainer.md, Fidelity)."""

from __future__ import annotations

import torch

from tests.trainer.conftest import tiny_config
from trainer.dist import Dist
from trainer.train import build_model


def test_single_sequence_pretraining_keeps_token_type_row_1_and_still_decays_the_word_embeddings():
    cfg = tiny_config(optim={"lr": 1e-2, "weight_decay": 0.1, "fused": False})
    model, opt = build_model(cfg, Dist())
    emb = model.bert.embeddings
    row0, row1 = emb.token_type_embeddings.weight[0].detach().clone(), emb.token_type_embeddings.weight[1].detach().clone()
    unused = emb.word_embeddings.weight[-1].detach().clone()  # a word id the batch never has: decay alone moves it
    ids = torch.randint(5, 100, (2, 16))
    for _ in range(5):
        hidden = model.bert(ids, None)  # single-sequence: token_type_ids None -> row 0 only
        hidden.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(emb.token_type_embeddings.weight[1], row1)  # no gradient and no decay: exactly its init
    assert not torch.equal(emb.token_type_embeddings.weight[0], row0)  # row 0 trains
    # the word embeddings still decay: an unused row shrinks by (1 - lr * wd)^5 exactly (no gradient)
    assert torch.allclose(emb.word_embeddings.weight[-1], unused * (1 - 1e-2 * 0.1) ** 5, atol=1e-7)
    assert not torch.equal(emb.word_embeddings.weight[-1], unused)


def test_a_checkpoint_with_the_old_groups_is_refused_with_a_reason(tmp_path):
    """An optimizer state saved with token_type_embeddings in the decayed group names both layouts instead of
    failing inside torch (or loading moments into the wrong tensors)."""
    import pytest

    from trainer.model import decay_groups
    from trainer.train import resume_from

    cfg = tiny_config()
    model, opt = build_model(cfg, Dist())
    old = torch.optim.AdamW(decay_groups(model, 0.1))
    from trainer.checkpoint import Checkpoint, TrainState

    ckpt = Checkpoint(path=tmp_path / "step-4.pt", sha256="", config=cfg, model=model.state_dict(), vocab_sha256="",
                      train_state=TrainState(step=4, data_position=4), optimizer=old.state_dict(), rng=[])
    with pytest.raises(ValueError, match="token_type_embeddings left weight decay"):
        resume_from(ckpt, cfg, model, opt, Dist(), None)
