"""`python -m finetune.split` and `python -m finetune squad` end to end on the committed excerpts with a
tiny model: outputs, learning, reproducibility, torchrun DDP, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from squad_fixtures import V1, V2

from contract.cli import run_main
from finetune.__main__ import main
from finetune.evaluate_squad import evaluate_files
from finetune.split import main as split_main

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--max-seq-length", "64", "--doc-stride", "32", "--max-query-length", "24", "--batch-size", "8",
         "--eval-batch-size", "128", "--eval-every", "0"]


def _articles(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["data"]


def test_split_by_article_is_deterministic_and_order_free(tmp_path):
    assert split_main([str(V2), "--out", str(tmp_path / "a")]) == 0
    shuffled = json.loads(V2.read_text(encoding="utf-8"))
    shuffled["data"].reverse()
    (tmp_path / "rev.json").write_text(json.dumps(shuffled))
    assert split_main([str(tmp_path / "rev.json"), "--out", str(tmp_path / "b")]) == 0
    for name in ("train.json", "heldout.json"):
        assert _articles(tmp_path / "a" / name) == _articles(tmp_path / "b" / name)
    train, held = _articles(tmp_path / "a" / "train.json"), _articles(tmp_path / "a" / "heldout.json")
    assert len(train) == len(held) == 2
    original = {a["title"]: a for a in _articles(V2)}
    assert {a["title"] for a in train} | {a["title"] for a in held} == set(original)
    assert not {a["title"] for a in train} & {a["title"] for a in held}
    assert all(a == original[a["title"]] for a in train + held)  # articles unchanged
    for name in ("train.json", "heldout.json"):  # both are SQuAD 2.0 files again
        assert any("is_impossible" in qa for a in _articles(tmp_path / "a" / name)
                   for p in a["paragraphs"] for qa in p["qas"])


def _finetune(out: Path, model: Path, train: Path, dev: Path, *extra: str) -> int:
    return run_main(main, ["squad", "--model", str(model), "--train", str(train), "--dev", str(dev), "--out", str(out), *SMALL, *extra])


@pytest.fixture(scope="module")
def one_article(tmp_path_factory) -> Path:
    raw = json.loads(V1.read_text(encoding="utf-8"))
    raw["data"] = raw["data"][:1]  # 6 paragraphs, 29 questions
    path = tmp_path_factory.mktemp("one") / "one.json"
    path.write_text(json.dumps(raw))
    return path


def test_finetune_learns_and_writes_official_outputs(tmp_path, tiny_hf_dir, one_article):
    """Trained and scored on the same 29 questions, a tiny random-init model must learn them: F1 far above
    the same run at lr 1e-9 (no learning); eval.json equals the standalone scorer on predictions.json."""
    assert _finetune(tmp_path / "ft", tiny_hf_dir, one_article, one_article, "--max-steps", "40", "--lr", "1e-9,5e-3") == 0
    ft = tmp_path / "ft"
    assert {p.name for p in ft.iterdir()} >= {"predictions.json", "eval.json", "config.json", "metrics.jsonl",
                                              "lr_sweep.json", "lr-1e-09", "lr-0.005"}
    before = json.loads((ft / "lr-1e-09" / "eval.json").read_text())
    after = json.loads((ft / "eval.json").read_text())
    assert list(after) == ["exact_match", "f1"]
    assert after["f1"] > before["f1"] + 15 and after["exact_match"] >= 10, (before, after)
    sweep = json.loads((ft / "lr_sweep.json").read_text())
    assert sweep["best_lr"] == 5e-3 and [r["lr"] for r in sweep["lrs"]] == [1e-9, 5e-3]
    assert sweep["lrs"][0]["metrics"]["f1"] < after["f1"]
    assert evaluate_files(one_article, ft / "predictions.json").metrics == after
    preds = json.loads((ft / "predictions.json").read_text())
    context = {qa["id"]: p["context"] for a in _articles(one_article) for p in a["paragraphs"] for qa in p["qas"]}
    assert all(text in context[qid] for qid, text in preds.items())  # cut from the context, casing kept
    steps = [json.loads(line) for line in (ft / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 80 and steps[-1]["lr"] == 5e-3 and steps[-1]["loss"] < steps[40]["loss"]


def test_v2_outputs_and_cpu_reproducibility(tmp_path, tiny_hf_dir):
    for run in ("a", "b"):
        assert _finetune(tmp_path / run, tiny_hf_dir, V2, V2, "--max-steps", "3", "--lr", "1e-3") == 0
    m = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert {"exact", "f1", "total", "HasAns_exact", "NoAns_exact", "null_threshold", "zero_threshold"} <= set(m)
    assert m["total"] == 233 and {"exact", "f1", "best_exact", "best_exact_thresh", "best_f1",
                                  "best_f1_thresh"} <= set(m["zero_threshold"])
    for name in ("predictions.json", "na_prob.json", "eval.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in "ab"]
    assert losses[0] == losses[1]


def test_torchrun_two_ranks_match_one_process(tmp_path, tiny_hf_dir, one_article):
    """gloo DDP: the global batch is split over ranks, the loss is the global mean: same losses, same answers."""
    args = ["squad", "--model", str(tiny_hf_dir), "--train", str(one_article), "--dev", str(one_article),
            *SMALL, "--max-steps", "3", "--lr", "5e-3"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "finetune", *args, "--out", str(tmp_path / "ddp")], check=True, env=env, cwd=REPO, timeout=300,
                   capture_output=True)
    assert run_main(main, [*args, "--out", str(tmp_path / "one")]) == 0
    ddp, one = ([json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("ddp", "one"))
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in one], abs=1e-5)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    a = json.loads((tmp_path / "ddp" / "predictions.json").read_text())
    b = json.loads((tmp_path / "one" / "predictions.json").read_text())
    assert sum(a[k] == b[k] for k in a) >= len(a) - 1  # float summation order may flip a near-tie


def test_bad_train_file_is_one_error_line(tmp_path, tiny_hf_dir, capsys):
    raw = json.loads(V1.read_text(encoding="utf-8"))
    qa = raw["data"][0]["paragraphs"][0]["qas"][0]
    qa["answers"][0]["answer_start"] += 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    assert _finetune(tmp_path / "out", tiny_hf_dir, bad, V1, "--max-steps", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {bad}: question {qa['id']!r}") and "not in its context" in err[-1]


@pytest.mark.slow
def test_v2_grid_bertadam_tuned_threshold_outputs(tmp_path, tiny_hf_dir, one_article):
    """--batch-size 4,8 x --lr: every cell trained and reported; --optimizer bertadam runs; the written
    2.0 predictions are the tuned ones and the standalone scorer reproduces eval.json's official keys."""
    raw = json.loads(V2.read_text(encoding="utf-8"))
    raw["data"] = raw["data"][:1]
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps(raw))
    assert _finetune(tmp_path / "g", tiny_hf_dir, v2, v2, "--max-steps", "2", "--lr", "1e-3,2e-3", "--batch-size", "4,8",
                     "--optimizer", "bertadam", "--eval-every", "1") == 0
    g = tmp_path / "g"
    sweep = json.loads((g / "lr_sweep.json").read_text())
    assert [(c["batch_size"], c["lr"]) for c in sweep["lrs"]] == [(4, 1e-3), (4, 2e-3), (8, 1e-3), (8, 2e-3)]
    assert all([e["step"] for e in c["evals"]] == [1, 2] for c in sweep["lrs"])
    assert {p.name for p in g.iterdir()} >= {"bs-4-lr-0.001", "bs-8-lr-0.002", "evals.jsonl"}
    m = json.loads((g / "eval.json").read_text())
    official = evaluate_files(v2, g / "predictions.json").metrics
    assert {k: m[k] for k in official} == official and "zero_threshold" in m
    preds, na = (json.loads((g / n).read_text()) for n in ("predictions.json", "na_prob.json"))
    assert all(preds[k] == "" for k in preds if na[k] > m["null_threshold"])
    assert json.loads((g / "config.json").read_text())["loop"]["optimizer"] == "bertadam"
