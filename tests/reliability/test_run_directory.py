"""Faults survived by a run directory (issue 20, docs/integrity.md): two trainers on one --out, a kill
between a log line and a checkpoint, debris of interrupted saves, a full disk, an export over a full
directory. Each test reproduces the fault as a user meets it; on the code before the fix each failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from contract.cli import run_main
from tests.trainer.conftest import cli, set_args, tiny_config
from trainer import checkpoint
from trainer.__main__ import main as trainer_main
from trainer.export import main as export_main
from trainer.train import run


def _args(shards: Path, out: Path, **train) -> list[str]:
    cfg = tiny_config(train={"max_steps": 4, "ckpt_every": 2, **train})
    return ["--config", "tiny", "--data", str(shards), "--out", str(out), *set_args(cfg)]


def _one_error_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip() and not x.startswith("[trainer]") and "train:" not in x]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _wait_for_step(out: Path, proc: subprocess.Popen, step: int) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and any(json.loads(x)["step"] >= step for x in metrics.read_text().splitlines() if x.strip()):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.01)
    raise AssertionError("the first trainer made no progress")


@pytest.mark.slow
def test_a_second_trainer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(small_shards, tmp_path,
                                                                                              capsys):
    out = tmp_path / "run"
    first = cli(_args(small_shards, out, max_steps=100_000, ckpt_every=2), background=True)
    try:
        _wait_for_step(out, first, 3)
        capsys.readouterr()
        # The same command again, as a requeued job would run it: in this process, while the first one trains.
        assert run_main(trainer_main, [*_args(small_shards, out, max_steps=4), "--resume", "auto"]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"run directory in use by PID {first.pid} on host" in line, line
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # kill -9: the lock file stays behind, naming the dead PID
        first.wait()
    saved = checkpoint.load(out).step
    assert run_main(trainer_main, [*_args(small_shards, out, max_steps=saved + 1), "--resume", "auto"]) == 0
    assert f"took over the stale lock of PID {first.pid}" in capsys.readouterr().err


def test_a_released_lock_is_free_and_not_reported_stale(tmp_path):
    from contract.rundir import RunDirBusy, RunLock

    messages: list[str] = []
    with RunLock(tmp_path / "run", log=messages.append):
        with pytest.raises(RunDirBusy, match=f"in use by PID {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()  # another open file of the same lock: flock conflicts
    RunLock(tmp_path / "run", log=messages.append).acquire().release()
    assert messages == []


def test_sidecar_checksum_vouches_for_the_bytes_this_writer_wrote(tmp_path, monkeypatch):
    """Two writers: A renames its file, then B's rename lands before A hashes. The old code hashed the file
    after the rename, so A's sidecar vouched for B's bytes and the mix passed verification."""
    real_replace = os.replace

    def other_writer_lands_after(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".pt"):
            torch.save({"format_version": checkpoint.FORMAT_VERSION, "step": 3, "mine": torch.ones(3)}, dst)

    monkeypatch.setattr(os, "replace", other_writer_lands_after)
    path = checkpoint.save(tmp_path, 3, {"mine": torch.zeros(3)}, keep_last=2)
    monkeypatch.setattr(os, "replace", real_replace)
    with pytest.raises(ValueError, match="sha256 mismatch|truncated"):  # B's bytes are not what A vouched for
        checkpoint.read(path)


def test_temporary_names_are_unique_per_write(tmp_path):
    from contract.rundir import temporary_name

    names = {temporary_name(tmp_path / "step-00000002.pt") for _ in range(100)}
    assert len(names) == 100 and all(n.parent == tmp_path and n.name.endswith(".tmp") for n in names)


def test_after_a_kill_the_resume_logs_each_step_once_and_removes_the_debris_of_interrupted_saves(small_shards, tmp_path,
                                                                                                   capsys):
    """A run killed after logging steps 3-4 (the last line half written) and in the middle of saving step 4:
    the resume re-runs 3-4, so metrics.jsonl must not hold them twice, and the temporaries must go."""
    out = tmp_path / "run"
    cfg = tiny_config(train={"max_steps": 4, "ckpt_every": 2})
    run(cfg, small_shards, out)
    for suffix in (".pt", ".json"):  # what the kill took: the checkpoint of step 4
        (checkpoint.ckpt_dir(out) / f"step-00000004{suffix}").unlink()
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + '{"step": 7, "lo')  # torn last line
    debris = [checkpoint.ckpt_dir(out) / ".step-00000004.pt.tmp",  # the old fixed name
              checkpoint.ckpt_dir(out) / ".step-00000004.pt.1234-abcdef12.tmp"]
    for p in debris:
        p.write_bytes(b"\0" * 1000)
    capsys.readouterr()
    run(cfg, small_shards, out, resume="auto")
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert not any(p.exists() for p in debris) and "removed 2 temporary file(s)" in capsys.readouterr().err
    assert checkpoint.load(out).step == 4


def test_export_refuses_a_non_empty_out_without_overwrite(small_shards, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny_config(train={"max_steps": 2, "ckpt_every": 2}), small_shards, out)
    target = tmp_path / "hf"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert run_main(export_main, [str(out), str(target), "--data", str(small_shards)]) == 2
    assert "--overwrite" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]  # nothing written
    assert run_main(export_main, [str(out), str(target), "--data", str(small_shards), "--overwrite"]) == 0
    assert (target / "config.json").is_file() and (target / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_leaves_no_debris_and_resume_says_the_same(small_shards, small_disk,
                                                                                                capsys):
    out = small_disk / "run"
    for attempt in ("fresh", "resume auto"):
        extra = ["--resume", "auto"] if attempt == "resume auto" else []
        capsys.readouterr()
        status = run_main(trainer_main, [*_args(small_shards, out), *extra])
        err = capsys.readouterr().err
        line = _one_error_line(err)
        assert status == 3, (attempt, status, err)
        assert f"{out}/checkpoints/step-00000002.pt: write failed: No space left on device (ENOSPC)" in line, line
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], attempt  # the partial file is gone
        assert "Exception in thread" not in err


def test_finetune_holds_the_lock_on_its_out(tmp_path, capsys):
    from contract.rundir import RunLock
    from finetune.__main__ import main as finetune_main

    out = tmp_path / "ft"
    with RunLock(out, log=lambda _: None):  # refused before the model, train or dev file is even read
        argv = ["squad", "--model", str(tmp_path / "m"), "--train", "t.json", "--dev", "d.json", "--out", str(out)]
        assert run_main(finetune_main, argv) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"fine-tuning directory in use by PID {os.getpid()}" in line


def test_exit_statuses_follow_the_table():
    """docs/integrity.md: 2 for bad input, 3 for a run that failed on good input. The gloo message is what rank 0
    of a 2-rank CPU run raised when rank 1 was killed (probed once by hand: exit 3; a subprocess test of it
    costs ~65 s on the 2-core CI box, so the mapping is tested here on the error it raised)."""
    import errno

    from contract.cli import EXIT_BAD_INPUT, EXIT_RUNTIME, exit_status
    from contract.rundir import RunDirBusy, WriteFailed

    assert (EXIT_BAD_INPUT, EXIT_RUNTIME) == (2, 3)
    bad = [ValueError("x"), FileNotFoundError(2, "no such file"), FileExistsError("x"), KeyError("x"), RunDirBusy("x"),
           PermissionError(errno.EACCES, "denied")]
    runtime = [WriteFailed("f", OSError(errno.ENOSPC, "No space left on device")), OSError(errno.EIO, "I/O error"),
               RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:13487: Connection reset by peer."), RuntimeError("accounting failed: ..."), TypeError("a bug")]
    assert [exit_status(e) for e in bad] == [2] * len(bad)
    assert [exit_status(e) for e in runtime] == [3] * len(runtime)

