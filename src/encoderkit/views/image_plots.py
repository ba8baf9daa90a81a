"""Where a vision encoder looks in its image: each head's attention from the class token (or,
for mean-pooled models, the patches' attention averaged) over the image, and the attention
rollout across layers (Abnar & Zuidema 2020), on one colour scale.

Drawn with matplotlib's Agg backend (see ``plots``); PNGs are written atomically.
Shape legend: L layers, H heads, T tokens (queries = keys), N patches.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from encoderkit.views.plots import (
    COLORMAP,
    INK,
    check_head_numbers,
    check_layer_maps,
    colorbar,
    display_token,
    new_figure,
    quantise,
    save_png,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    *,
    heads: Sequence[int] | None = None,
    query: Literal["cls", "mean"] = "cls",
    label: str | None = None,
    predicted: str | None = None,
    title: str = "",
) -> Path:
    """Where a vision encoder looks in one image, written as a PNG: see
    :func:`image_attention_figure`."""
    fig = image_attention_figure(
        image, maps, patch_size, layer, heads=heads, query=query, label=label,
        predicted=predicted, title=title,
    )  # fmt: skip
    return save_png(fig, out)


def image_attention_figure(
    image: torch.Tensor,
    maps: list[torch.Tensor],
    patch_size: int,
    layer: int = -1,
    *,
    heads: Sequence[int] | None = None,
    query: Literal["cls", "mean"] = "cls",
    label: str | None = None,
    predicted: str | None = None,
    title: str = "",
) -> Figure:
    """Where a vision encoder looks: the image, one panel per head of ``layer`` (``heads``, all
    by default) and a last one for the rollout of all layers, with a colour bar and a caption.

    ``image`` is (C, H, W) with C = 1 (drawn in gray) or 3 (RGB), values in [0, 1]; ``maps``
    one (heads, 1 + N, 1 + N) map per layer, token 0 the class token and tokens 1..N the
    patches in row-major order, N = (H / patch_size) * (W / patch_size). ``query`` is whose
    attention is drawn: "cls", row 0 (the class token, what a class-token classifier reads),
    or "mean", rows 1..N averaged (what a classifier that mean-pools the patches reads). Each
    head panel shows that row's columns 1.. (the attention over the patches) as the patch
    grid, every pixel of a patch in its patch's colour, with a white line around the image's
    bright parts; the rollout panel does the same with :func:`attention_rollout`. All panels
    share one colour scale, from 0 to the largest weight drawn. Each panel's title gives how
    much of its attention goes to the patches at all (the rest goes to the class token), and
    the image's title the ``label`` and the ``predicted`` class when given. Panels are laid
    out at most six to a row, in as few rows as that needs and no more columns than fill them.
    """
    image = _check_image(image)
    n_layers, n_heads, tokens = check_layer_maps(maps)
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
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
        raise ValueError(
            f"layer must be an int in [{-n_layers}, {n_layers - 1}] ({n_layers} layers), "
            f"got {layer!r}"
        )
    drawn = check_head_numbers(heads, n_heads, "heads")
    if query not in ("cls", "mean"):
        raise ValueError(f"query must be 'cls' or 'mean', got {query!r}")

    def looks(weights: torch.Tensor) -> torch.Tensor:  # (1 + N, 1 + N) -> (1 + N,)
        return weights[0] if query == "cls" else weights[1:].mean(dim=0)

    def to_pixels(patches: torch.Tensor) -> torch.Tensor:  # (N,) -> (height, width)
        grid = patches.reshape(rows, cols)  # row-major patches -> (rows, cols)
        return grid.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)

    chosen = maps[layer].detach().cpu().float()  # (heads, 1 + N, 1 + N)
    shown_layer = layer % n_layers
    panels: list[tuple[str, torch.Tensor]] = []
    for head in drawn:
        row = looks(chosen[head])[1:]
        panels.append((f"L{shown_layer} H{head} (patches {row.sum():.2f})", row))
    rolled = looks(attention_rollout(maps).float())[1:]
    panels.append((f"rollout L0-L{n_layers - 1} (patches {rolled.sum():.2f})", rolled))
    peak = max(float(p.max()) for _, p in panels)
    vmax = peak if peak > 0 else 1.0

    n = 1 + len(panels)
    nrows = math.ceil(n / 6)
    ncols = math.ceil(n / nrows)
    panel_w = 2.2 * min(1.0, 1.6 * width / height)  # tall images: at most 3.5 inches high
    panel_h = panel_w * height / width
    title_h, gap, colorbar_w, line_h = 0.45, 0.15, 0.95, 0.17
    fig_w = quantise(ncols * (panel_w + gap) + gap + colorbar_w)
    caption = _image_caption(
        query, shown_layer, n_layers, rows * cols, patch_size, float(panels[0][1].sum())
    )
    lines = textwrap.wrap(caption, width=max(40, int((fig_w - 0.2) * 72 / (8 * 0.6))))
    top = 0.35 if title else 0.0
    bottom = 0.1 + line_h * len(lines)
    fig_h = quantise(top + nrows * (panel_h + title_h + gap) + bottom)
    picture = image.detach().cpu().float()
    shown = picture[0].numpy() if C == 1 else picture.permute(1, 2, 0).numpy()  # (h, w[, 3])
    brightness = picture.mean(dim=0)  # (h, w): the ink the outline follows
    low, high = float(brightness.min()), float(brightness.max())
    # A dark border around it closes the outline of ink that touches the image's edge.
    framed = torch.nn.functional.pad(brightness, (1, 1, 1, 1), value=low).numpy()  # (h+2, w+2)
    xs, ys = torch.arange(-1, width + 1).numpy(), torch.arange(-1, height + 1).numpy()

    fig = new_figure(fig_w, fig_h)
    image_title = "image"
    if label is not None or predicted is not None:
        parts = [f"true {label}" if label is not None else "", f"predicted {predicted}" if
                 predicted is not None else ""]  # fmt: skip
        image_title = display_token(", ".join(p for p in parts if p), 60)
    for index, (name, patches) in enumerate([(image_title, None), *panels]):
        r, c = divmod(index, ncols)
        x = gap + c * (panel_w + gap)
        y = fig_h - top - (r + 1) * (panel_h + title_h + gap) + gap
        ax = fig.add_axes((x / fig_w, y / fig_h, panel_w / fig_w, panel_h / fig_h))
        if patches is None:
            ax.imshow(
                shown, cmap="gray" if C == 1 else None, vmin=0.0, vmax=1.0, interpolation="nearest"
            )
        else:
            ax.imshow(
                to_pixels(patches).numpy(), cmap=COLORMAP, vmin=0.0, vmax=vmax,
                interpolation="nearest",
            )  # fmt: skip
            if high > low:  # a flat image has no outline to draw
                ax.contour(xs, ys, framed, levels=[(low + high) / 2], colors=INK, linewidths=1)
                ax.set(xlim=(-0.5, width - 0.5), ylim=(height - 0.5, -0.5))
        ax.set_title(name, fontsize=8, pad=3)
        ax.set_xticks([])
        ax.set_yticks([])
    grid_h = nrows * (panel_h + title_h + gap)
    colorbar(
        fig,
        (ncols * (panel_w + gap) + gap + 0.1, fig_h - top - grid_h + gap, grid_h - title_h),
        "attention weight",
        vmax=vmax,
    )
    fig.text(0.1 / fig_w, 0.05 / fig_h, "\n".join(lines), fontsize=8, va="bottom")
    if title:
        fig.suptitle(display_token(title, 200), y=1 - 0.1 / fig_h, va="top", fontsize=11)
    return fig


def _image_caption(
    query: str, layer: int, n_layers: int, n_patches: int, patch_size: int, example: float
) -> str:
    """What an image-attention figure shows, in words, under it."""
    if query == "cls":
        whose = "where the class token (query 0) looks"
        rest = "the rest stays on the class token"
    else:
        whose = (
            f"where the patches look, averaged over the {n_patches} patch queries (this model "
            "mean-pools its patches, so that average is what feeds its classifier)"
        )
        rest = "the rest goes to the class token"
    return (
        f"Layer {layer}: {whose}. Each of the {n_patches} patches ({patch_size} x {patch_size} "
        f"pixels) takes the colour of its attention weight, on one scale for all panels. "
        f"'patches {example:.2f}' means {example:.0%} of that attention goes to the patches; "
        f"{rest}. Rollout: the "
        f"attention carried through all {n_layers} layers, residuals included (Abnar & Zuidema "
        f"2020). White line: the outline of the image's bright parts."
    )


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
