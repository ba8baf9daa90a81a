"""The attention viewer: a self-contained page whose drawn lines are exactly the given weights.

The browser test drives Debian's Chromium (scripts/install-browser.sh) with Playwright; it is
skipped only where either is not installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from encoderkit.views.viewer import attention_html, write_attention_html

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


def random_maps(layers: int = 2, heads: int = 3, t: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(heads, t, t, generator=g).mul(2).softmax(-1) for _ in range(layers)]


def rounded(m: torch.Tensor) -> list[list[float]]:
    return [[round(w, 4) for w in row] for row in m.double().tolist()]


def inlined_data(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_page_is_self_contained() -> None:
    page = attention_html(TOKENS, random_maps(), title="demo")
    for needle in ("http://", "https://", "src=", "href=", "@import", "url("):
        assert needle not in page


def test_inlined_json_is_the_weights_to_4_decimals() -> None:
    maps = random_maps()
    data = inlined_data(attention_html(TOKENS, maps))
    assert data["tokens"] == TOKENS
    assert data["weights"] == [[rounded(head) for head in m] for m in maps]


def test_token_and_title_text_cannot_become_markup() -> None:
    page = attention_html(TOKENS, random_maps(), title="<i>t</i> & co")
    assert "<b>x" not in page and "<dog>" not in page
    assert page.count("</script>") == 2  # the data element's and the code's, nothing else
    assert "\\u003c/script\\u003e\\u003cb\\u003ex" in page
    assert "<title>&lt;i&gt;t&lt;/i&gt; &amp; co</title>" in page


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


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}: run scripts/install-browser.sh")
def test_viewer_in_chromium(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    maps = random_maps()
    path = write_attention_html(tmp_path / "attention.html", TOKENS, maps)
    errors: list[str] = []

    def drawn(page) -> dict[tuple[int, int], float]:
        lines = page.eval_on_selector_all(
            "#lines line",
            "ls => ls.map(l => [l.dataset.query, l.dataset.key, l.dataset.weight])",
        )
        return {(int(q), int(k)): float(w) for q, k, w in lines}

    def expected(layer: int, head: int, rows: range = range(len(TOKENS))) -> dict:
        weights = rounded(maps[layer][head])
        return {(q, k): weights[q][k] for q in rows for k in range(len(TOKENS))}

    def shows(page) -> tuple[str, str]:
        svg = page.locator("#lines")
        return svg.get_attribute("data-layer"), svg.get_attribute("data-head")

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())

            # (a) tokens are text, in order, in both columns; every pair is drawn.
            assert page.locator(".query").all_text_contents() == TOKENS
            assert page.locator(".key").all_text_contents() == TOKENS
            assert page.locator("#lines line").count() == len(TOKENS) ** 2
            # (b) layer 0, head 0 by default: exactly its weights.
            assert shows(page) == ("0", "0")
            assert drawn(page) == expected(0, 0)
            # (c) another head, then another layer.
            page.select_option("#head", "1")
            assert shows(page) == ("0", "1")
            assert drawn(page) == expected(0, 1)
            assert drawn(page) != expected(0, 0)
            page.select_option("#layer", "1")
            assert shows(page) == ("1", "1")
            assert drawn(page) == expected(1, 1)
            # (d) hovering query 2 keeps its row only and shades each key by its weight.
            page.hover("#query-2")
            assert drawn(page) == expected(1, 1, rows=range(2, 3))
            row = rounded(maps[1][1])[2]
            keys = page.eval_on_selector_all(
                ".key", "ks => ks.map(k => [k.dataset.weight, getComputedStyle(k).backgroundColor])"
            )
            assert [float(w) for w, _ in keys] == row
            alphas = [float(re.findall(r"[\d.]+", colour)[3]) for _, colour in keys]
            assert alphas == pytest.approx(row, abs=1 / 255)
            page.mouse.move(900, 600)  # away from every token
            assert drawn(page) == expected(1, 1)
            backgrounds = page.eval_on_selector_all(".key", "ks => ks.map(k => k.style.background)")
            assert backgrounds == [""] * len(TOKENS)
            assert all(k.get_attribute("data-weight") is None for k in page.locator(".key").all())
            # A tooltip carries the number.
            tip = page.locator("#lines line title").first.text_content()
            assert tip.startswith("[CLS] \u2192 [CLS]: ")
            assert float(tip.rsplit(": ", 1)[1]) == expected(1, 1)[(0, 0)]
        finally:
            browser.close()
    assert errors == []
