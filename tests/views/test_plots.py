"""Training curves and attention maps: each PNG is drawn from its data, at its size, and written
atomically; attention rollout matches a hand computation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the curves are drawn with matplotlib")
pytest.importorskip("PIL", reason="the test reads the PNG back with Pillow")

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from PIL import Image

from encoderkit.views.image_plots import (
    attention_rollout,
    image_attention_figure,
    plot_image_attention,
)
from encoderkit.views.plots import (
    DPI,
    MAX_FIGURE_INCHES,
    OVERVIEW_TOKEN_LABELS,
    heads_figure,
    overview_figure,
    plot_heads,
    plot_overview,
    plot_run,
)

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


# Attention maps -------------------------------------------------------------------------------

TOKENS = ["[CLS]", "the", "cat", "sat", "[SEP]"]
VIRIDIS_TOP = (253, 231, 37)  # viridis at 1.0: a query's whole attention on one key


def random_maps(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).softmax(dim=-1)


def open_png(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """The PNG as (h, w, 3) ints, after checking it is a PNG of ``size`` and not blank."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        if size is not None:
            assert img.size == size
        rgb = img.convert("RGB")
        assert len(rgb.getcolors(1_000_000)) > 50  # heatmaps, text, colour bar: not blank
        return np.asarray(rgb).astype(np.int16)


def test_plot_heads_size_follows_its_layout(tmp_path):
    # 4 heads of T = 5: one row of four 2-inch panels (the smallest), 9 pt labels with a
    # 0.54-inch margin; (4 x 2.69 + 0.9 colour bar) x (2.84 + 0.5 title) inches, rounded up to
    # a quarter inch, at 100 dpi.
    assert DPI == 100
    out = plot_heads(random_maps(4, 5, 5), TOKENS, tmp_path / "heads.png", title="layer 0")
    assert out == tmp_path / "heads.png"
    open_png(out, (1175, 350))
    assert [p.name for p in tmp_path.iterdir()] == ["heads.png"]
    assert plt.get_fignums() == []


def test_plot_heads_grows_with_heads_and_tokens_within_limits(tmp_path):
    def size(H: int, T: int) -> tuple[int, int]:
        tokens = [f"t{i}" for i in range(T)]
        with Image.open(plot_heads(random_maps(H, T, T), tokens, tmp_path / "h.png")) as img:
            return img.size

    small, more_heads, more_tokens = size(2, 5), size(8, 5), size(2, 20)
    assert more_heads[0] > small[0] and more_heads[1] > 2 * small[1] - 50  # 4 wide, 2 rows
    assert more_tokens[0] > small[0] and more_tokens[1] > small[1]  # bigger panels
    long_text = size(4, 300)  # 6-inch panels would make it 27 inches wide: they shrink
    assert long_text[0] <= MAX_FIGURE_INCHES[0] * DPI and long_text[1] <= MAX_FIGURE_INCHES[1] * DPI


def test_plot_heads_draws_queries_as_rows_and_keys_as_columns(tmp_path):
    every_query_on_key_0 = torch.zeros(1, 5, 5)
    every_query_on_key_0[0, :, 0] = 1.0
    image = open_png(plot_heads(every_query_on_key_0, TOKENS, tmp_path / "h.png"))
    panel = image[:, : image.shape[1] - 100]  # leave out the colour bar on the right
    ys, xs = np.nonzero(np.abs(panel - np.array(VIRIDIS_TOP)).max(axis=-1) <= 3)
    # one 2-inch panel of 5 cells: the bright cells form a column 40 px wide, 200 px high
    assert 36 <= xs.max() - xs.min() + 1 <= 42
    assert 195 <= ys.max() - ys.min() + 1 <= 202


def test_the_heads_picture_follows_the_maps(tmp_path):
    a = open_png(plot_heads(random_maps(2, 5, 5, seed=1), TOKENS, tmp_path / "a.png"))
    b = open_png(plot_heads(random_maps(2, 5, 5, seed=2), TOKENS, tmp_path / "b.png"))
    assert (a != b).any(axis=-1).sum() > 1000


def test_plot_overview_size_and_a_token_text_matplotlib_would_parse(tmp_path):
    # 3 layers x 4 heads of 1-inch cells with 0.06 gaps, T = 5 tokens labelled at 7 pt, the
    # longest "[CLS]": a label margin of 0.15 + 5 x 7 x 0.62 / 72 = 0.45 inches left and below.
    # (0.5 + 0.45 + 4 x 1.06 + 0.9) x (0.85 + 3 x 1.06 + 0.15 + 0.45) inches, rounded up to a
    # quarter inch. The tokens "$", "}", "$" would be mathtext (and a parse error) unless escaped.
    maps = [random_maps(4, 5, 5, seed=s) for s in range(3)]
    tokens = ["[CLS]", "$", "}", "$", "[SEP]"]
    open_png(plot_overview(maps, tokens, tmp_path / "all.png"), (625, 475))
    open_png(plot_heads(maps[0], tokens, tmp_path / "one.png", title="$}$"))
    assert plt.get_fignums() == []


def colour_bars(fig: Figure) -> list:
    """The figure's colour bars (matplotlib marks a colour bar's axes with ``_colorbar``)."""
    return [ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None]


def tick_texts(labels) -> list[str]:
    return [t.get_text() for t in labels]


def test_heads_figure_names_the_heads_it_draws():
    maps = random_maps(12, 5, 5)
    fig = heads_figure(maps[3:4], TOKENS, title="MiniLM, layer 2, head 3", head_numbers=[3])
    (ax,) = panels(fig)
    assert ax.get_title() == "H3"  # the head asked for, not H0
    assert tick_texts(ax.get_xticklabels()) == TOKENS == tick_texts(ax.get_yticklabels())
    assert torch.equal(torch.from_numpy(ax.images[0].get_array().data), maps[3])
    assert fig._suptitle.get_text() == "MiniLM, layer 2, head 3"
    (bar,) = colour_bars(fig)
    assert (bar.norm.vmin, bar.norm.vmax) == (0.0, 1.0)
    assert bar.ax.get_ylabel() == "attention (query row → key column)"
    all_heads = heads_figure(maps[:6], TOKENS)
    assert [ax.get_title() for ax in panels(all_heads)] == [f"H{h}" for h in range(6)]
    with pytest.raises(ValueError, match=r"must name the 2 heads drawn, got \[3\]"):
        heads_figure(maps[:2], TOKENS, head_numbers=[3])


def test_overview_figure_labels_tokens_and_names_the_model():
    maps = [random_maps(4, 5, 5, seed=s) for s in range(3)]
    fig = overview_figure(maps, TOKENS, title="all-MiniLM-L6-v2")
    cells = panels(fig)
    assert len(cells) == 12 and len(colour_bars(fig)) == 1
    assert fig._suptitle.get_text() == (
        "all-MiniLM-L6-v2: 3 layers x 4 heads, 5 tokens\n[CLS] the cat sat [SEP]"
    )
    grid = [cells[4 * layer : 4 * layer + 4] for layer in range(3)]
    assert [ax.get_title() for ax in grid[0]] == ["H0", "H1", "H2", "H3"]
    assert [row[0].get_ylabel() for row in grid] == ["L0", "L1", "L2"]
    for layer, row in enumerate(grid):
        for head, ax in enumerate(row):  # tokens on the left column and the bottom row only
            assert tick_texts(ax.get_yticklabels()) == (TOKENS if head == 0 else [])
            assert tick_texts(ax.get_xticklabels()) == (TOKENS if layer == 2 else [])
            assert torch.equal(torch.from_numpy(ax.images[0].get_array().data), maps[layer][head])


def test_overview_figure_leaves_out_tokens_above_the_limit_and_says_so():
    T = OVERVIEW_TOKEN_LABELS + 1
    fig = overview_figure([random_maps(2, T, T)], [f"w{i}" for i in range(T)])
    assert all(ax.get_xticklabels() == [] == ax.get_yticklabels() for ax in panels(fig))
    title = fig._suptitle.get_text()
    assert title.startswith(f"1 layers x 2 heads, {T} tokens (axes unlabelled above 24 tokens")
    shown = overview_figure([random_maps(2, 24, 24)], [f"w{i}" for i in range(24)])
    # 24 tokens along 1 inch: 3 pt apart, so 4 pt labels on every second token
    assert tick_texts(panels(shown)[0].get_yticklabels()) == [f"w{i}" for i in range(0, 24, 2)]


def hand_maps() -> list[torch.Tensor]:
    """2 layers x 2 heads, T = 3, chosen so the rollout is exact in binary."""
    eye = torch.eye(3, dtype=torch.float64)
    cycle = eye[[1, 2, 0]]  # query i looks at key i + 1 (mod 3)
    first, last = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    first[:, 0], last[:, 2] = 1.0, 1.0
    return [torch.stack([eye, cycle]), torch.stack([first, last])]


def test_attention_rollout_by_hand():
    # Layer 1: mean of heads [[.5,.5,0],[0,.5,.5],[.5,0,.5]]; + I and rows renormalised:
    # A1 = [[.75,.25,0],[0,.75,.25],[.25,0,.75]]. Layer 2: mean [[.5,0,.5]] in every row;
    # A2 = [[.75,0,.25],[.25,.5,.25],[.25,0,.75]]. Rollout = A2 @ A1.
    expected = torch.tensor(
        [[0.625, 0.1875, 0.1875], [0.25, 0.4375, 0.3125], [0.375, 0.0625, 0.5625]],
        dtype=torch.float64,
    )
    rollout = attention_rollout(hand_maps())
    assert rollout.dtype == torch.float64 and torch.equal(rollout, expected)
    reversed_order = attention_rollout(hand_maps()[::-1])  # A1 @ A2: the order matters
    assert not torch.allclose(reversed_order, expected)


def test_attention_rollout_properties():
    maps = [random_maps(3, 7, 7, seed=s) for s in range(5)]
    rollout = attention_rollout(maps)
    assert rollout.shape == (7, 7) and rollout.dtype == torch.float32
    torch.testing.assert_close(rollout.sum(dim=-1), torch.ones(7), atol=1e-6, rtol=0)
    assert (rollout >= 0).all()
    identity = [torch.eye(7).expand(3, 7, 7) for _ in range(4)]
    assert torch.equal(attention_rollout(identity), torch.eye(7))
    one_layer = attention_rollout(maps[:1])  # a single layer is (mean + I) / 2
    torch.testing.assert_close(one_layer, (maps[0].mean(dim=0) + torch.eye(7)) / 2)


def class_token_on(patch: int, heads: int, n_patches: int, layers: int = 2) -> list[torch.Tensor]:
    """Every head's class token puts all its attention on one patch (token 1 + patch)."""
    maps = random_maps(heads, 1 + n_patches, 1 + n_patches)
    maps[:, 0] = 0.0
    maps[:, 0, 1 + patch] = 1.0
    return [maps.clone() for _ in range(layers)]


def test_image_attention_figure_content():
    # A 4 x 4 gray image in 2 x 2 patches, 2 layers of 3 heads: the class token of every head
    # looks at patch 1 alone, so each head panel is 1 on patch 1's pixels and 0 elsewhere.
    image = torch.zeros(1, 4, 4)
    image[0, :, 1] = 1.0  # a bright stroke on black
    maps = class_token_on(1, 3, 4)
    fig = image_attention_figure(
        image, maps, 2, layer=1, label="7", predicted="1 (40%)", title="run (digits)"
    )
    axes = panels(fig)
    rolled = attention_rollout(maps)[0, 1:].sum()
    assert [ax.get_title() for ax in axes] == [
        "true 7, predicted 1 (40%)", "L1 H0 (patches 1.00)", "L1 H1 (patches 1.00)",
        "L1 H2 (patches 1.00)", f"rollout L0-L1 (patches {rolled:.2f})",
    ]  # fmt: skip
    assert torch.equal(torch.from_numpy(axes[0].images[0].get_array().data), image[0])
    expected = torch.zeros(4, 4)
    expected[:2, 2:] = 1.0  # patch 1: rows 0-1, columns 2-3
    for ax in axes[1:4]:
        assert torch.equal(torch.from_numpy(ax.images[0].get_array().data), expected)
        assert len(ax.collections) == 1  # the white outline of the stroke
    (bar,) = colour_bars(fig)
    assert (bar.norm.vmin, bar.norm.vmax) == (0.0, 1.0)  # the largest weight drawn
    assert bar.ax.get_ylabel() == "attention weight"
    assert all(ax.images[0].norm.vmax == 1.0 for ax in axes[1:])  # one scale for all panels
    caption = fig.texts[0].get_text().replace("\n", " ")
    assert caption.startswith("Layer 1: where the class token (query 0) looks.")
    assert "'patches 1.00' means 100% of that attention goes to the patches" in caption
    assert fig._suptitle.get_text() == "run (digits)"


@pytest.mark.parametrize(
    ("heads", "panel_count", "columns"),
    [(1, 3, 3), (4, 6, 6), (5, 7, 4), (12, 14, 5)],  # image + heads + rollout
)
def test_image_attention_grid_fits_the_panels_drawn(heads, panel_count, columns):
    fig = image_attention_figure(torch.rand(1, 4, 4), class_token_on(0, heads, 4), 2)
    lefts = sorted({round(ax.get_position().x0, 6) for ax in panels(fig)})
    rows = -(-panel_count // columns)
    assert len(panels(fig)) == panel_count and len(lefts) == columns
    assert columns * rows - panel_count < rows  # no row ends more than one panel short


def test_image_attention_figure_one_head_and_the_mean_query():
    # Mean pooling reads the patches: "mean" draws rows 1..N averaged, not the class token's row.
    maps = [random_maps(4, 5, 5, seed=s) for s in range(2)]
    fig = image_attention_figure(torch.rand(1, 4, 4), maps, 2, heads=[2], query="mean")
    axes = panels(fig)
    assert [ax.get_title().split(" (")[0] for ax in axes] == ["image", "L1 H2", "rollout L0-L1"]
    mean_row = maps[1][2, 1:, 1:].mean(dim=0)  # (N,)
    drawn = torch.from_numpy(axes[1].images[0].get_array().data)
    torch.testing.assert_close(drawn[::2, ::2].flatten(), mean_row)
    assert f"(patches {mean_row.sum():.2f})" in axes[1].get_title()
    assert "averaged over the 4 patch queries" in fig.texts[0].get_text().replace("\n", " ")
    with pytest.raises(ValueError, match=r"heads must lie in \[0, 3\], got \[4\]"):
        image_attention_figure(torch.rand(1, 4, 4), maps, 2, heads=[4])
    with pytest.raises(ValueError, match="query must be 'cls' or 'mean', got 'max'"):
        image_attention_figure(torch.rand(1, 4, 4), maps, 2, query="max")


def test_plot_image_attention_rgb_and_rectangular(tmp_path):
    # A 32 x 48 red image in 8 x 8 patches (4 x 6), 2 heads: 4 panels in one row.
    image = torch.zeros(3, 32, 48)
    image[0] = 1.0
    fig = image_attention_figure(image, class_token_on(3, 2, 24), 8, layer=0)
    axes = panels(fig)
    assert len(axes) == 4 and len({round(ax.get_position().y0, 6) for ax in axes}) == 1
    assert torch.equal(torch.from_numpy(axes[0].images[0].get_array()), image.permute(1, 2, 0))
    assert all(len(ax.collections) == 0 for ax in axes)  # a flat image has no outline
    out = plot_image_attention(image, class_token_on(3, 2, 24), 8, tmp_path / "rgb.png", layer=0)
    open_png(out)
    assert plt.get_fignums() == []


def test_figures_are_closed_and_no_file_is_left_when_the_write_fails(tmp_path, monkeypatch):
    def crash(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", crash)
    maps = [random_maps(2, 5, 5)]
    calls = [
        lambda: plot_heads(maps[0], TOKENS, tmp_path / "a.png"),
        lambda: plot_overview(maps, TOKENS, tmp_path / "b.png"),
        lambda: plot_image_attention(torch.rand(1, 4, 4), class_token_on(0, 2, 4), 2,
                                     tmp_path / "c.png"),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(OSError, match="disk full"):
            call()
        assert plt.get_fignums() == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda o: plot_heads(random_maps(1, 2, 5, 5), TOKENS, o), ValueError,
         r"3-D \(H, T, T\), got shape \(1, 2, 5, 5\) \(one example: take maps\[layer\]\[b\]"),
        (lambda o: plot_heads(random_maps(2, 5, 4), TOKENS, o), ValueError,
         r"\(H, T, T\) with H, T >= 1, queries = keys, got \(2, 5, 4\)"),
        (lambda o: plot_heads(torch.ones(2, 5, 5, dtype=torch.long), TOKENS, o), TypeError,
         "floating point"),
        (lambda o: plot_heads(random_maps(2, 5, 5), TOKENS[:4], o), ValueError,
         "T = 5 tokens but 4 tokens were given"),
        (lambda o: plot_heads(random_maps(2, 5, 5), "the cat", o), TypeError,
         "tokens must be a list of str"),
        (lambda o: plot_heads([random_maps(2, 5, 5)], TOKENS, o), TypeError,
         r"maps must be a torch.Tensor \(H, T, T\), got list"),
        (lambda o: plot_overview([], TOKENS, o), ValueError, "maps is empty"),
        (lambda o: plot_overview(random_maps(2, 5, 5), TOKENS, o), TypeError,
         "maps must be a list of"),
        (lambda o: plot_overview([random_maps(2, 5, 5), random_maps(3, 5, 5)], TOKENS, o),
         ValueError, r"maps\[0\] is \(2, 5, 5\), maps\[1\] is \(3, 5, 5\)"),
        (lambda o: attention_rollout([]), ValueError, "maps is empty"),
        (lambda o: plot_image_attention(torch.rand(1, 4, 4), class_token_on(0, 2, 4), 2, o,
                                        layer=2), ValueError,
         r"layer must be an int in \[-2, 1\] \(2 layers\), got 2"),
        (lambda o: plot_image_attention(torch.rand(2, 4, 4), class_token_on(0, 2, 4), 2, o),
         ValueError, r"C = 1 \(gray\) or 3 \(RGB\), got shape \(2, 4, 4\)"),
        (lambda o: plot_image_attention(torch.rand(4, 4), class_token_on(0, 2, 4), 2, o),
         ValueError, r"got shape \(4, 4\)"),
        (lambda o: plot_image_attention(torch.rand(1, 4, 4) * 255, class_token_on(0, 2, 4), 2,
                                        o), ValueError, r"values must lie in \[0, 1\]"),
        (lambda o: plot_image_attention(torch.rand(1, 4, 6), class_token_on(0, 2, 6), 4, o),
         ValueError, "divisible by patch_size 4, got 4 x 6"),
        (lambda o: plot_image_attention(torch.rand(1, 4, 4), class_token_on(0, 2, 16), 2, o),
         ValueError, r"2 x 2 = 4 patches, so maps must be \(H, 5, 5\).*got T = 17"),
        (lambda o: plot_image_attention(torch.rand(1, 4, 4), class_token_on(0, 2, 4), 0, o),
         ValueError, "patch_size must be a positive int, got 0"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_clear_errors_and_write_nothing(tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
    assert plt.get_fignums() == []
