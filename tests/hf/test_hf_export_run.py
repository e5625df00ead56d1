"""A real (tiny, CPU, few-step) training run exported with `python -m trainer.export` and used through
transformers' fill-mask pipeline; the exported directory then initialises a model again."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.trainer.shards import write_shards
from trainer import checkpoint
from trainer.config import Config
from trainer.export import main as export_main
from trainer.hf import load_hf_weights, model_config_from_hf
from trainer.model import SpanBert
from trainer.train import run

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(shard dir, run dir) of a 4-step run of a 2-layer, 32-wide SpanBERT (checkpoints at steps 2 and 4)."""
    root = tmp_path_factory.mktemp("hf-run")
    shards = write_shards(root / "shards", num_docs=4, block_size=62, num_shards=1, max_chars=1500)
    cfg = Config.from_dict({
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position": 64},
        "data": {"batch_size": 4, "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"max_steps": 4, "log_every": 2, "ckpt_every": 2},
    })
    run(cfg, shards, root / "run")
    return shards, root / "run"


def test_exported_run_fills_masks_like_the_checkpoint(trained, tmp_path):
    shards, run_dir = trained
    out = tmp_path / "export"
    assert export_main([str(run_dir), str(out), "--data", str(shards)]) == 0

    info = json.loads((out / "spanbert_export.json").read_text())
    path, state = checkpoint.latest_valid(run_dir)
    assert info["step"] == state["step"] == 4 and info["source"] == str(path.resolve())
    assert info["vocab_sha256"] == state["vocab_sha256"] and info["pooler"] == "none"

    fill = transformers.pipeline("fill-mask", model=str(out), tokenizer=str(out), top_k=5)
    text = "Alice was beginning to get very [MASK] of sitting by her sister."
    predictions = fill(text)
    assert len(predictions) == 5 and all(p["sequence"] and p["token_str"] for p in predictions)

    # The same top 5 as our own model from the checkpoint, scored at the [MASK] position.
    model = SpanBert(Config.from_dict(state["config"]).model).eval()
    model.load_state_dict(state["model"])
    ids = fill.tokenizer(text, return_tensors="pt")["input_ids"]
    where = int((ids[0] == fill.tokenizer.mask_token_id).nonzero())
    with torch.no_grad():
        hidden = model.bert(ids, None)[0, where]
        logits = model.mlm_logits(hidden)
    assert [p["token"] for p in predictions] == logits.topk(5).indices.tolist()
    probs = logits.softmax(-1).topk(5).values.tolist()
    assert [p["score"] for p in predictions] == pytest.approx(probs, abs=1e-5)


def test_export_of_a_checkpoint_file_initialises_a_model_exactly(trained, tmp_path):
    shards, run_dir = trained
    step2 = checkpoint.ckpt_dir(run_dir) / "step-00000002.pt"
    out = tmp_path / "step2"
    assert export_main([str(step2), str(out), "--vocab", str(shards / "vocab.txt")]) == 0
    state = checkpoint.read(step2)

    (out / "vocab.txt").unlink()  # transformers 5 itself saves only tokenizer.json: that identifies it too
    model = SpanBert(model_config_from_hf(out))
    report = load_hf_weights(model, out, vocab_sha256=state["vocab_sha256"])
    assert report.kept_init == [] and report.unused == [] and len(report.loaded) == len(state["model"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state["model"].items())
    assert "kept fresh init: none" in report.summary()


def test_export_finds_a_vocabulary_kept_in_the_run_directory(trained, tmp_path):
    shards, run_dir = trained
    copy = shutil.copytree(run_dir, tmp_path / "run")
    shutil.copy(shards / "vocab.txt", copy / "vocab.txt")
    out = tmp_path / "out"
    assert export_main([str(copy), str(out), "--encoder-only"]) == 0
    _, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}


def test_export_needs_the_run_vocabulary(trained, tmp_path):
    shards, run_dir = trained
    # The trainer keeps the vocabulary in the run directory, so a run exports on its own.
    assert export_main([str(run_dir), str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "vocab.txt").read_text(encoding="utf-8") == (shards / "vocab.txt").read_text(encoding="utf-8")
    # A checkpoint moved away from its run has only the vocabulary's hash: export says what to pass.
    lonely = tmp_path / "lonely" / "checkpoints"
    lonely.mkdir(parents=True)
    newest = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    for f in (newest, newest.with_suffix(".json")):
        shutil.copyfile(f, lonely / f.name)
    with pytest.raises(FileNotFoundError, match="records only its vocabulary's sha256.*pass --data SHARD_DIR"):
        export_main([str(lonely / newest.name), str(tmp_path / "a2")])

    tokens = (shards / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens[2000], tokens[2001] = tokens[2001], tokens[2000]
    other = tmp_path / "other-vocab.txt"
    other.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"differs from checkpoint step-00000004.pt's"):
        export_main([str(run_dir), str(tmp_path / "b"), "--vocab", str(other)])
    with pytest.raises(FileNotFoundError, match="not a checkpoint file, nor a run directory"):
        export_main([str(tmp_path / "nowhere"), str(tmp_path / "c"), "--vocab", str(other)])
