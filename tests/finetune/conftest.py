"""Fixtures for the fine-tuning tests: committed SQuAD excerpts (demo/squad, CC BY-SA 4.0),
the committed bert-base-cased vocabulary, and a tiny random-init BERT exported as a transformers
directory. Nothing from ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import one_torch_thread  # noqa: F401 - the same autouse fixture: one intra-op thread


@pytest.fixture(scope="session")
def squad_vocab() -> Path:
    """The committed bert-base-cased vocabulary (tests/fixtures): fixed, so every run fine-tunes the same
    model. (A WordPiece trained here would differ from process to process: the `tokenizers` trainer breaks
    ties in hash order.)"""
    from tests.trainer.shards import VOCAB

    return VOCAB


@pytest.fixture(scope="session")
def tiny_cfg(squad_vocab):
    from trainer.config import ModelConfig

    n = len(squad_vocab.read_text(encoding="utf-8").splitlines())
    return ModelConfig(vocab_size=n, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                       max_position=256, objective="mlm", dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory, squad_vocab, tiny_cfg) -> Path:
    """A random-init tiny BERT (seed 0) as a transformers directory with the excerpt vocabulary."""
    from contract.tokenizer import read_vocabulary
    from trainer.export import export_model
    from trainer.model import SpanBert

    torch.manual_seed(0)
    model = SpanBert(tiny_cfg)
    out = tmp_path_factory.mktemp("tiny-hf")
    export_model(model.state_dict(), tiny_cfg, read_vocabulary(squad_vocab), out)
    return out


