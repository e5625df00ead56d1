"""The loop in-process: a tiny model overfits a handful of blocks; the non-finite guard; the NSP baseline."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from tests.trainer.conftest import losses, tiny_config
from tests.trainer.shards import write_shards
from trainer import checkpoint
from trainer.model import SpanBert
from trainer.train import run


def test_tiny_model_overfits_a_handful_of_blocks(tmp_path):
    few = write_shards(tmp_path / "few", num_docs=2, block_size=32, num_shards=1, max_chars=150)
    cfg = tiny_config(model={"hidden_size": 64, "intermediate_size": 128, "dropout": 0.0, "attention_dropout": 0.0},
                      data={"batch_size": 8}, optim={"lr": 5e-3, "warmup_steps": 5, "weight_decay": 0.0, "schedule_steps": 1000},
                      train={"max_steps": 200, "log_every": 10, "ckpt_every": 1000})
    summary = run(cfg, few, tmp_path / "run")
    assert summary["step"] == 200
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert first["loss"] > 15  # ln(28996) = 10.3 per objective
    # Masks change every epoch, so this is memorising the blocks, not the masks.
    assert last["loss"] < 3.0 and last["mlm_loss"] < 1.0 and last["mlm_acc"] > 0.7


def _nan_at(monkeypatch, calls: set[int]) -> None:
    forward, count = SpanBert.forward, {"n": 0}

    def poisoned(self, batch):
        out = forward(self, batch)
        count["n"] += 1
        if count["n"] in calls:
            out["mlm_loss"] = out["mlm_loss"] * float("nan")
        return out

    monkeypatch.setattr(SpanBert, "forward", poisoned)


def test_nonfinite_steps_are_skipped_counted_and_logged(shard_dir, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {3, 4})
    cfg = tiny_config(train={"max_steps": 6, "ckpt_every": 2, "max_nonfinite_in_a_row": 3})
    summary = run(cfg, shard_dir, tmp_path / "run")
    assert summary["nonfinite_total"] == 2 and summary["step"] == 6
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())}
    assert [rows[s]["skipped"] for s in range(1, 7)] == [False, False, True, True, False, False]
    assert rows[6]["nonfinite_total"] == 2
    # No update happened in steps 3-4: the weights at step 4 are those of step 2.
    w2 = checkpoint.load(tmp_path / "run" / "checkpoints" / "step-00000002.pt").model
    w4 = checkpoint.load(tmp_path / "run" / "checkpoints" / "step-00000004.pt").model
    assert all(torch.equal(w2[k], w4[k]) for k in w2)
    assert all(torch.isfinite(v).all() for v in w4.values())


def test_checkpoints_between_log_lines_carry_the_current_nonfinite_count(shard_dir, tmp_path, monkeypatch):
    """The counter lives on the device and is read at log lines; a checkpoint between two must still hold it."""
    _nan_at(monkeypatch, {3, 4})
    cfg = tiny_config(train={"max_steps": 6, "log_every": 5, "ckpt_every": 2})
    summary = run(cfg, shard_dir, tmp_path / "run")
    saved = {s: checkpoint.load(tmp_path / "run" / "checkpoints" / f"step-{s:08d}.pt") for s in (2, 4, 6)}
    got = {s: ckpt.train_state for s, ckpt in saved.items()}
    assert [got[s].nonfinite_total for s in (2, 4, 6)] == [0, 2, 2] and summary["nonfinite_total"] == 2
    assert [got[s].data_position for s in (2, 4, 6)] == [2, 4, 6]  # one micro-batch per step, one rank


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(shard_dir, tmp_path, monkeypatch):
    _nan_at(monkeypatch, set(range(3, 100)))
    cfg = tiny_config(train={"max_steps": 10, "max_nonfinite_in_a_row": 3})
    with pytest.raises(RuntimeError, match="3 non-finite steps in a row"):
        run(cfg, shard_dir, tmp_path / "run")
    assert max(losses(tmp_path / "run")) == 5


def test_bi_sequence_nsp_baseline_and_token_budget_batches_train(shard_dir, tmp_path, monkeypatch):
    import trainer.train as train_mod

    shapes = []  # every micro-batch the loop trains on: (sequences, padded width)
    step = train_mod.train_step

    def recording(model, micro_batches, *args):
        shapes.extend(tuple(b["input_ids"].shape) for b in micro_batches)
        return step(model, micro_batches, *args)

    monkeypatch.setattr(train_mod, "train_step", recording)
    cfg = tiny_config(model={"objective": "mlm+nsp"}, data={"masking": {"scheme": "subword"}, "batch_tokens": 192},
                      train={"max_steps": 4, "ckpt_every": 100})
    run(cfg, shard_dir, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("nsp_loss" in r and "sbo_loss" not in r for r in rows)
    # Step 1 is scored before any update: a freshly initialised NSP head is at chance, ln 2 per pair.
    assert rows[0]["nsp_loss"] == pytest.approx(math.log(2), abs=0.03)
    assert rows[0]["mlm_loss"] == pytest.approx(math.log(cfg.model.vocab_size), abs=0.3)
    # Token-budget batches: never more than 192 padded tokens (batch_size 4 alone would give 4 x 64).
    assert len(shapes) == 4 and any(n > 1 for n, _ in shapes)
    assert all(n * width <= 192 or n == 1 for n, width in shapes), shapes


def test_time_budget_saves_and_stops_cleanly(shard_dir, tmp_path, monkeypatch):
    """A fake monotonic clock, one minute per reading: the budget of 2.5 minutes runs out at a known step,
    whatever the machine's load."""
    import time

    import trainer.train as train_mod

    readings = []

    def monotonic() -> float:
        readings.append(60.0 * len(readings))  # 0 at the start (the deadline), then +1 minute per check
        return readings[-1]

    monkeypatch.setattr(train_mod, "time", SimpleNamespace(monotonic=monotonic, perf_counter=time.perf_counter))
    cfg = tiny_config(train={"max_steps": 10_000, "max_minutes": 2.5, "ckpt_every": 10_000})
    summary = run(cfg, shard_dir, tmp_path / "run")
    # Checks at 1 and 2 minutes pass, the one at 3 minutes is past the deadline: two steps, then save and stop.
    assert summary["stopped"] and summary["step"] == 2
    saved = checkpoint.latest_valid(tmp_path / "run")
    assert saved is not None and saved[1]["step"] == 2
    assert [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_init_from_a_transformers_directory(shard_dir, tmp_path):
    from transformers import BertConfig, BertForPreTraining

    from tests.trainer.shards import VOCAB

    cfg = tiny_config(optim={"lr": 1e-30, "warmup_steps": 1}, train={"max_steps": 1, "ckpt_every": 100})
    m = cfg.model
    hf_cfg = BertConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                        num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
                        max_position_embeddings=m.max_position, layer_norm_eps=1e-12)
    torch.manual_seed(123)
    hf = BertForPreTraining(hf_cfg)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.txt").write_text(VOCAB.read_text(encoding="utf-8"), encoding="utf-8")
    run(cfg, shard_dir, tmp_path / "run", init_from=tmp_path / "hf")
    ours = checkpoint.latest_valid(tmp_path / "run")[1]["model"]
    theirs = hf.state_dict()
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.1.attention.self.key.weight",
                 "cls.predictions.transform.dense.weight"):
        torch.testing.assert_close(ours[name], theirs[name])  # an lr of 1e-30 leaves the loaded weights as they were
