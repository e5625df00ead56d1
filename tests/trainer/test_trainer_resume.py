"""Checkpoints and exact resume: SIGKILL + `--resume auto` and SIGTERM + resume reproduce the loss
sequence of an uninterrupted run bit for bit; a corrupt newest checkpoint falls back to the previous."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import cli, losses, set_args, tiny_config
from trainer import checkpoint
from trainer.checkpoint import TrainState
from trainer.evaluate import evaluate_checkpoint
from trainer.train import run

STEPS = 30


def _args(shard_dir: Path, out: Path, workers: int) -> list[str]:
    # Dropout on: the resumed run must also restore the RNG state exactly. Token-budget steps, as base/large.
    cfg = tiny_config(model={"hidden_size": 64, "intermediate_size": 128},
                      data={"num_workers": workers, "step_tokens": 512, "pad_to_multiple": 64},
                      optim={"schedule_steps": 100}, train={"max_steps": STEPS, "ckpt_every": 2, "keep_last": 3})
    return ["--config", "tiny", "--data", str(shard_dir), "--out", str(out), *set_args(cfg)]


@pytest.fixture(scope="module")
def reference(shard_dir, tmp_path_factory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("reference")
    done = cli(_args(shard_dir, out, workers=2))  # 2 workers here, 0 in the interrupted runs: no influence
    assert done.returncode == 0, done.stderr
    ref = losses(out)
    assert list(ref) == list(range(1, STEPS + 1))
    return ref


def _start_and_wait(args: list[str], out: Path, step: int):
    proc = cli(args, background=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (out / "metrics.jsonl").is_file() and any(json.loads(x)["step"] >= step for x in (out / "metrics.jsonl").read_text().splitlines()):
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stdout.read()}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("trainer made no progress")


def test_sigkill_then_resume_is_bitwise_identical_and_skips_a_corrupt_checkpoint(shard_dir, tmp_path, reference):
    out = tmp_path / "run"
    proc = _start_and_wait(_args(shard_dir, out, workers=0), out, step=5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Complete saves only (the kill may land between a .pt and its sidecar; that one is invalid anyway).
    saved = sorted(p for p in out.glob("checkpoints/step-*.pt") if p.with_suffix(".json").is_file())
    assert saved and checkpoint.load(saved[-1]).step < STEPS, "the run finished before it was killed"
    # Truncate the newest checkpoint: resume must say so and fall back to the one before.
    newest = saved[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    resumed = cli([*_args(shard_dir, out, workers=0), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"checkpoint {newest} is unusable" in resumed.stderr and "truncated" in resumed.stderr
    assert f"resumed from {saved[-2]}" in resumed.stderr
    assert losses(out) == reference  # every step, bit for bit (later lines win for re-run steps)


def test_sigterm_saves_and_exits_cleanly_then_resumes_exactly(shard_dir, tmp_path, reference):
    out = tmp_path / "run"
    proc = _start_and_wait(_args(shard_dir, out, workers=1), out, step=3)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, DataLoader worker included (as Slurm does)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert "SIGTERM: saving step" in output
    last = max(losses(out))
    assert last < STEPS, "the run finished before SIGTERM arrived"
    assert checkpoint.load(out / "checkpoints" / f"step-{last:08d}.pt").step == last  # saved where it stopped
    resumed = cli([*_args(shard_dir, out, workers=1), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {last}," in resumed.stderr
    assert losses(out) == reference


def test_refuses_to_overwrite_a_run_without_resume(shard_dir, tmp_path, reference):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step-00000002.pt").write_bytes(b"x")
    done = cli(_args(shard_dir, out, workers=0))
    assert done.returncode != 0 and "--resume auto" in done.stderr


def test_checkpoint_files_are_verified_and_pruned(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"x": torch.tensor([step])}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000002.json", "step-00000002.pt", "step-00000003.json", "step-00000003.pt"]
    newest = tmp_path / "checkpoints" / "step-00000003.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    newest.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        checkpoint.read(newest)
    messages = []
    path, state = checkpoint.latest_valid(tmp_path, log=messages.append)
    assert path.name == "step-00000002.pt" and int(state["x"]) == 2 and "step-00000003.pt" in messages[0]
    (tmp_path / "checkpoints" / "step-00000002.json").unlink()  # a save that never finished
    assert checkpoint.latest_valid(tmp_path, log=messages.append) is None
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_resume_from_a_checkpoint_file_and_from_a_finished_run(shard_dir, tmp_path, reference):
    first = tmp_path / "first"
    assert cli(_args(shard_dir, first, workers=0)).returncode == 0
    saved = sorted((first / "checkpoints").glob("step-*.pt"))
    final, before = saved[-1], saved[-1].stat().st_mtime_ns
    # Resuming a finished run trains nothing and rewrites nothing.
    again = cli([*_args(shard_dir, first, workers=0), "--resume", "auto"])
    assert again.returncode == 0, again.stderr
    assert final.stat().st_mtime_ns == before
    # An explicit checkpoint file continues, in another run directory, exactly where it was saved.
    mid = saved[-2]
    second = tmp_path / "second"
    cont = cli([*_args(shard_dir, second, workers=0), "--resume", str(mid)])
    assert cont.returncode == 0, cont.stderr
    start = int(mid.stem.split("-")[1])
    assert losses(second) == {s: reference[s] for s in range(start + 1, STEPS + 1)}
    missing = cli([*_args(shard_dir, tmp_path / "third", workers=0), "--resume", str(tmp_path / "nowhere")])
    assert missing.returncode != 0 and "not a checkpoint file" in missing.stderr


# The keys of a format-2 training checkpoint, as the trainer wrote them before TrainState existed.
FORMAT_2_KEYS = {"format_version", "step", "model", "optimizer", "data", "rng", "config", "vocab_sha256", "world_size",
                 "nonfinite"}


def test_train_state_is_the_format_2_step_position_and_nonfinite_keys(tmp_path):
    # A format-2 file written by hand the way the trainer before TrainState did: it loads into a TrainState.
    old = {"model": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": []}, "data": {"next_batch": 21},
           "rng": [checkpoint.rng_state()], "config": {}, "vocab_sha256": "ab" * 32, "world_size": 3, "nonfinite": 4}
    path = checkpoint.save(tmp_path / "old", 7, old, keep_last=1)
    assert TrainState.from_checkpoint(checkpoint.read(path)) == TrainState(step=7, data_position=21, nonfinite_total=4)
    # save_training writes exactly those keys, and reads back the TrainState it was given.
    ts = TrainState(step=9, data_position=36, nonfinite_total=2)
    path = checkpoint.save_training(tmp_path / "new", ts, model={"w": torch.ones(2)}, optimizer=old["optimizer"],
                                    rng=old["rng"], config={}, vocab_sha256="ab" * 32, world_size=4, keep_last=1)
    state = checkpoint.read(path)
    assert set(state) == FORMAT_2_KEYS and state["format_version"] == 2
    assert (state["step"], state["data"], state["nonfinite"], state["world_size"]) == (9, {"next_batch": 36}, 2, 4)
    assert TrainState.from_checkpoint(state) == ts


def _old_spelling(config: dict) -> dict:
    """A config as the trainer stored it before data.masking and model.objective: the masking fields flat
    in `data`, the objective as data.mode + model.use_sbo + model.use_nsp."""
    data, model = dict(config["data"]), dict(config["model"])
    objective = model.pop("objective")
    model.update(use_sbo=objective == "mlm+sbo", use_nsp=objective == "mlm+nsp")
    flat = {k: v for k, v in data.items() if k != "masking"}
    return {**config, "model": model, "data": {"mode": "pair" if objective == "mlm+nsp" else "single", **flat, **data["masking"]}}


def test_a_run_stored_in_the_old_spelling_is_refused_with_the_line_to_write(shard_dir, tmp_path):
    """Stored runs are not converted: evaluate and resume refuse one stored with the old objective knobs,
    with the one line that names the model.objective value they meant, and leave it untouched."""
    cfg = tiny_config(data={"masking": {"scheme": "whole_word", "sbo_edge_spans": False}}, train={"max_steps": 2})
    run(cfg, shard_dir, tmp_path / "old")
    step2 = tmp_path / "old" / "checkpoints" / "step-00000002.pt"
    state = checkpoint.read(step2)
    state["config"] = _old_spelling(state["config"])
    assert "scheme" in state["config"]["data"] and state["config"]["model"]["use_sbo"] is True
    checkpoint.save(tmp_path / "old", 2, {k: v for k, v in state.items() if k not in ("format_version", "step")}, keep_last=5)
    before = step2.read_bytes()
    line = r"^data.mode, model.use_sbo, model.use_nsp: replaced by the one setting model.objective; .*--set model.objective=mlm\+sbo\)$"
    with pytest.raises(ValueError, match=line):
        evaluate_checkpoint(step2, shard_dir, split="all", max_blocks=8)
    with pytest.raises(ValueError, match=line):
        run(tiny_config(train={"max_steps": 4}), shard_dir, tmp_path / "old", resume="auto")
    assert step2.read_bytes() == before
