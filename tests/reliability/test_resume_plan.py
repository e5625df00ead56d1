"""A resume continues the same run or says why not (issue 20 item 2): other shards with the same
vocabulary, another seed, batch size or masking scheme were all accepted and continued in another plan,
and config.json was overwritten with the new values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.cli import run_main
from tests.trainer.conftest import set_args, tiny_config
from trainer.__main__ import main as trainer_main
from trainer.train import run


def _argv(shards: Path, out: Path, **sections) -> list[str]:
    cfg = tiny_config(**{"train": {"max_steps": 4, "ckpt_every": 2}, **sections})
    return ["--config", "tiny", "--data", str(shards), "--out", str(out), *set_args(cfg), "--resume", "auto"]


@pytest.fixture(scope="module")
def started(small_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plan") / "run"
    run(tiny_config(train={"max_steps": 2, "ckpt_every": 2}), small_shards, out)
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _error(argv: list[str], capsys) -> str:
    assert run_main(trainer_main, argv) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(("change", "named"), [
    ({"train": {"max_steps": 4, "ckpt_every": 2, "seed": 1}}, "seed 0 -> 1"),
    ({"data": {"batch_size": 8, "num_workers": 0}}, "batch_size 4 -> 8"),
    ({"data": {"batch_size": 4, "num_workers": 0, "masking": {"scheme": "subword"}}}, "masking.scheme 'geometric' -> 'subword'"),
    ({"data": {"batch_size": 4, "num_workers": 0, "masking": {"mask_ratio": 0.2}}}, "masking.mask_ratio 0.15 -> 0.2"),
    ({"train": {"max_steps": 4, "ckpt_every": 2, "grad_accum": 2}}, "micro_batches_per_step 1 -> 2"),
])
def test_a_resume_with_other_batch_or_mask_settings_is_refused_in_one_line(started, small_shards, tmp_path, capsys,
                                                                            change, named):
    out = _copy(started, tmp_path)
    line = _error(_argv(small_shards, out, **change), capsys)
    assert named in line and "--allow-plan-change" in line, line


def test_a_resume_on_other_shards_with_the_same_vocabulary_is_refused(started, other_shards, tmp_path, capsys):
    out = _copy(started, tmp_path)
    line = _error(_argv(other_shards, out), capsys)
    assert "data_sha256" in line and "blocks" in line, line


def test_allow_plan_change_continues_and_keeps_history_not_config_json(started, small_shards, tmp_path, capsys):
    out = _copy(started, tmp_path)
    before = (out / "config.json").read_text()
    argv = _argv(small_shards, out, train={"max_steps": 4, "ckpt_every": 2, "seed": 7})
    assert run_main(trainer_main, [*argv, "--allow-plan-change"]) == 0
    assert (out / "config.json").read_text() == before  # the run's config as it started
    (entry,) = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert entry["step"] == 2 and entry["plan_changes"] == ["seed 0 -> 7"]
    assert "train.seed 0 -> 7" in entry["config_changes"]


def test_an_lr_only_change_is_allowed_and_recorded(started, small_shards, tmp_path, capsys):
    out = _copy(started, tmp_path)
    argv = _argv(small_shards, out, optim={"lr": 5e-4, "warmup_steps": 2})
    assert run_main(trainer_main, argv) == 0
    (entry,) = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert entry["plan_changes"] == [] and set(entry["config_changes"]) == {"optim.lr 0.001 -> 0.0005", "train.max_steps 2 -> 4"}
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 1e-3
