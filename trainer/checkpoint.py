"""Checkpoints: atomic, verified, keep-last-K, with everything an exact resume needs.

Layout (RUN_DIR/checkpoints/):
  step-00001000.pt     torch.save of {format_version, step, model, optimizer, data, rng, config,
                       vocab_sha256, world_size, nonfinite}: tensors and plain Python values only
  step-00001000.json   sidecar written after the .pt: {step, file, bytes, sha256}

Both files are written to a temporary name, flushed, fsync'ed and renamed (os.replace), so a crash
leaves either the old or the new file, never half of one. A checkpoint is valid only if its sidecar
exists and the .pt's size and sha256 match it; `latest_valid` walks from the newest step down and
reports (not raises) every one it skips, so a truncated or corrupt newest checkpoint falls back to the
one before.

Loading never runs code: every load is `torch.load(weights_only=True)`, whose unpickler rebuilds only
tensors and plain containers/numbers/strings, so a file crafted to run code when unpickled is refused
(a ValueError naming it). The sha256 sidecar cannot protect against that: whoever wrote the file wrote
the sidecar. Hence the RNG states are stored as tensors and lists, not numpy / `random` objects.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.schema import file_sha256

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
        return cls(step=int(state["step"]), data_position=int(state["data"]["next_batch"]),
                   nonfinite_total=int(state["nonfinite"]))


def save_training(
    run_dir: Path, ts: TrainState, *, model: dict[str, Any], optimizer: dict[str, Any], rng: list[dict[str, Any]],
    config: dict[str, Any], vocab_sha256: str, world_size: int, keep_last: int,
) -> Path:
    """A training checkpoint: TrainState + the state dicts, per-rank RNG states and the run's identity."""
    state = {
        "model": model, "optimizer": optimizer, "data": {"next_batch": ts.data_position}, "rng": rng,
        "config": config, "vocab_sha256": vocab_sha256, "world_size": world_size, "nonfinite": ts.nonfinite_total,
    }
    return save(run_dir, ts.step, state, keep_last)


def ckpt_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _atomic_write(path: Path, write) -> None:
    """write(file) into a temporary sibling, fsync, rename over `path`, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write step-N.pt + its sidecar atomically, then delete all but the newest `keep_last`."""
    directory = ckpt_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    # Streamed straight to disk (no in-memory copy of a multi-GB state), hashed from the page cache.
    _atomic_write(path, lambda f: torch.save({"format_version": FORMAT_VERSION, "step": step, **state}, f))
    size, digest = file_sha256(path)
    meta = {"step": step, "file": path.name, "bytes": size, "sha256": digest}
    _atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode()))
    for old in sorted(_steps(directory))[:-keep_last]:
        for suffix in (".json", ".pt"):  # sidecar first: a half-deleted checkpoint is simply invalid
            (directory / f"step-{old:08d}{suffix}").unlink(missing_ok=True)
    return path


def _steps(directory: Path) -> list[int]:
    return [int(m.group(1)) for p in directory.glob("step-*.pt") if (m := _NAME.match(p.name))]


def load(path: Path) -> dict[str, Any]:
    """Verify against the sidecar and load; ValueError says what is wrong with the file."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise ValueError(f"{path}: no sidecar {sidecar.name} (the save did not finish)")
    meta = json.loads(sidecar.read_text())
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
    """The newest checkpoint that verifies and loads, or None; every skipped one is reported through `log`."""
    directory = ckpt_dir(run_dir)
    if not directory.is_dir():
        return None
    for step in sorted(_steps(directory), reverse=True):
        path = directory / f"step-{step:08d}.pt"
        try:
            return path, load(path)
        except Exception as e:  # any failure to read means "not usable": say why and try the previous one
            log(f"checkpoint {path} is unusable ({type(e).__name__}: {e}); falling back to the previous one")
    return None


def load_run_or_file(src: str | Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file (verified against its sidecar), or the newest valid one of a run directory."""
    src = Path(src)
    if src.is_file():
        return src, load(src)
    found = latest_valid(src) if src.is_dir() else None
    if found is None:
        raise FileNotFoundError(f"{src}: not a checkpoint file, nor a run directory with a valid checkpoints/step-*.pt")
    return found


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
