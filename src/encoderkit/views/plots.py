"""Pictures: the training curves of a run, and attention maps (per head, every layer at once,
attention rollout after Abnar & Zuidema 2020, a vision encoder's class token over its image).

Drawn with matplotlib's Agg backend, so no display is needed; PNGs are written atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from encoderkit.utils.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.cm import ScalarMappable
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

DPI = 100
MAX_FIGURE_INCHES = (24.0, 30.0)  # width, height: beyond this the panels shrink instead
_COLORMAP = "viridis"
_OVERLAY_COLORMAP = "inferno"


def plot_heads(maps: torch.Tensor, tokens: list[str], out: str | Path, title: str = "") -> Path:
    """One layer's heads side by side: a heatmap per head, query rows by key columns.

    ``maps`` is one example's (H, T, T) attention of one layer (``record_attention`` gives
    (B, H, T, T) per layer: pass ``maps[layer][b]``), ``tokens`` its T tokens, which label both
    axes. All heads share one colour scale, [0, 1], with its colour bar. Panels grow with T
    (2 to 6 inches), four to a row; tick labels get smaller as T grows and, past what fits,
    only every k-th token is labelled. The figure is at most ``MAX_FIGURE_INCHES``; at
    ``DPI`` dots per inch.
    """
    H, T = _check_head_maps(maps, "maps")
    check_tokens(tokens, T)
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
    labels = [_display(t) for t in tokens]
    margin = _label_margin(max(len(labels[i]) for i in ticks), fontsize)
    cell_w, cell_h = margin + panel + gap, title_h + panel + margin
    fig_w = quantise(ncols * cell_w + colorbar_w)
    fig_h = quantise(nrows * cell_h + top)

    use_agg()
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(fig_w, fig_h))
    try:
        for head in range(H):
            row, col = divmod(head, ncols)
            left = col * cell_w + margin
            bottom = fig_h - top - row * cell_h - title_h - panel
            ax = fig.add_axes((left / fig_w, bottom / fig_h, panel / fig_w, panel / fig_h))
            ax.imshow(
                maps[head].detach().float().cpu().numpy(),
                cmap=_COLORMAP,
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
                aspect="auto",
            )
            ax.set_title(f"H{head}", fontsize=10, pad=3)
            ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=fontsize)
            ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=fontsize)
            ax.tick_params(length=2, pad=1)
        grid_h = nrows * cell_h
        bar = fig.add_axes(
            (
                (ncols * cell_w + 0.15) / fig_w,
                (fig_h - top - grid_h + margin) / fig_h,
                0.15 / fig_w,
                (grid_h - margin - title_h) / fig_h,
            )
        )
        fig.colorbar(_unit_scale(), cax=bar, label="attention (query row → key column)")
        if title:
            fig.suptitle(_display(title, 200), y=1 - 0.1 / fig_h, va="top", fontsize=12)
        return save_png(fig, out)
    finally:
        plt.close(fig)


def plot_overview(maps: list[torch.Tensor], tokens: list[str], out: str | Path) -> Path:
    """Every layer and head at a glance: row i is layer i ("L{i}"), column j head j ("H{j}").

    Each cell is one (T, T) map, query rows by key columns, without tick labels, on the shared
    [0, 1] colour scale. Cells are 1 inch, smaller when L or H is large enough to pass
    ``MAX_FIGURE_INCHES``.
    """
    L, H, T = check_layer_maps(maps)
    check_tokens(tokens, T)
    left, top, bottom, gap, colorbar_w = 0.5, 0.85, 0.15, 0.06, 0.9
    max_w, max_h = MAX_FIGURE_INCHES
    cell = min(1.0, (max_w - left - colorbar_w) / H - gap, (max_h - top - bottom) / L - gap)
    fig_w = quantise(left + H * (cell + gap) + colorbar_w)
    fig_h = quantise(top + L * (cell + gap) + bottom)

    use_agg()
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(fig_w, fig_h))
    try:
        for layer in range(L):
            for head in range(H):
                x = left + head * (cell + gap)
                y = fig_h - top - (layer + 1) * (cell + gap) + gap
                ax = fig.add_axes((x / fig_w, y / fig_h, cell / fig_w, cell / fig_h))
                ax.imshow(
                    maps[layer][head].detach().float().cpu().numpy(),
                    cmap=_COLORMAP,
                    vmin=0.0,
                    vmax=1.0,
                    interpolation="nearest",
                    aspect="auto",
                )
                ax.set_xticks([])
                ax.set_yticks([])
                if layer == 0:
                    ax.set_title(f"H{head}", fontsize=8, pad=2)
                if head == 0:
                    ax.set_ylabel(f"L{layer}", fontsize=8, rotation=0, ha="right", va="center")
        grid_h = L * (cell + gap)
        bar = fig.add_axes(
            (
                (left + H * (cell + gap) + 0.15) / fig_w,
                (fig_h - top - grid_h + gap) / fig_h,
                0.15 / fig_w,
                (grid_h - gap) / fig_h,
            )
        )
        fig.colorbar(_unit_scale(), cax=bar, label="attention")
        text = _display(" ".join(tokens), 120)
        fig.suptitle(f"{L} layers x {H} heads, {T} tokens: {text}", fontsize=9, y=1 - 0.1 / fig_h)
        return save_png(fig, out)
    finally:
        plt.close(fig)


def attention_rollout(maps: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

    How much each output token draws on each input token through all layers, residuals
    included. Per layer l, with W_l the attention averaged over heads (T, T):

        A_l = normalise_rows(W_l + I)         # the identity stands for the residual connection
        rollout = A_L @ ... @ A_2 @ A_1       # first layer first: applied to the inputs first

    Row i of the result is a distribution over the input tokens (rows sum to 1). ``maps`` is one
    example's (H, T, T) map per layer, in the order the layers run. Computed in float64 and
    returned in the maps' dtype (at least float32).
    """
    _, _, T = check_layer_maps(maps)
    eye = torch.eye(T, dtype=torch.float64)
    rollout = eye
    for layer in maps:
        a = layer.detach().cpu().to(torch.float64).mean(dim=0) + eye  # (H, T, T) -> (T, T)
        rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout
    return rollout.to(torch.promote_types(maps[0].dtype, torch.float32))


def plot_image_attention(
    image: torch.Tensor,
    maps: list[torch.Tensor],
    patch_size: int,
    out: str | Path,
    layer: int = -1,
) -> Path:
    """Where a vision encoder's class token looks: the image, then one panel per head of
    ``layer`` and a last one for the rollout of all layers.

    ``image`` is (C, H, W) with C = 1 (drawn in gray) or 3 (RGB), values in [0, 1]; ``maps``
    one (heads, 1 + N, 1 + N) map per layer, token 0 the class token and tokens 1..N the
    patches in row-major order, N = (H / patch_size) * (W / patch_size). Each head panel shows
    row 0, columns 1: (the class token's attention over the patches) as the patch grid,
    upsampled to the image by repeating each patch's value over its pixels (nearest), laid
    semi-transparently over the image; the rollout panel does the same with the class token's
    row of :func:`attention_rollout`. Each overlay is scaled to its own maximum, so colours
    show where a head looks; the title gives how much of its attention goes to the patches at
    all (the rest goes to the class token).
    """
    image = _check_image(image)
    _, n_heads, tokens = check_layer_maps(maps)
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size <= 0:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    C, height, width = image.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image height and width must be divisible by patch_size {patch_size}, "
            f"got {height} x {width}"
        )
    rows, cols = height // patch_size, width // patch_size
    if tokens != 1 + rows * cols:
        raise ValueError(
            f"a {height} x {width} image in {patch_size} x {patch_size} patches has "
            f"{rows} x {cols} = {rows * cols} patches, so maps must be (H, {1 + rows * cols}, "
            f"{1 + rows * cols}) with the class token first; got T = {tokens}"
        )
    n_layers = len(maps)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
        raise ValueError(
            f"layer must be an int in [{-n_layers}, {n_layers - 1}] ({n_layers} layers), "
            f"got {layer!r}"
        )

    def to_pixels(cls_row: torch.Tensor) -> torch.Tensor:  # (N,) -> (height, width)
        grid = cls_row.reshape(rows, cols)  # row-major patches -> (rows, cols)
        return grid.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)

    chosen = maps[layer].detach().cpu().float()  # (heads, 1 + N, 1 + N)
    panels: list[tuple[str, torch.Tensor | None]] = [("image", None)]
    for head in range(n_heads):
        row = chosen[head, 0, 1:]
        panels.append((f"L{layer % n_layers} H{head} (patches {row.sum():.2f})", row))
    rolled = attention_rollout(maps).float()[0, 1:]
    panels.append((f"rollout L0-L{n_layers - 1} (patches {rolled.sum():.2f})", rolled))

    ncols = min(len(panels), 5)
    nrows = math.ceil(len(panels) / ncols)
    panel_w = 2.5 * min(1.0, 1.6 * width / height)  # tall images: at most 4 inches high
    panel_h = panel_w * height / width
    title_h, gap = 0.35, 0.15
    fig_w = quantise(ncols * (panel_w + gap) + gap)
    fig_h = quantise(nrows * (panel_h + title_h + gap) + gap)
    picture = image.detach().cpu().float()
    shown = picture[0].numpy() if C == 1 else picture.permute(1, 2, 0).numpy()  # (h, w[, 3])
    gray = "gray" if C == 1 else None

    use_agg()
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(fig_w, fig_h))
    try:
        for index, (name, cls_row) in enumerate(panels):
            r, c = divmod(index, ncols)
            x = gap + c * (panel_w + gap)
            y = fig_h - (r + 1) * (panel_h + title_h + gap)
            ax = fig.add_axes((x / fig_w, y / fig_h, panel_w / fig_w, panel_h / fig_h))
            ax.imshow(shown, cmap=gray, vmin=0.0, vmax=1.0, interpolation="nearest")
            if cls_row is not None:
                heat = to_pixels(cls_row)
                peak = float(heat.max())
                ax.imshow(
                    heat.numpy(),
                    cmap=_OVERLAY_COLORMAP,
                    vmin=0.0,
                    vmax=peak if peak > 0 else 1.0,
                    alpha=0.55,
                    interpolation="nearest",
                )
            ax.set_title(name, fontsize=8, pad=3)
            ax.set_xticks([])
            ax.set_yticks([])
        return save_png(fig, out)
    finally:
        plt.close(fig)


_MAX_LABEL_CHARS = 16  # longer tokens are cut with "…" on the axes


def use_agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def _unit_scale() -> ScalarMappable:
    """The colour scale every attention heatmap shares: ``_COLORMAP`` over [0, 1]."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(Normalize(0.0, 1.0), _COLORMAP)


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


def _display(text: str, limit: int = _MAX_LABEL_CHARS) -> str:
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


def _check_image(image: object) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor (C, H, W), got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"image must be (C, H, W) with C = 1 (gray) or 3 (RGB), got shape {tuple(image.shape)}"
        )
    if not image.is_floating_point():
        raise TypeError(f"image must be floating point in [0, 1], got dtype {image.dtype}")
    if image.numel() == 0 or not torch.isfinite(image).all():
        raise ValueError("image must be non-empty and finite")
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"image values must lie in [0, 1], got [{low:g}, {high:g}]")
    return image
