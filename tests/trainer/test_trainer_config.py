"""Config validation, presets and the learning-rate schedule."""

from __future__ import annotations

import pytest

from trainer.config import Config, load_config
from trainer.train import lr_factor


def test_presets_have_the_papers_numbers():
    large = load_config("large")
    m, o = large.model, large.optim
    assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size, m.vocab_size) == (24, 1024, 16, 4096, 28996)
    assert (o.lr, tuple(o.betas), o.eps, o.weight_decay, o.warmup_steps) == (1e-4, (0.9, 0.999), 1e-8, 0.1, 10_000)
    assert (m.dropout, m.attention_dropout, m.layer_norm_eps, m.sbo_position_dim, m.max_sbo_targets) == (0.1, 0.1, 1e-12, 200, 15)
    base = load_config("base").model
    assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size) == (12, 768, 12, 3072)
    assert large.train.max_steps == 2_400_000 and large.data.mode == "single" and large.model.use_sbo


def test_overrides_and_errors(tmp_path):
    cfg = load_config("tiny", ["optim.lr=3e-4", "data.scheme=subword", "model.use_sbo=false"])
    assert cfg.optim.lr == 3e-4 and cfg.data.scheme == "subword" and cfg.model.use_sbo is False
    with pytest.raises(ValueError, match="divisible"):
        load_config("tiny", ["model.num_heads=3"])
    with pytest.raises(ValueError, match="unknown fields"):
        load_config("tiny", ["optim.learning_rate=1"])
    with pytest.raises(ValueError, match="data.scheme"):
        load_config("tiny", ["data.scheme=spans"])
    with pytest.raises(ValueError, match="use_nsp"):
        Config.from_dict({"data": {"mode": "pair"}})
    with pytest.raises(FileNotFoundError, match="bundled"):
        load_config("huge")


def test_schedule_warms_up_then_decays_to_zero():
    f = [lr_factor(s, warmup=4, total=12) for s in range(14)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and f[8] == 0.5 and f[12] == 0.0 and f[13] == 0.0
    assert all(a >= b for a, b in zip(f[3:], f[4:], strict=False))
