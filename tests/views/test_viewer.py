"""The attention viewer: a self-contained page whose drawn lines and thumbnails are exactly the
given weights, with head toggles, a threshold, hovering and a model view that all act as stated.

The browser tests drive Debian's Chromium (scripts/install-browser.sh) with Playwright; they are
skipped only where either is not installed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from encoderkit.views.viewer import MAX_LINES, attention_html, write_attention_html

CHROMIUM = Path("/usr/bin/chromium")
# As root, with no network: no sandbox, and none of Chromium's background connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKENS = ["[CLS]", "the", "</script><b>x", "cat & <dog>", "[SEP]"]
LAYERS, HEADS, T = 2, 3, len(TOKENS)
needs_browser = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no {CHROMIUM}: run scripts/install-browser.sh"
)


def random_maps(layers: int = LAYERS, heads: int = HEADS, t: int = T) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(heads, t, t, generator=g).mul(2).softmax(-1) for _ in range(layers)]


def quantised(maps: list[torch.Tensor]) -> np.ndarray:
    """The weights as the page holds them: (L, H, T, T) to 4 decimals."""
    return np.round(np.stack([m.double().numpy() for m in maps]), 4)


def inlined_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_page_is_self_contained() -> None:
    page = attention_html(TOKENS, random_maps(), title="demo")
    assert re.search(r"(src|href)\s*=\s*[\"']?https?:", page) is None
    for needle in ("http://", "https://", "src=", "href=", "@import", "url("):
        assert needle not in page


def test_inlined_data_is_the_weights_to_4_decimals() -> None:
    maps = random_maps()
    data = inlined_data(attention_html(TOKENS, maps, threshold=0.1))
    assert data["tokens"] == TOKENS
    assert (data["threshold"], data["max_lines"]) == (0.1, MAX_LINES)
    assert data["weights"] == quantised(maps).tolist()
    assert data["weights"] == [
        [[[round(w, 4) for w in row] for row in head] for head in m.tolist()] for m in maps
    ]
    weights = np.array(data["weights"])
    assert np.abs(weights - np.stack([m.numpy() for m in maps])).max() <= 0.5e-4 + 1e-12


def test_token_and_title_text_cannot_become_markup() -> None:
    page = attention_html(TOKENS, random_maps(), title="<i>t</i> & co")
    assert "<b>x" not in page and "<dog>" not in page
    assert page.count("</script>") == 2  # the data element's and the code's, nothing else
    assert "\\u003c/script\\u003e\\u003cb\\u003ex" in page
    assert "<title>&lt;i&gt;t&lt;/i&gt; &amp; co</title>" in page
    assert "<title>Attention</title>" in attention_html(TOKENS, random_maps())


def test_write_attention_html(tmp_path: Path) -> None:
    maps = random_maps()
    path = write_attention_html(tmp_path / "sub" / "a.html", TOKENS, maps, title="x")
    assert path == tmp_path / "sub" / "a.html"
    assert path.read_text(encoding="utf-8") == attention_html(TOKENS, maps, title="x")
    assert [p.name for p in path.parent.iterdir()] == ["a.html"]  # no temporary file left


@pytest.mark.parametrize(
    ("tokens", "maps", "error", "message"),
    [
        (["a", "b"], [], ValueError, "expected one .* per layer, got an empty list"),
        ([], [torch.ones(1, 0, 0)], ValueError, "expected at least one token, got none"),
        (["a", "b"], [torch.ones(2, 2)], ValueError, r"shape \('H', 2, 2\).*got \(2, 2\)"),
        (["a", "b"], [torch.ones(1, 3, 3) / 3], ValueError, r"T=2 tokens.*got \(1, 3, 3\)"),
        (["a", "b"], [torch.ones(1, 2, 3) / 3], ValueError, r"got \(1, 2, 3\)"),
        (
            ["a", "b"],
            [torch.ones(2, 2, 2) / 2, torch.ones(3, 2, 2) / 2],
            ValueError,
            r"maps\[1\] of shape \(2, 2, 2\).*got \(3, 2, 2\)",
        ),
        (["a", "b"], [torch.ones(0, 2, 2)], ValueError, "at least one head"),
        (["a", "b"], [torch.full((1, 2, 2), 2.0)], ValueError, r"in \[0, 1\].*from 2.0 to 2.0"),
        (["a", "b"], [torch.full((1, 2, 2), float("nan"))], ValueError, r"in \[0, 1\]"),
        (["a", 1], [torch.ones(1, 2, 2) / 2], TypeError, "list of str"),
        (["a", "b"], [[[0.5, 0.5], [0.5, 0.5]]], TypeError, r"maps\[0\] to be a torch.Tensor"),
    ],
)
def test_bad_input_is_refused(tokens, maps, error, message) -> None:
    with pytest.raises(error, match=message):
        attention_html(tokens, maps)


@pytest.mark.parametrize(
    ("threshold", "error", "message"),
    [(1.5, ValueError, r"threshold in \[0, 1\], got 1.5"), (True, TypeError, "got True")],
)
def test_bad_threshold_is_refused(threshold, error, message) -> None:
    with pytest.raises(error, match=message):
        attention_html(TOKENS, random_maps(), threshold=threshold)


# ---------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: run scripts/install-browser.sh")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Viewer:
    """One page of the viewer, with the console watched for errors."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(path.as_uri())

    def lines(self) -> dict[tuple[int, int, int], float]:
        """(head, query, key) -> weight of each line drawn and not hidden by a hover."""
        found = self.page.eval_on_selector_all(
            "#lines line",
            "ls => ls.map(l => [l.dataset.head, l.dataset.query, l.dataset.key, l.dataset.weight,"
            " getComputedStyle(l).visibility])",
        )
        return {
            (int(h), int(q), int(k)): float(w)
            for h, q, k, w, visibility in found
            if visibility == "visible"
        }

    def shows(self) -> tuple[str, str, str]:
        svg = self.page.locator("#lines")
        return tuple(svg.get_attribute(f"data-{a}") for a in ("layer", "heads", "threshold"))

    def set_threshold(self, value: float) -> None:
        self.page.eval_on_selector(
            "#threshold", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value
        )


def expected(w: np.ndarray, layer: int, heads, threshold: float = 0.05, rows=None, cols=None):
    rows = range(w.shape[2]) if rows is None else rows
    cols = range(w.shape[3]) if cols is None else cols
    return {
        (h, q, k): float(w[layer, h, q, k])
        for h in heads
        for q in rows
        for k in cols
        if w[layer, h, q, k] >= threshold
    }


@pytest.fixture
def viewer(browser, tmp_path: Path) -> Iterator[tuple[Viewer, np.ndarray]]:
    maps = random_maps()
    v = Viewer(browser, write_attention_html(tmp_path / "attention.html", TOKENS, maps))
    yield v, quantised(maps)
    v.page.close()
    assert v.errors == []


@needs_browser
def test_head_view_overlays_every_head_in_its_colour(viewer) -> None:
    v, w = viewer
    assert v.page.locator(".query .text").all_text_contents() == TOKENS
    assert v.page.locator(".key .text").all_text_contents() == TOKENS
    # Layer 0, every head, weights of at least 0.05: exactly those lines.
    assert v.shows() == ("0", "0,1,2", "0.05")
    assert v.lines() == expected(w, 0, range(HEADS))
    assert 0 < len(v.lines()) < HEADS * T * T  # the threshold hid some
    # Each head's lines are in its swatch's colour, and the three colours differ.
    swatches = v.page.eval_on_selector_all(
        ".swatch", "bs => bs.map(b => b.style.getPropertyValue('--c'))"
    )
    strokes = v.page.eval_on_selector_all(
        "#lines line", "ls => ls.map(l => [Number(l.dataset.head), l.getAttribute('stroke')])"
    )
    assert {h: c for h, c in strokes} == dict(enumerate(swatches))
    assert len(set(swatches)) == HEADS
    opacity = v.page.eval_on_selector_all(
        "#lines line", "ls => ls.map(l => [l.dataset.weight, l.getAttribute('stroke-opacity')])"
    )
    assert all(a == b for a, b in opacity)
    # Another layer.
    v.page.select_option("#layer", "1")
    assert v.shows()[0] == "1"
    assert v.lines() == expected(w, 1, range(HEADS))


@needs_browser
def test_labels_are_not_repeated(viewer) -> None:
    v, _ = viewer
    options = v.page.locator("#layer option").all_text_contents()
    assert options == ["0", "1"]  # under the label "Layer": not "Layer [Layer 0]"
    assert v.page.locator(".swatch").all_text_contents() == ["0", "1", "2"]
    controls = v.page.inner_text(".controls")
    assert controls.count("Layer") == 1 and controls.count("Heads") == 1
    assert "Head view" in v.page.inner_text("nav") and "double-click" in v.page.inner_text("#help")


@needs_browser
def test_clicking_a_head_hides_it_and_double_click_isolates(viewer) -> None:
    v, w = viewer
    swatch = v.page.locator('.swatch[data-head="1"]')
    swatch.click()
    assert swatch.get_attribute("aria-pressed") == "false"
    assert v.shows()[1] == "0,2"
    assert v.lines() == expected(w, 0, [0, 2])
    swatch.click()
    assert v.lines() == expected(w, 0, range(HEADS))
    v.page.locator('.swatch[data-head="2"]').dblclick()
    assert v.shows()[1] == "2"
    assert v.lines() == expected(w, 0, [2])
    pressed = v.page.eval_on_selector_all(".swatch", "bs => bs.map(b => b.ariaPressed)")
    assert pressed == ["false", "false", "true"]
    # Hidden heads' weight cells are hidden too.
    shown = v.page.eval_on_selector_all(
        "#key-0 .cells i", "cs => cs.map(c => getComputedStyle(c).display !== 'none')"
    )
    assert shown == [False, False, True]
    v.page.locator('.swatch[data-head="2"]').dblclick()  # again: every head
    assert v.lines() == expected(w, 0, range(HEADS))


@needs_browser
def test_hovering_a_token_keeps_its_lines_and_shades_the_other_side(viewer) -> None:
    v, w = viewer
    v.page.hover("#query-2")
    assert v.page.locator("#lines").get_attribute("data-query") == "2"
    assert v.lines() == expected(w, 0, range(HEADS), rows=[2])
    cells = v.page.eval_on_selector_all(
        ".key .cells i",
        "cs => cs.map(c => [c.dataset.weight, Number(getComputedStyle(c).opacity)])",
    )
    want = [w[0, h, 2, k] for k in range(T) for h in range(HEADS)]
    assert [float(x) for x, _ in cells] == want
    assert [o for _, o in cells] == pytest.approx(want, abs=1e-4)
    v.page.hover("#key-3")
    assert v.lines() == expected(w, 0, range(HEADS), cols=[3])
    weights = v.page.eval_on_selector_all(".query .cells i", "cs => cs.map(c => c.dataset.weight)")
    assert [float(x) for x in weights] == [w[0, h, q, 3] for q in range(T) for h in range(HEADS)]
    v.page.mouse.move(1100, 800)  # away from every token
    assert v.lines() == expected(w, 0, range(HEADS))
    assert v.page.locator(".cells i[data-weight]").count() == 0
    # Hovering a line names its pair and weight.
    v.page.dispatch_event('#lines line[data-head="1"]', "mouseover")
    h, q, k = min(k for k in expected(w, 0, [1]))
    assert v.page.inner_text("#info") == f"head 1: {TOKENS[q]} \u2192 {TOKENS[k]} {w[0, h, q, k]}"


@needs_browser
def test_threshold_slider_sets_which_lines_are_drawn(viewer) -> None:
    v, w = viewer
    counts = []
    for threshold in (0.0, 0.05, 0.3):
        v.set_threshold(threshold)
        assert v.shows()[2] == f"{threshold:g}"  # as JavaScript writes the number
        assert v.lines() == expected(w, 0, range(HEADS), threshold)
        assert v.page.inner_text("#threshold-value") == f"{threshold:.2f}"
        counts.append(len(v.lines()))
    assert counts[0] == HEADS * T * T and counts[0] > counts[1] > counts[2] > 0


@needs_browser
def test_model_view_has_every_layer_and_head_and_opens_one(viewer) -> None:
    v, w = viewer
    v.page.click("#tab-model")
    assert v.page.locator("body").get_attribute("data-view") == "model"
    assert v.page.locator("#head-view").is_hidden()
    thumbs = v.page.locator(".thumb canvas")
    assert thumbs.count() == LAYERS * HEADS
    # One pixel per (query, key) whose alpha is the weight.
    alpha = v.page.eval_on_selector(
        '.thumb[data-layer="1"][data-head="2"] canvas',
        "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
        ".filter((_, i) => i % 4 === 3)",
    )
    assert alpha == np.round(255 * w[1, 2]).astype(int).ravel().tolist()
    v.page.click('.thumb[data-layer="1"][data-head="2"]')
    assert v.page.locator("body").get_attribute("data-view") == "head"
    assert v.page.locator("#model-view").is_hidden()
    assert v.shows()[:2] == ("1", "2")
    assert v.page.input_value("#layer") == "1"
    assert v.lines() == expected(w, 1, [2])


@needs_browser
def test_a_300_token_input_stays_responsive(browser, tmp_path: Path) -> None:
    layers, heads, t = 6, 12, 300  # all-MiniLM-L6-v2's shape
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(heads, t, t, generator=g).mul(3).softmax(-1) for _ in range(layers)]
    path = write_attention_html(tmp_path / "long.html", [f"w{i}" for i in range(t)], maps)
    w = quantised(maps)
    start = time.perf_counter()
    v = Viewer(browser, path)
    loaded = time.perf_counter() - start
    n = len(expected(w, 0, range(heads)))
    assert v.page.locator("#lines").get_attribute("data-lines") == str(n)
    assert loaded < 5.0 and int(v.page.locator("body").get_attribute("data-render-ms")) < 2000
    start = time.perf_counter()
    v.page.hover("#query-150")
    assert time.perf_counter() - start < 2.0
    lit = v.page.eval_on_selector_all("#lines.focus line.lit", "ls => ls.map(l => l.dataset.key)")
    assert len(lit) == len(expected(w, 0, range(heads), rows=[150]))
    # Threshold 0 would be 1,080,000 lines: only the strongest MAX_LINES are drawn, and said so.
    v.page.mouse.move(1100, 10)
    v.set_threshold(0.0)
    svg = v.page.locator("#lines")
    assert (svg.get_attribute("data-lines"), svg.get_attribute("data-total")) == (
        str(MAX_LINES),
        str(heads * t * t),
    )
    assert f"the strongest {MAX_LINES} of {heads * t * t}" in v.page.inner_text("#count")
    weakest = v.page.eval_on_selector_all(
        "#lines line", "ls => [ls.length, Math.min(...ls.map(l => Number(l.dataset.weight)))]"
    )
    assert weakest == [MAX_LINES, np.sort(w[0].ravel())[-MAX_LINES]]
    v.page.click("#tab-model")
    assert v.page.locator(".thumb canvas").count() == layers * heads
    v.page.close()
    assert v.errors == []
