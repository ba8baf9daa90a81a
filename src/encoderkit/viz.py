"""Pictures: the training curves of a run.

Drawn with matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

from encoderkit.files import atomic_write


def plot_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Loss and accuracy against step, train and eval, from ``RUN/metrics.jsonl`` to a PNG
    (``RUN/curves.png`` unless ``out`` is given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"expected {path.name} in {run}, found none")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path} holds no metrics yet")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for split, style in (("train", {"alpha": 0.5, "lw": 1}), ("eval", {"marker": "o", "lw": 2})):
        rows = [r for r in records if r["split"] == split]
        if rows:
            steps = [r["step"] for r in rows]
            ax_loss.plot(steps, [r["loss"] for r in rows], label=split, **style)
            ax_acc.plot(steps, [r["accuracy"] for r in rows], label=split, **style)
    ax_loss.set(title="loss", xlabel="step")
    ax_acc.set(title="accuracy", xlabel="step", ylim=(0, 1.01))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    target = Path(out) if out is not None else run / "curves.png"
    try:
        atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return target
