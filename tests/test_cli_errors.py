"""Every command turns bad arguments, bad configs and missing or corrupt inputs into ONE stderr line
`error: ...` naming the file or setting, with exit status 2 and no traceback; `--debug` or SPANBERT_DEBUG=1
shows the traceback (contract/cli.py). One subprocess per command (what a user sees, through the module's
real entry point); further cases of the trainer in-process, through the same wrapper, to keep the suite lean."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract.cli import run_main
from trainer.__main__ import main as trainer_main

REPO = Path(__file__).resolve().parent.parent
TINY = ["--set", "model.hidden_size=32", "--set", "model.num_layers=1", "--set", "model.num_heads=2",
        "--set", "model.intermediate_size=64", "--set", "model.max_position=64", "--set", "data.num_workers=0",
        "--set", "data.batch_size=4", "--max-steps", "1"]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env})


def _error_line(args: list[str]) -> str:
    """The command's stderr, asserted to be exactly one `error:` line with exit status 2."""
    done = _run(args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def bad_shards(shard_dir, tmp_path_factory) -> dict[str, Path]:
    """Copies of the trainer's shard fixture: one with a truncated shard, one with 100 flipped bytes."""
    root = tmp_path_factory.mktemp("bad")
    out = {}
    for kind in ("truncated", "flipped"):
        d = Path(shutil.copytree(shard_dir, root / kind))
        victim = d / json.loads((d / "manifest.json").read_text())["shards"][1]["file"]
        data = bytearray(victim.read_bytes())
        if kind == "truncated":
            data = data[: len(data) // 2]
        else:
            mid = len(data) // 2
            data[mid : mid + 100] = bytes(b ^ 0xFF for b in data[mid : mid + 100])
        victim.write_bytes(bytes(data))
        out[kind], out[f"{kind}_file"] = d, victim
    return out


def test_pipeline_missing_input_and_no_beam_gcp_warning(tmp_path, vocab_path):
    line = _error_line(["pipeline", "--input", str(tmp_path / "nowhere" / "*.txt"), "--vocab", str(vocab_path),
                        "--output", str(tmp_path / "out")])
    assert str(tmp_path / "nowhere") in line  # and, being the whole stderr, no "apitools not found" warning


def test_pipeline_vocab_bad_argument():
    line = _error_line(["pipeline.vocab", "--output", "x", "--vocab-size", "many", "--input", "y"])
    assert "--vocab-size" in line and "many" in line


def test_inspect_missing_manifest_and_debug_shows_the_traceback(tmp_path):
    assert str(tmp_path) in _error_line(["pipeline.inspect", str(tmp_path)])
    debug = _run(["pipeline.inspect", str(tmp_path), "--debug"])
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def test_masking_stats_truncated_shard(bad_shards):
    line = _error_line(["masking.stats", "--shards", str(bad_shards["truncated"])])
    assert str(bad_shards["truncated_file"]) in line and "pipeline.inspect" in line


def test_trainer_truncated_shard(tmp_path, bad_shards):
    line = _error_line(["trainer", "--config", "tiny", "--data", str(bad_shards["truncated"]),
                        "--out", str(tmp_path / "run"), *TINY])
    assert str(bad_shards["truncated_file"]) in line and f"python -m pipeline.inspect {bad_shards['truncated']}" in line


def _trainer_error(argv: list[str], capsys) -> str:
    """The trainer's main through the same wrapper, in this process: status 2 and the one stderr line."""
    assert run_main(trainer_main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_trainer_bad_configs_and_inputs(tmp_path, shard_dir, bad_shards, capsys, monkeypatch):
    base = ["--config", "tiny", "--out", str(tmp_path / "run"), *TINY]
    line = _trainer_error([*base, "--data", str(shard_dir), "--config", "huge"], capsys)
    assert "'huge'" in line and "tiny" in line  # names the bundled presets
    assert "mask_prob=0.95" in _trainer_error([*base, "--data", str(shard_dir), "--set", "data.masking.mask_prob=0.95"], capsys)
    assert f"{tmp_path}: no manifest.json" in _trainer_error([*base, "--data", str(tmp_path)], capsys)
    line = _trainer_error([*base, "--data", str(bad_shards["flipped"]), "--verify-shards"], capsys)
    assert f"{bad_shards['flipped_file'].name}: sha256" in line  # 100 flipped bytes: only the hash can tell
    assert "--max-steps" in _trainer_error([*base, "--data", str(shard_dir), "--max-steps", "x"], capsys)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing ran
    with pytest.raises(FileNotFoundError):  # --debug: the exception itself, for its traceback
        run_main(trainer_main, [*base, "--data", str(tmp_path), "--debug"])
    monkeypatch.setenv("SPANBERT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        run_main(trainer_main, [*base, "--data", str(tmp_path)])


def test_evaluate_missing_checkpoint(tmp_path, shard_dir):
    line = _error_line(["trainer.evaluate", "--checkpoint", str(tmp_path / "run"), "--data", str(shard_dir)])
    assert str(tmp_path / "run") in line


def test_export_refuses_a_checkpoint_that_would_run_code(tmp_path):
    from tests.trainer.test_trainer_integrity import _RunsCode, _save_with_sidecar

    marker = tmp_path / "code-ran"
    crafted = _save_with_sidecar(tmp_path / "run", 3, {"format_version": 2, "step": 3, "model": _RunsCode(marker)})
    line = _error_line(["trainer.export", str(crafted), str(tmp_path / "hf")])
    assert f"{crafted}: refused" in line
    assert not marker.exists()


def test_ablate_unknown_row(tmp_path, shard_dir):
    line = _error_line(["trainer.ablate", "--data", str(shard_dir), "--out", str(tmp_path), "--rows", "bogus"])
    assert "bogus" in line


def test_demo_bad_argument():
    line = _error_line(["demo", "--max-steps", "many"])
    assert "--max-steps" in line


def test_pipeline_refuses_the_timed_flush_experiment(tmp_path, vocab_path):
    (tmp_path / "a.txt").write_text("Some text.\n", encoding="utf-8")
    line = _error_line(["pipeline", "--input", f"text:{tmp_path}/a.txt", "--vocab", str(vocab_path), "--no-annotate",
                        "--output", str(tmp_path / "out"), "--experiments=data_buffer_time_limit_ms=500"])
    assert "data_buffer_time_limit_ms" in line
    assert not (tmp_path / "out").exists()  # refused before anything was planned or written
