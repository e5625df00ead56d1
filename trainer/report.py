"""Reading a run's metrics.jsonl and drawing loss curves: shared by `make demo` and `make ablate`."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.model import OBJECTIVES


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every logged step of a run, in order. A resumed run logs some steps twice: the later entry wins."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (has the run logged a step yet?)")
    by_step: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                m = json.loads(line)
                by_step[int(m["step"])] = m
    return [by_step[s] for s in sorted(by_step)]


def plot_loss_curves(runs: dict[str, str | Path], out_png: str | Path, title: str = "training loss") -> Path:
    """One panel per objective present in any run (MLM, SBO, NSP), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = {name: read_metrics(d) for name, d in runs.items()}
    present = [o for o in OBJECTIVES if any(f"{o}_loss" in m for ms in metrics.values() for m in ms)]
    fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 3.6), squeeze=False)
    for ax, objective in zip(axes[0], present, strict=True):
        for name, ms in metrics.items():
            points = [(m["step"], m[f"{objective}_loss"]) for m in ms if f"{objective}_loss" in m]
            if points:
                steps, losses = zip(*points, strict=True)
                ax.plot(steps, losses, label=name, linewidth=1.2)
        ax.set_title(f"{objective.upper()} loss")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
