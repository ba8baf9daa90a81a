"""Pictures: the training curves of a run, and attention maps (per head, every layer at once);
``image_plots`` draws where a vision encoder looks in its image with the helpers here.

Drawn with matplotlib's Agg backend, so no display is needed; PNGs are written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from encoderkit.utils.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Loss and the task's metric (accuracy, entity F1, Spearman, ...: the first figure after the
    loss in the evaluation records) against step, train and eval, from ``RUN/metrics.jsonl`` to
    a PNG (``RUN/curves.png`` unless ``out`` is given)."""
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
    metric = _metric_of(records)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    styles: dict[str, dict[str, Any]] = {
        "start": {"marker": "s", "ls": "none", "ms": 8},  # before the first step
        "train": {"alpha": 0.5, "lw": 1},
        "valid": {"marker": "o", "lw": 2},
        "eval": {"marker": "o", "lw": 2},  # runs from before the validation split
        "test": {"marker": "*", "ls": "none", "ms": 12},  # the best checkpoint, once
    }
    for split, style in styles.items():
        rows = [r for r in records if r["split"] == split]
        if rows:
            steps = [r["step"] for r in rows]
            ax_loss.plot(steps, [r["loss"] for r in rows], label=split, **style)
            scored = [r for r in rows if metric in r]
            if scored:
                values = [r[metric] for r in scored]
                ax_acc.plot([r["step"] for r in scored], values, label=split, **style)
    ax_loss.set(title="loss", xlabel="step")
    ax_acc.set(title=metric.replace("_", " "), xlabel="step")
    if all(0 <= r.get(metric, 0) <= 1 for r in records):
        ax_acc.set_ylim(0, 1.01)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    target = Path(out) if out is not None else run / "curves.png"
    try:
        atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return target


def _metric_of(records: list[dict[str, Any]]) -> str:
    """The figure evaluations report after the loss (``accuracy`` for runs that have none)."""
    for record in records:
        if record["split"] in ("valid", "eval", "start"):
            names = [k for k in record if k not in ("step", "epoch", "split", "loss")]
            if names:
                return names[0]
    return "accuracy"


# Attention maps. Shape legend: L layers, H heads, T tokens (queries = keys), N patches.
# Layers and heads are numbered from 0 everywhere ("L0", "H0"), as Python indexes them.
# Each picture is built as a bare ``Figure`` (no pyplot state to leak) by a ``*_figure``
# function, which the tests read back; ``plot_*`` writes it.

DPI = 100
MAX_FIGURE_INCHES = (24.0, 30.0)  # width, height: beyond this the panels shrink instead
OVERVIEW_TOKEN_LABELS = 24  # the overview labels its axes with tokens up to this many
COLORMAP = "viridis"  # perceptual: brightness grows with the value, on any background
INK = "white"  # the outline of an image's bright parts, drawn over its attention


def plot_heads(
    maps: torch.Tensor,
    tokens: list[str],
    out: str | Path,
    title: str = "",
    *,
    head_numbers: Sequence[int] | None = None,
) -> Path:
    """One layer's heads side by side, written as a PNG: see :func:`heads_figure`."""
    return save_png(heads_figure(maps, tokens, title=title, head_numbers=head_numbers), out)


def heads_figure(
    maps: torch.Tensor,
    tokens: list[str],
    *,
    title: str = "",
    head_numbers: Sequence[int] | None = None,
) -> Figure:
    """One layer's heads side by side: a heatmap per head, query rows by key columns.

    ``maps`` is one example's (H, T, T) attention of one layer (``record_attention`` gives
    (B, H, T, T) per layer: pass ``maps[layer][b]``), ``tokens`` its T tokens, which label both
    axes; ``head_numbers`` names the heads drawn ("H3" for a slice ``maps[layer][3:4]``;
    0..H-1 by default). All heads share one colour scale, [0, 1], with its colour bar. Panels
    grow with T (2 to 6 inches), four to a row; tick labels get smaller as T grows and, past
    what fits, only every k-th token is labelled. The figure is at most ``MAX_FIGURE_INCHES``;
    at ``DPI`` dots per inch.
    """
    H, T = _check_head_maps(maps, "maps")
    check_tokens(tokens, T)
    numbers = check_head_numbers(head_numbers, H)
    ncols = min(H, 4)
    nrows = math.ceil(H / ncols)
    title_h, gap, colorbar_w = 0.3, 0.15, 0.9
    top = 0.5 if title else 0.1
    max_w, max_h = MAX_FIGURE_INCHES
    margin_max = _label_margin(_MAX_LABEL_CHARS, 9.0)  # an upper bound
    panel = min(
        max(2.0, min(6.0, 0.8 + 0.22 * T)),
        (max_w - colorbar_w) / ncols - margin_max - gap,
        (max_h - top) / nrows - title_h - margin_max,
    )
    fontsize, step = _tick_font(panel, T)
    ticks = list(range(0, T, step))
    labels = [display_token(t) for t in tokens]
    margin = _label_margin(max(len(labels[i]) for i in ticks), fontsize)
    cell_w, cell_h = margin + panel + gap, title_h + panel + margin
    fig_w = quantise(ncols * cell_w + colorbar_w)
    fig_h = quantise(nrows * cell_h + top)

    fig = new_figure(fig_w, fig_h)
    for index, head in enumerate(numbers):
        row, col = divmod(index, ncols)
        left = col * cell_w + margin
        bottom = fig_h - top - row * cell_h - title_h - panel
        ax = fig.add_axes((left / fig_w, bottom / fig_h, panel / fig_w, panel / fig_h))
        _heatmap(ax, maps[index])
        ax.set_title(f"H{head}", fontsize=10, pad=3)
        ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=fontsize)
        ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=fontsize)
        ax.tick_params(length=2, pad=1)
    grid_h = nrows * cell_h
    colorbar(
        fig,
        (ncols * cell_w + 0.15, fig_h - top - grid_h + margin, grid_h - margin - title_h),
        "attention (query row → key column)",
    )
    if title:
        fig.suptitle(display_token(title, 200), y=1 - 0.1 / fig_h, va="top", fontsize=12)
    return fig


def plot_overview(
    maps: list[torch.Tensor], tokens: list[str], out: str | Path, *, title: str = ""
) -> Path:
    """Every layer and head at a glance, written as a PNG: see :func:`overview_figure`."""
    return save_png(overview_figure(maps, tokens, title=title), out)


def overview_figure(maps: list[torch.Tensor], tokens: list[str], *, title: str = "") -> Figure:
    """Every layer and head at a glance: row i is layer i ("L{i}"), column j head j ("H{j}").

    Each cell is one (T, T) map, query rows by key columns, on the shared [0, 1] colour scale.
    The left column's rows and the bottom row's columns are labelled with the tokens (every
    k-th token where they would not fit) up to ``OVERVIEW_TOKEN_LABELS`` tokens; beyond that
    the title says they are left out. ``title`` (the model's name, say) heads the figure, then
    the sizes and the text. Cells are 1 inch, smaller when L or H is large enough to pass
    ``MAX_FIGURE_INCHES``.
    """
    L, H, T = check_layer_maps(maps)
    check_tokens(tokens, T)
    top, gap, colorbar_w = 0.85, 0.06, 0.9
    max_w, max_h = MAX_FIGURE_INCHES
    labelled = T <= OVERVIEW_TOKEN_LABELS
    labels = [display_token(t) for t in tokens]
    fontsize, step = _tick_font(1.0, T)  # sized for the largest cell, then checked below
    fontsize = min(fontsize, 7.0)
    margin = _label_margin(max(map(len, labels)), fontsize) if labelled else 0.0
    left, bottom = 0.5 + margin, 0.15 + margin
    cell = min(1.0, (max_w - left - colorbar_w) / H - gap, (max_h - top - bottom) / L - gap)
    if labelled and cell < 1.0:
        fontsize, step = _tick_font(cell, T)
        fontsize = min(fontsize, 7.0)
    ticks = list(range(0, T, step))
    fig_w = quantise(left + H * (cell + gap) + colorbar_w)
    fig_h = quantise(top + L * (cell + gap) + bottom)

    fig = new_figure(fig_w, fig_h)
    for layer in range(L):
        for head in range(H):
            x = left + head * (cell + gap)
            y = fig_h - top - (layer + 1) * (cell + gap) + gap
            ax = fig.add_axes((x / fig_w, y / fig_h, cell / fig_w, cell / fig_h))
            _heatmap(ax, maps[layer][head])
            ax.set_xticks([])
            ax.set_yticks([])
            if labelled and layer == L - 1:
                ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=fontsize)
            if labelled and head == 0:
                ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=fontsize)
            ax.tick_params(length=1.5, pad=1)
            if layer == 0:
                ax.set_title(f"H{head}", fontsize=8, pad=2)
            if head == 0:
                ax.set_ylabel(f"L{layer}", fontsize=8, rotation=0, ha="right", va="center")
    grid_h = L * (cell + gap)
    colorbar(
        fig,
        (left + H * (cell + gap) + 0.15, fig_h - top - grid_h + gap, grid_h - gap),
        "attention (query row → key column)",
    )
    sizes = f"{L} layers x {H} heads, {T} tokens"
    if not labelled:
        sizes += f" (axes unlabelled above {OVERVIEW_TOKEN_LABELS} tokens: draw one layer)"
    head_line = f"{display_token(title, 120)}: {sizes}" if title else sizes
    text = display_token(" ".join(tokens), 140)
    fig.suptitle(f"{head_line}\n{text}", fontsize=9, y=1 - 0.1 / fig_h, va="top")
    return fig


def new_figure(width: float, height: float) -> Figure:
    """A bare figure drawn by Agg: no pyplot, so nothing stays open if drawing fails."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _heatmap(ax: Any, weights: torch.Tensor) -> None:
    ax.imshow(
        weights.detach().float().cpu().numpy(),
        cmap=COLORMAP,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        aspect="auto",
    )


def colorbar(fig: Figure, where: tuple[float, float, float], label: str, vmax: float = 1.0) -> None:
    """The colour bar of ``COLORMAP`` over [0, vmax], 0.15 inches wide at ``where`` = (left,
    bottom, height) in inches."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    left, bottom, height = where
    width, fig_h = fig.get_size_inches()
    bar = fig.add_axes((left / width, bottom / fig_h, 0.15 / width, height / fig_h))
    fig.colorbar(ScalarMappable(Normalize(0.0, vmax), COLORMAP), cax=bar, label=label)


def check_head_numbers(
    numbers: Sequence[int] | None, n_heads: int, name: str = "head_numbers"
) -> list[int]:
    """``head_numbers`` of :func:`heads_figure` (one per map) or ``heads`` of
    :func:`image_attention_figure` (indices of the layer's heads); None: 0..n_heads-1."""
    if numbers is None:
        return list(range(n_heads))
    values = list(numbers) if isinstance(numbers, (list, tuple, range)) else None
    if values is None or not all(isinstance(h, int) and not isinstance(h, bool) for h in values):
        raise TypeError(f"{name} must be a list of ints, got {numbers!r}")
    if name == "head_numbers" and len(values) != n_heads:
        raise ValueError(f"head_numbers must name the {n_heads} heads drawn, got {values}")
    if name == "heads" and not values:
        raise ValueError("heads must name at least one head, got []")
    if name == "heads" and not all(0 <= h < n_heads for h in values):
        raise ValueError(f"heads must lie in [0, {n_heads - 1}], got {values}")
    return values


_MAX_LABEL_CHARS = 16  # longer tokens are cut with "…" on the axes


def use_agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def save_png(fig: Figure, out: str | Path) -> Path:
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def quantise(inches: float) -> float:
    """Round a figure side up to a quarter inch: exact in binary, so pixels = inches * DPI."""
    return math.ceil(inches * 4 - 1e-9) / 4


def _label_margin(chars: int, fontsize: float) -> float:
    """Inches a tick label of ``chars`` characters needs beside an axis."""
    return 0.15 + chars * fontsize * 0.62 / 72


def _tick_font(panel: float, T: int) -> tuple[float, int]:
    """Font size for T tick labels along ``panel`` inches, and the step between labels."""
    pitch = panel * 72 / T  # points between neighbouring ticks
    fontsize = max(4.0, min(9.0, 0.8 * pitch))
    return fontsize, max(1, math.ceil(1.1 * fontsize / pitch))


def display_token(text: str, limit: int = _MAX_LABEL_CHARS) -> str:
    """``text`` as matplotlib should show it: literal dollar signs (no mathtext), cut at limit."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _check_head_maps(maps: object, name: str) -> tuple[int, int]:
    """One layer of one example: a floating (H, T, T) tensor. Returns (H, T)."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (H, T, T), got {type(maps).__name__}")
    if maps.dim() != 3:
        hint = " (one example: take maps[layer][b] of record_attention)" if maps.dim() == 4 else ""
        raise ValueError(f"{name} must be 3-D (H, T, T), got shape {tuple(maps.shape)}{hint}")
    H, T, S = maps.shape
    if T != S or T == 0 or H == 0:
        raise ValueError(
            f"{name} must be (H, T, T) with H, T >= 1, queries = keys, got {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {maps.dtype}")
    return H, T


def check_layer_maps(maps: object) -> tuple[int, int, int]:
    """One example's maps of every layer: a non-empty list of (H, T, T). Returns (L, H, T)."""
    if not isinstance(maps, (list, tuple)):
        raise TypeError(
            f"maps must be a list of (H, T, T) tensors, one per layer, got {type(maps).__name__}"
        )
    if not maps:
        raise ValueError("maps is empty: expected one (H, T, T) tensor per layer")
    H, T = _check_head_maps(maps[0], "maps[0]")
    for i, layer in enumerate(maps[1:], start=1):
        if _check_head_maps(layer, f"maps[{i}]") != (H, T):
            raise ValueError(
                f"every layer's maps must have the same shape: maps[0] is {tuple(maps[0].shape)},"
                f" maps[{i}] is {tuple(layer.shape)}"
            )
    return len(maps), H, T


def check_tokens(tokens: object, T: int) -> None:
    if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
        raise TypeError(f"tokens must be a list of str, got {type(tokens).__name__}")
    if len(tokens) != T:
        raise ValueError(f"the maps have T = {T} tokens but {len(tokens)} tokens were given")
