"""Training curves: the PNG is drawn from the metrics, at its size, and written atomically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the curves are drawn with matplotlib")
pytest.importorskip("PIL", reason="the test reads the PNG back with Pillow")

from PIL import Image

from encoderkit.viz import plot_run

TRAIN_COLOUR, EVAL_COLOUR = (31, 119, 180), (255, 127, 14)  # matplotlib's C0 and C1


def train_records(steps: int = 40) -> list[dict]:
    return [
        {"step": s, "epoch": 0, "split": "train", "loss": 2.3 / s**0.5, "accuracy": 1 - 0.9 / s,
         "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1e4}
        for s in range(1, steps + 1)
    ]  # fmt: skip


def eval_records(steps: int = 40, every: int = 10) -> list[dict]:
    return [
        {"step": s, "epoch": 0, "split": "eval", "loss": 2.0 / s**0.5, "accuracy": 1 - 1.0 / s}
        for s in range(every, steps + 1, every)
    ]


def write_metrics(run: Path, records: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (1000, 400)
        return np.asarray(img.convert("RGB")).astype(np.int16)


def pixels_near(image: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(image - np.array(colour)).max(axis=-1) <= tol).sum())


def test_plot_run_draws_train_and_eval_curves(tmp_path):
    write_metrics(tmp_path, train_records() + eval_records())
    path = plot_run(tmp_path)
    assert path == tmp_path / "curves.png"
    image = read_png(path)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # axes, text and lines, not blank
    assert (image == 255).all(axis=-1).mean() > 0.5  # on a white page
    assert pixels_near(image, EVAL_COLOUR, tol=2) > 100  # the eval curves are drawn opaque
    assert pixels_near(image, tuple((c + 255) // 2 for c in TRAIN_COLOUR)) > 100  # train: alpha 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_plot_run_with_train_records_only(tmp_path):
    write_metrics(tmp_path, train_records(5))
    image = read_png(plot_run(tmp_path))
    assert pixels_near(image, tuple((c + 255) // 2 for c in TRAIN_COLOUR)) > 50
    assert pixels_near(image, EVAL_COLOUR, tol=60) == 0  # no eval line, no eval legend entry


def test_the_picture_follows_the_metrics(tmp_path):
    write_metrics(tmp_path / "a", train_records() + eval_records())
    write_metrics(tmp_path / "b", train_records() + eval_records(every=5))
    a, b = read_png(plot_run(tmp_path / "a")), read_png(plot_run(tmp_path / "b"))
    assert (a != b).any(axis=-1).sum() > 100


def test_plot_run_writes_to_out_when_given(tmp_path):
    run = tmp_path / "run"
    write_metrics(run, eval_records())
    out = tmp_path / "figures" / "loss.png"  # a directory that does not exist yet
    assert plot_run(str(run), out=str(out)) == out
    read_png(out)
    assert not (run / "curves.png").exists()
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]


def test_a_run_without_metrics_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"metrics.jsonl in {re.escape(str(tmp_path))}"):
        plot_run(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_metrics_raise_value_error(tmp_path, content):
    (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(ValueError, match="holds no metrics yet"):
        plot_run(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_failed_write_keeps_the_old_png_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    write_metrics(tmp_path, train_records() + eval_records())
    old = plot_run(tmp_path).read_bytes()

    def crash_halfway(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", crash_halfway)
    try:
        with pytest.raises(OSError, match="disk full"):
            plot_run(tmp_path)
    finally:
        plt.close("all")  # plot_run leaves its figure open when the write fails
    assert (tmp_path / "curves.png").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]
