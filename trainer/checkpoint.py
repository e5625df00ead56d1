"""Checkpoints: atomic, verified, keep-last-K, with everything an exact resume needs.

Layout (RUN_DIR/checkpoints/):
  step-00001000.pt     torch.save of {format_version, step, model, optimizer, data, rng, config,
                       vocab_sha256, world_size, nonfinite, plan}: tensors and plain Python values only
  step-00001000.json   sidecar written after the .pt: {step, file, bytes, sha256}

Both files are written to a temporary name unique to the writer (contract.rundir.temporary_name),
flushed, fsync'ed and renamed (os.replace), so a crash leaves either the old or the new file, never half
of one. The sidecar's sha256 is of the bytes as they were written (hashed on the way to the file), not of
the file read back after the rename, so it vouches for what this writer wrote. An OSError on the way
(ENOSPC, EIO) removes the temporary and is re-raised as `WriteFailed`, one line naming the file. A checkpoint is valid only if its sidecar
exists and the .pt's size and sha256 match it; `latest_valid` walks from the newest step down and
reports (not raises) every one it skips, so a truncated or corrupt newest checkpoint falls back to the
one before.

Loading never runs code: every load is `torch.load(weights_only=True)`, whose unpickler rebuilds only
tensors and plain containers/numbers/strings, so a file crafted to run code when unpickled is refused
(a ValueError naming it). The sha256 sidecar cannot protect against that: whoever wrote the file wrote
the sidecar. Hence the RNG states are stored as tensors and lists, not numpy / `random` objects.

`load(src)` is the one reader for every consumer (resume, evaluate, export, finetune): a `Checkpoint`
record with the stored config validated (`trainer.config.stored_config`). `read(path)` is the file
layer beneath it (verified, untyped), for tools that inspect or rewrite the raw state.

`RunPlan` is what a resume must keep to continue the same run (docs/integrity.md): the data's identity
and every setting that shapes the batch plan and the masks; `run_plan(cfg, world, manifest)` builds it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import pickle
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from contract.rundir import HashingWriter, WriteFailed, remove_temporaries, temporary_name

if TYPE_CHECKING:
    from contract.schema import ShardDirectory
    from trainer.config import Config

FORMAT_VERSION = 2  # 2: weights_only-loadable (RNG states as plain values), no scheduler state
_NAME = re.compile(r"^step-(\d{8})\.pt$")


@dataclass
class TrainState:
    """Where a run stands, besides model, optimizer and RNG: what the loop advances and a resume restores.

    On disk (format 2) as the checkpoint's `step`, `data.next_batch` and `nonfinite` keys."""

    step: int = 0  # optimizer steps done
    data_position: int = 0  # global micro-batches consumed (trainer/data/: the stream restarts there)
    nonfinite_total: int = 0  # steps skipped for a non-finite gradient, over the whole run

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> TrainState:
        return cls(step=int(state["step"]), data_position=int(state.get("data", {}).get("next_batch", 0)),
                   nonfinite_total=int(state.get("nonfinite", 0)))


# -- the run's plan: what a resume must not change silently -------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    """The data's identity and every setting that shapes the batch plan (trainer/data/plan.py) and the
    masks. Two runs with equal plans see the same micro-batches with the same masks at the same steps.
    The LR schedule is deliberately not here: a resume may change it (it is a function of step and config)."""

    data_sha256: str  # sha256 over the manifest's (shard file, rows, sha256) list: which blocks, in which files
    blocks: int  # rows over all shards
    block_size: int  # the pipeline's --block-size
    seed: int  # train.seed: shuffling, masks, dropout
    objective: str  # model.objective: mlm / mlm+sbo / mlm+nsp
    batch_size: int
    batch_tokens: int
    step_tokens: int
    micro_batches_per_step: int  # world size x train.grad_accum: global micro-batches one step consumes
    bucket_window: int
    pad_to_multiple: int
    holdout_fraction: float
    max_position: int
    phases: tuple[tuple[float, int], ...]  # data.phases: sequence-length phases (their own plans and masks)
    masking: dict[str, Any]  # MaskingConfig's fields (scheme, mask_ratio, geometric_p, ...), seed left to `seed`

    def to_dict(self) -> dict[str, Any]:
        """Flat {"seed": 0, "masking.scheme": "geometric", ...}, plain values (weights_only-loadable)."""
        flat = {k: v for k, v in dataclasses.asdict(self).items() if k != "masking"}
        flat.update({f"masking.{k}": v for k, v in self.masking.items()})
        return {k: plain(v) for k, v in flat.items()}

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """'name: recorded -> now' for every field that differs from a stored `to_dict()`; a field one side
        lacks (a checkpoint from before it was recorded) is not compared."""
        now = self.to_dict()
        return [f"{k} {_short(recorded[k])} -> {_short(now[k])}" for k in now if k in recorded and recorded[k] != now[k]]


def data_identity(manifest: ShardDirectory) -> tuple[str, int]:
    """(sha256 over the shard list, block count) of a shard directory; independent of where it lives."""
    shards = [[s.file, s.rows, s.sha256] for s in manifest.shards]
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest(), sum(r for _, r, _ in shards)


def run_plan(cfg: Config, world: int, manifest: ShardDirectory) -> RunPlan:
    """THE one place a config becomes a RunPlan (a renamed config field is a one-line change here)."""
    data_sha256, blocks = data_identity(manifest)
    masking = {k: v for k, v in dataclasses.asdict(cfg.masking).items() if k not in ("seed", "max_sbo_targets")}
    d = cfg.data
    return RunPlan(
        data_sha256=data_sha256, blocks=blocks, block_size=manifest.block_size, seed=cfg.train.seed,
        objective=str(cfg.model.objective), batch_size=d.batch_size, batch_tokens=d.batch_tokens, step_tokens=d.step_tokens,
        micro_batches_per_step=world * cfg.train.grad_accum, bucket_window=d.bucket_window,
        pad_to_multiple=d.pad_to_multiple, holdout_fraction=d.holdout_fraction, max_position=cfg.model.max_position,
        phases=tuple(tuple(p) for p in d.phases), masking=masking,
    )


def plain(v: Any) -> Any:
    """A value torch.load(weights_only=True) rebuilds: enums as their value, tuples as lists."""
    if isinstance(v, enum.Enum):
        return v.value
    return [plain(x) for x in v] if isinstance(v, tuple | list) else v


def _short(v: Any) -> str:
    return f"{v[:12]}..." if isinstance(v, str) and len(v) == 64 else repr(v)


# -- the typed record every consumer reads -----------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file, verified and typed. Training-only parts (optimizer, rng) are None in a
    checkpoint written by a tool that stores just the model (tests, converters)."""

    path: Path
    sha256: str  # of the .pt, from its sidecar
    config: Config  # validated (stored_config): a bad stored config fails here, for every consumer
    model: dict[str, torch.Tensor]
    vocab_sha256: str
    train_state: TrainState
    world_size: int = 1
    optimizer: dict[str, Any] | None = None
    rng: list[dict[str, Any]] | None = None
    plan: dict[str, Any] | None = None  # RunPlan.to_dict() as saved; None before plans were recorded

    @property
    def step(self) -> int:
        return self.train_state.step

    @classmethod
    def from_state(cls, path: Path, state: dict[str, Any]) -> Checkpoint:
        from trainer.config import stored_config

        config = stored_config(state.get("config", {}))  # its ValueError is the one line that says what to write
        missing = [k for k in ("model", "vocab_sha256") if k not in state]
        if missing:
            raise ValueError(f"{path}: not a model checkpoint (no {', '.join(missing)})")
        return cls(path=path, sha256=_sidecar(path)["sha256"], config=config, model=state["model"],
                   vocab_sha256=state["vocab_sha256"], train_state=TrainState.from_checkpoint(state),
                   world_size=int(state.get("world_size", 1)), optimizer=state.get("optimizer"), rng=state.get("rng"),
                   plan=state.get("plan"))


def save_training(
    run_dir: Path, ts: TrainState, *, model: dict[str, Any], optimizer: dict[str, Any], rng: list[dict[str, Any]],
    config: dict[str, Any], vocab_sha256: str, world_size: int, keep_last: int, plan: RunPlan | None = None,
) -> Path:
    """A training checkpoint: TrainState + the state dicts, per-rank RNG states and the run's identity."""
    state = {
        "model": model, "optimizer": optimizer, "data": {"next_batch": ts.data_position}, "rng": rng,
        "config": config, "vocab_sha256": vocab_sha256, "world_size": world_size, "nonfinite": ts.nonfinite_total,
    }
    if plan is not None:
        state["plan"] = plan.to_dict()
    return save(run_dir, ts.step, state, keep_last)


def ckpt_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def atomic_write(path: Path, write) -> tuple[int, str]:
    """write(file) into a temporary sibling unique to this call, fsync, rename over `path`, fsync the
    directory; returns (bytes, sha256) of what was written. On any failure the temporary is removed; an
    OSError (disk full, I/O error) becomes WriteFailed naming `path`."""
    tmp = temporary_name(path)
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = HashingWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = (writer.error if writer is not None else None) or (e if isinstance(e, OSError) else None)
        if cause is not None and not isinstance(cause, WriteFailed):
            raise WriteFailed(path, cause) from None
        raise
    return writer.size, writer.sha.hexdigest()


def save(run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write step-N.pt + its sidecar atomically, then delete all but the newest `keep_last`."""
    directory = ckpt_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    # Streamed straight to disk (no in-memory copy of a multi-GB state), hashed on the way.
    size, digest = atomic_write(path, lambda f: torch.save({"format_version": FORMAT_VERSION, "step": step, **state}, f))
    meta = {"step": step, "file": path.name, "bytes": size, "sha256": digest}
    atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode()))
    for old in sorted(_steps(directory))[:-keep_last]:
        for suffix in (".json", ".pt"):  # sidecar first: a half-deleted checkpoint is simply invalid
            (directory / f"step-{old:08d}{suffix}").unlink(missing_ok=True)
    return path


def _steps(directory: Path) -> list[int]:
    return [int(m.group(1)) for p in directory.glob("step-*.pt") if (m := _NAME.match(p.name))]


def _sidecar(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise ValueError(f"{path}: no sidecar {sidecar.name} (the save did not finish)")
    return json.loads(sidecar.read_text())


def read(path: Path) -> dict[str, Any]:
    """The raw state of one checkpoint file, verified against its sidecar; ValueError says what is wrong."""
    from contract.schema import file_sha256

    path = Path(path)
    meta = _sidecar(path)
    size, digest = file_sha256(path)
    if size != meta["bytes"]:
        raise ValueError(f"{path}: truncated ({size} bytes, expected {meta['bytes']})")
    if digest != meta["sha256"]:
        raise ValueError(f"{path}: sha256 mismatch (corrupt file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a global: the file wants to build arbitrary objects
        # torch's message is a page of advice (including how to load it anyway); keep only what was refused.
        what = re.search(r"Unsupported (global|operand)[^.]*", str(e))
        first = what.group(0) if what else " ".join(str(e).split())[:200]
        raise ValueError(
            f"{path}: refused, it holds Python objects beyond tensors and plain values (a checkpoint written "
            f"by this trainer never does; format 1 files held numpy RNG state) and loading it could run code: {first}"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: checkpoint format {version}, this code reads {FORMAT_VERSION}")
    return state


def latest_valid(run_dir: Path, log=lambda msg: print(msg, file=sys.stderr)) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint file that verifies and reads, or None; every skipped one is reported through `log`."""
    directory = ckpt_dir(run_dir)
    if not directory.is_dir():
        return None
    for step in sorted(_steps(directory), reverse=True):
        path = directory / f"step-{step:08d}.pt"
        try:
            return path, read(path)
        except Exception as e:  # any failure to read means "not usable": say why and try the previous one
            log(f"checkpoint {path} is unusable ({type(e).__name__}: {e}); falling back to the previous one")
    return None


def latest(run_dir: Path, log=lambda msg: print(msg, file=sys.stderr)) -> Checkpoint | None:
    """The newest valid checkpoint of a run directory as a Checkpoint, or None (`--resume auto`)."""
    found = latest_valid(run_dir, log)
    return None if found is None else Checkpoint.from_state(*found)


def load(src: str | Path) -> Checkpoint:
    """A checkpoint file (verified against its sidecar), or the newest valid one of a run directory."""
    src = Path(src)
    if src.is_file():
        return Checkpoint.from_state(src, read(src))
    found = latest(src) if src.is_dir() else None
    if found is None:
        raise FileNotFoundError(f"{src}: not a checkpoint file, nor a run directory with a valid checkpoints/step-*.pt")
    return found


def remove_stale_temporaries(run_dir: Path, log) -> None:
    """Debris of interrupted saves (a full disk, kill -9 mid-write); only while holding the run's lock."""
    remove_temporaries(ckpt_dir(run_dir), log)
    remove_temporaries(Path(run_dir), log)


# -- RNG state: every generator that influences training, as tensors and plain values (weights_only) --
def rng_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    algorithm, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {"algorithm": algorithm, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    np.random.set_state((npy["algorithm"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
