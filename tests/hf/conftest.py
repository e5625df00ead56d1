"""Fixtures for the HF interop tests: the bert-base-cased vocabulary, tiny configs, randomised weights.

transformers must never reach the hub here: offline mode is set before it is first imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from contract.tokenizer import Vocabulary, read_vocabulary  # noqa: E402
from tests.conftest import VOCAB  # noqa: E402
from trainer.config import ModelConfig  # noqa: E402

TOL = 1e-5  # fp32, eval mode (the bar)


@pytest.fixture(scope="session")
def vocab() -> Vocabulary:
    return read_vocabulary(VOCAB)


def tiny_config(**fields) -> ModelConfig:
    """4 heads of 8: exercises the head split, which no tensor shape reveals."""
    base = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position=64,
                sbo_position_dim=16, max_sbo_targets=5)
    return ModelConfig(**{**base, **fields})


def hf_bert_config(cfg: ModelConfig):
    from transformers import BertConfig

    return BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                      num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                      max_position_embeddings=cfg.max_position, layer_norm_eps=cfg.layer_norm_eps)


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Noise on every parameter: BERT's init leaves biases 0 and LayerNorms 1, which hides a swapped
    weight/bias or gamma/beta. Returns the model in eval mode (no dropout)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def batch(cfg: ModelConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask): two rows, the second padded, [CLS] ... [SEP] like a real block."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, cfg.vocab_size, (2, 12), generator=g)
    ids[:, 0], ids[0, -1], ids[1, 7] = 101, 102, 102  # bert-base-cased [CLS] / [SEP]
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    ids[1, 8:] = 0
    return ids, mask


def all_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in `directory`, keyed file/name."""
    from safetensors.torch import load_file

    return {f"{f.name}/{k}": v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}
