"""Config validation, presets, the nested masking section (and the old flat spelling), the schedule."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from contract.cli import run_main
from masking import MaskingConfig
from tests.trainer.conftest import REPO
from trainer.__main__ import main as trainer_main
from trainer.config import Config, DataConfig, load_config, stored_config
from trainer.train import lr_factor


def test_presets_have_the_papers_numbers():
    large = load_config("large")
    m, o = large.model, large.optim
    assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size, m.vocab_size) == (24, 1024, 16, 4096, 28996)
    assert (o.lr, tuple(o.betas), o.eps, o.weight_decay, o.warmup_steps) == (1e-4, (0.9, 0.999), 1e-8, 0.1, 10_000)
    assert (m.dropout, m.attention_dropout, m.layer_norm_eps, m.sbo_position_dim, m.max_sbo_targets) == (0.1, 0.1, 1e-12, 200, 15)
    base = load_config("base").model
    assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size) == (12, 768, 12, 3072)
    assert large.train.max_steps == 2_400_000 and large.model.objective == "mlm+sbo"


def test_overrides_and_errors(tmp_path):
    cfg = load_config("tiny", ["optim.lr=3e-4", "data.masking.scheme=subword", "model.objective=mlm"])
    assert cfg.optim.lr == 3e-4 and cfg.data.masking.scheme == "subword" and cfg.model.objective == "mlm"
    with pytest.raises(ValueError, match="divisible"):
        load_config("tiny", ["model.num_heads=3"])
    with pytest.raises(ValueError, match="unknown fields"):
        load_config("tiny", ["optim.learning_rate=1"])
    with pytest.raises(ValueError, match="data.masking.scheme"):
        load_config("tiny", ["data.masking.scheme=spans"])
    with pytest.raises(ValueError, match="use_nsp"):  # an old knob: refused with the combination it spelled
        Config.from_dict({"data": {"mode": "pair"}})
    with pytest.raises(FileNotFoundError, match="bundled"):
        load_config("huge")


def test_schedule_warms_up_then_decays_to_zero():
    f = [lr_factor(s, warmup=4, total=12) for s in range(14)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and f[8] == 0.5 and f[12] == 0.0 and f[13] == 0.0
    assert all(a >= b for a, b in zip(f[3:], f[4:], strict=False))


# -- data.masking: masking's own MaskingConfig, nested -------------------------------------------------------
# (bad MaskingConfig keywords, the --set spelling of the same values)
BAD_MASKING = [
    ({"scheme": "span"}, "data.masking.scheme=span"),
    ({"mask_ratio": 0.0}, "data.masking.mask_ratio=0.0"),
    ({"mask_ratio": 1}, "data.masking.mask_ratio=1"),
    ({"geometric_p": 0}, "data.masking.geometric_p=0"),
    ({"max_span_words": 0}, "data.masking.max_span_words=0"),
    ({"mask_prob": 0.95}, "data.masking.mask_prob=0.95"),
    ({"random_prob": -0.1}, "data.masking.random_prob=-0.1"),
    ({"linguistic_share": 1.5}, "data.masking.linguistic_share=1.5"),
]


@pytest.mark.parametrize(("kw", "override"), BAD_MASKING, ids=[o for _, o in BAD_MASKING])
def test_every_masking_error_fails_in_load_config_with_its_field_path(kw, override, tmp_path, capsys):
    with pytest.raises(ValueError) as own:  # the reference: MaskingConfig's own message
        MaskingConfig(**kw)
    with pytest.raises(ValueError) as got:
        load_config("tiny", [override])
    assert str(got.value) == f"data.masking.{own.value}"
    # The CLI: one error line, exit 2, before anything is written (no run directory, no config.json).
    out = tmp_path / "run"
    assert run_main(trainer_main, ["--config", "tiny", "--data", str(tmp_path), "--out", str(out), "--set", override]) == 2
    assert capsys.readouterr().err.strip() == f"error: data.masking.{own.value}"
    assert not out.exists()


def test_masking_fields_with_their_home_elsewhere_and_wrong_types():
    # seed and max_sbo_targets: set once, where they live; their bad values fail there too.
    for override, home in (("data.masking.seed=3", "train.seed"), ("data.masking.max_sbo_targets=3", "model.max_sbo_targets")):
        with pytest.raises(ValueError, match=f"^{override.split('=')[0]}: .*{home}"):
            load_config("tiny", [override])
    with pytest.raises(ValueError, match="train.seed"):
        load_config("tiny", ["train.seed=-1"])
    with pytest.raises(ValueError, match="model.max_sbo_targets"):
        load_config("tiny", ["model.max_sbo_targets=0"])
    with pytest.raises(ValueError, match="data.masking.seed=3: set train.seed"):  # in code, too
        DataConfig(masking=MaskingConfig(seed=3))
    cfg = load_config("tiny", ["train.seed=11", "model.max_sbo_targets=7", "data.masking.geometric_p=0.3"])
    assert cfg.masking == MaskingConfig(geometric_p=0.3, seed=11, max_sbo_targets=7)  # the run's effective one
    assert cfg.data.masking_for(seed=5, max_sbo_targets=7) == dataclasses.replace(cfg.masking, seed=5)
    # A value of the wrong type is a field error, not a TypeError deep inside.
    with pytest.raises(ValueError, match=r"^data.masking.geometric_p='x': expected float"):
        load_config("tiny", ["data.masking.geometric_p=x"])
    with pytest.raises(ValueError, match="^data.masking.excluded_entity_labels='DATE'"):
        load_config("tiny", ["data.masking.excluded_entity_labels=DATE"])
    with pytest.raises(ValueError, match="unknown fields in config section 'data.masking'"):
        load_config("tiny", ["data.masking.geometric=0.2"])
    with pytest.raises(ValueError, match="data.batch_size is a value, not a section"):
        load_config("tiny", ["data.batch_size=4", "data.batch_size.x=1"])
    labels = load_config("tiny", ['data.masking.excluded_entity_labels=["DATE"]']).data.masking.excluded_entity_labels
    assert labels == ("DATE",)  # JSON's list becomes MaskingConfig's tuple


@pytest.mark.parametrize("preset", ["tiny", "base", "large"])
def test_presets_round_trip_through_json(preset):
    cfg = load_config(preset)
    raw = json.loads(json.dumps(cfg.to_dict()))
    assert Config.from_dict(raw) == cfg
    assert raw["data"]["masking"]["scheme"] == "geometric" and "scheme" not in raw["data"]
    assert not {"seed", "max_sbo_targets"} & set(raw["data"]["masking"])  # their homes hold them
    assert cfg.masking.seed == cfg.train.seed and cfg.masking.max_sbo_targets == cfg.model.max_sbo_targets == 15


def test_the_old_flat_spelling_is_an_error_naming_the_new_one(tmp_path):
    with pytest.raises(ValueError, match=r"^data.scheme: .*data.masking.scheme"):
        load_config("tiny", ["data.scheme=subword"])
    old_file = tmp_path / "old.json"
    old_file.write_text(json.dumps({"data": {"geometric_p": 0.3, "batch_size": 4}}))
    with pytest.raises(ValueError, match=r"^data.geometric_p: .*data.masking.geometric_p"):
        load_config(str(old_file))
    # Through the real entry point: exit 2, one line, nothing written.
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "trainer", "--config", "tiny", "--data", str(tmp_path), "--out", str(out),
                           "--set", "data.sbo_edge_spans=false"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: data.sbo_edge_spans: "), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "data.masking.sbo_edge_spans" in done.stderr and not out.exists()


# What the code before data.masking stored as a run's config (checkpoint state["config"], RUN_DIR/config.json)
# for `--config tiny --set data.scheme=subword --set data.sbo_edge_spans=false --set train.seed=3`, by hand.
OLD_STORED = {
    "model": {"vocab_size": 28996, "hidden_size": 128, "num_layers": 2, "num_heads": 2, "intermediate_size": 512,
              "max_position": 512, "type_vocab_size": 2, "dropout": 0.1, "attention_dropout": 0.1,
              "layer_norm_eps": 1e-12, "init_std": 0.02, "use_sbo": True, "use_nsp": False, "sbo_position_dim": 200,
              "max_sbo_targets": 15, "attention": "auto", "pad_vocab_to": 64},
    "data": {"mode": "single", "scheme": "subword", "mask_ratio": 0.15, "geometric_p": 0.2, "max_span_words": 10,
             "mask_prob": 0.8, "random_prob": 0.1, "linguistic_share": 0.5,
             "excluded_entity_labels": ["DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"],
             "sbo_edge_spans": False, "batch_size": 16, "batch_tokens": 0, "step_tokens": 0, "bucket_window": 64,
             "pad_to_multiple": 8, "num_workers": 1, "vocab_sha256": "ab" * 32, "holdout_fraction": 0.0},
    "optim": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.1, "warmup_steps": 20,
              "schedule_steps": 0, "clip_grad_norm": 1.0, "fused": True},
    "train": {"max_steps": 300, "grad_accum": 1, "seed": 3, "precision": "auto", "compile": "auto",
              "ddp_bucket_mb": 25.0, "log_every": 10, "ckpt_every": 100, "keep_last": 3,
              "max_nonfinite_in_a_row": 10, "max_minutes": 0.0},
}


def test_a_stored_run_in_an_old_spelling_is_refused_with_the_line_to_write(tmp_path, capsys):
    """A run stored before model.objective (data.mode / model.use_sbo / model.use_nsp, and here also before
    data.masking) is refused, not converted: one line naming the setting those knobs meant."""
    line = r"^data.mode, model.use_sbo, model.use_nsp: replaced by the one setting model.objective; .*--set model.objective=mlm\+sbo\)$"
    with pytest.raises(ValueError, match=line):
        stored_config(OLD_STORED)
    with pytest.raises(ValueError, match=line):  # as user input: the same line
        Config.from_dict(OLD_STORED)
    assert "scheme" in OLD_STORED["data"] and "use_sbo" in OLD_STORED["model"]  # the input is not modified
    # Through the real entry point (evaluate reads the stored run): exit 2, that one line.
    from contract.cli import run_main
    from trainer import checkpoint
    from trainer.evaluate import main as evaluate_main

    checkpoint.save(tmp_path / "old", 1, {"model": {}, "config": OLD_STORED, "vocab_sha256": "ab" * 32}, keep_last=1)
    assert run_main(evaluate_main, ["--checkpoint", str(tmp_path / "old"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--set model.objective=mlm+sbo" in err, err
