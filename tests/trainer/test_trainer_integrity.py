"""Integrity before trust (issue 11 items 4, 6, 7): shards are checked against their manifest before the
trainer reads them, checkpoints that fail their checksum are skipped, loading a checkpoint never runs code,
and the learning rate is a function of (step, config) on a fresh run and after a resume."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from contract.schema import MANIFEST, ShardError, file_sha256, hash_problems, read_manifest
from pipeline.inspect import main as inspect_main
from tests.trainer.conftest import losses, tiny_config
from trainer import checkpoint
from trainer.data import ShardSet
from trainer.train import run


# -- helpers ---------------------------------------------------------------------------------------
def _copy(shard_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shard_dir, tmp_path / "shards"))


def _flip(path: Path, start: int, n: int = 100) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _read(path: Path) -> pa.Table:
    """A shard read into memory (not memory-mapped: the test rewrites the file under it)."""
    return pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()


def _rewrite(directory: Path, index: int, table: pa.Table) -> Path:
    """Replace shard `index` by `table` and make the manifest agree with it (a consistent but bad shard)."""
    manifest = json.loads((directory / MANIFEST).read_text())
    entry = manifest["shards"][index]
    path = directory / entry["file"]
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    size, digest = file_sha256(path)
    entry.update(rows=table.num_rows, sha256=digest, tokens=sum(len(x) for x in table.column("input_ids").to_pylist()))
    if "bytes" in entry:
        entry["bytes"] = size
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return path


class _RunsCode:
    """Unpickling this calls exec(): it creates `marker`, standing in for any code an attacker wants run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _save_with_sidecar(run_dir: Path, step: int, payload: dict) -> Path:
    """A .pt and a sidecar that matches it: what anyone can produce, so the checksum proves nothing."""
    path = checkpoint.ckpt_dir(run_dir) / f"step-{step:08d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    size, digest = file_sha256(path)
    path.with_suffix(".json").write_text(json.dumps({"step": step, "file": path.name, "bytes": size, "sha256": digest}))
    return path


# -- item 4: shards ---------------------------------------------------------------------------------
def test_truncated_shard_is_named_when_the_data_is_opened(shard_dir, tmp_path):
    d = _copy(shard_dir, tmp_path)
    victim = read_manifest(d).shard_paths[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ShardError) as e:
        ShardSet(d)
    msg = str(e.value)
    assert str(victim) in msg and f"python -m pipeline.inspect {d}" in msg and "\n" not in msg


def test_row_count_and_schema_disagreeing_with_the_manifest_are_refused(shard_dir, tmp_path):
    d = _copy(shard_dir, tmp_path)
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["shards"][0]["rows"] += 1
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"shard-00000.*: \d+ rows, manifest.json says \d+"):
        ShardSet(d)

    d2 = _copy(shard_dir, tmp_path / "b")
    table = _read(read_manifest(d2).shard_paths[0])
    wide = table.set_column(0, "input_ids", table.column("input_ids").cast(pa.list_(pa.int64())))
    _rewrite(d2, 0, wide)
    with pytest.raises(ShardError, match=r"column 'input_ids' is list<item: int64>, the shard contract says list<item: int32>"):
        ShardSet(d2)


def test_token_id_outside_the_vocabulary_is_caught_when_its_batch_is_read(shard_dir, tmp_path):
    d = _copy(shard_dir, tmp_path)
    manifest = read_manifest(d)
    vocab_size = manifest.vocab_size
    rows_per_shard = [s.rows for s in manifest.shards]
    k = [i for i, n in enumerate(rows_per_shard) if n > 3][1]  # the second shard with a row 3 (some are empty)
    table = _read(manifest.shard_paths[k])
    rows = table.to_pylist()
    rows[3]["input_ids"][5] = vocab_size  # one past the last id: an embedding lookup would fail or read garbage
    path = _rewrite(d, k, pa.Table.from_pylist(rows, schema=table.schema))
    shards = ShardSet(d)  # structure, rows and tokens all agree with the manifest
    first_of_shard_k = sum(rows_per_shard[:k])
    shards.ids(0)  # the shards before it are fine
    with pytest.raises(ShardError, match=rf"{path}: row 3 holds token id {vocab_size}, outside the vocabulary"):
        shards.ids(first_of_shard_k + 3)


def test_inspect_hashes_before_decoding_and_reports_every_mismatch(shard_dir, tmp_path, capsys):
    d = _copy(shard_dir, tmp_path)
    manifest = read_manifest(d)
    first, second = [p for p, s in zip(manifest.shard_paths, manifest.shards, strict=True) if s.rows][:2]
    row = _read(first).num_rows // 2
    ids = np.asarray(_read(first).column("input_ids")[row].as_py(), np.int32).tobytes()
    _flip(first, first.read_bytes().find(ids), 100)  # 100 bytes of that row's token ids: negative ids now
    _flip(second, 600)
    assert set(hash_problems(read_manifest(d))) == {first, second}
    # Asked to show the flipped row: decoding it would fail (OverflowError on a negative id); nothing decodes it.
    assert inspect_main([str(d), "--row", str(row)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[0] for line in err] == [f"MISMATCH {first}", f"MISMATCH {second}"]
    assert all("sha256" in line for line in err)


# -- item 4: checkpoints that fail their checksum ----------------------------------------------------
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_checkpoint_failing_its_checksum_is_skipped_with_a_message(tmp_path, damage):
    for step in (1, 2):
        checkpoint.save(tmp_path, step, {"w": torch.full((64,), float(step))}, keep_last=5)
    newest = checkpoint.ckpt_dir(tmp_path) / "step-00000002.pt"
    if damage == "flip":
        data = bytearray(newest.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit: same size, torch.load could still read it
        newest.write_bytes(bytes(data))
    else:
        newest.write_bytes(newest.read_bytes()[:-10])
    messages = []
    path, state = checkpoint.latest_valid(tmp_path, log=messages.append)
    assert path.name == "step-00000001.pt" and torch.equal(state["w"], torch.ones(64))
    assert len(messages) == 1 and str(newest) in messages[0]
    assert ("sha256 mismatch" if damage == "flip" else "truncated") in messages[0]


# -- item 7: loading never runs code -----------------------------------------------------------------
def test_a_checkpoint_crafted_to_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    crafted = _save_with_sidecar(tmp_path / "run", 5, {"format_version": checkpoint.FORMAT_VERSION, "step": 5,
                                                        "model": _RunsCode(marker)})
    with pytest.raises(ValueError, match=rf"{crafted}: refused.*could run code: Unsupported global: GLOBAL exec"):
        checkpoint.load(crafted)
    messages = []
    assert checkpoint.latest_valid(tmp_path / "run", log=messages.append) is None
    assert "refused" in messages[0]
    assert not marker.exists()
    # The payload is live: the loader this code used before (weights_only=False) does run it.
    torch.load(crafted, weights_only=False)
    assert marker.exists()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # a cached gaussian in python's state too
    checkpoint.save(tmp_path, 1, {"rng": [checkpoint.rng_state()]}, keep_last=1)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = torch.load(checkpoint.ckpt_dir(tmp_path) / "step-00000001.pt", weights_only=True)  # plain values only
    checkpoint.set_rng_state(state["rng"][0])
    assert (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected


# -- item 6: the learning rate is a function of the step ------------------------------------------------
def _lrs(run_dir: Path) -> dict[int, float]:
    return {json.loads(x)["step"]: json.loads(x)["lr"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()}


def test_lr_follows_the_formula_and_a_resume_applies_a_changed_schedule_at_once(shard_dir, tmp_path, capsys):
    # peak 1e-3, 2 warm-up steps, linear decay to 0 at the last step (paper §4.2), worked out by hand.
    cfg = tiny_config(model={"dropout": 0.0, "attention_dropout": 0.0}, train={"max_steps": 4, "ckpt_every": 100})
    first = tmp_path / "first"
    run(cfg, shard_dir, first)
    assert _lrs(first) == pytest.approx({1: 5e-4, 2: 1e-3, 3: 1e-3, 4: 5e-4}, rel=1e-12)
    state = torch.load(first / "checkpoints" / "step-00000004.pt", weights_only=True)
    assert "scheduler" not in state  # nothing of the schedule is carried in the checkpoint

    # --max-steps 8: zero now at step 8; step 5 = 1e-3 * (8 - 4) / (8 - 2). The stale optimizer lr is 0.
    longer = shutil.copytree(first, tmp_path / "longer")
    capsys.readouterr()
    run(tiny_config(model={"dropout": 0.0, "attention_dropout": 0.0}, train={"max_steps": 8, "ckpt_every": 100}),
        shard_dir, longer, resume="auto")
    assert {s: v for s, v in _lrs(longer).items() if s > 4} == pytest.approx(
        {5: 1e-3 * 4 / 6, 6: 1e-3 * 3 / 6, 7: 1e-3 * 2 / 6, 8: 1e-3 * 1 / 6}, rel=1e-12)
    assert "LR schedule changed on resume" in capsys.readouterr().err
    # ... and that is the lr the optimizer really used for its last update, not only the logged one.
    last = torch.load(longer / "checkpoints" / "step-00000008.pt", weights_only=True)
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == pytest.approx([1e-3 / 6] * 2, rel=1e-12)
    assert all(np.isfinite(v) for v in losses(longer).values())

    # optim.schedule_steps=12 with max_steps 6: step 5 = 1e-3 * (12 - 4) / (12 - 2).
    rescheduled = shutil.copytree(first, tmp_path / "rescheduled")
    run(tiny_config(model={"dropout": 0.0, "attention_dropout": 0.0}, optim={"schedule_steps": 12},
                    train={"max_steps": 6, "ckpt_every": 100}), shard_dir, rescheduled, resume="auto")
    assert {s: v for s, v in _lrs(rescheduled).items() if s > 4} == pytest.approx({5: 1e-3 * 8 / 10, 6: 1e-3 * 7 / 10},
                                                                                  rel=1e-12)
