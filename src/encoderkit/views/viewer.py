"""An interactive attention viewer: one self-contained HTML page, like bertviz's head view.

Queries on the left, keys on the right, and between them one line per (query, key) pair whose
width and opacity are the attention weight softmax(QKᵀ/√d_k) of the chosen layer and head
(Vaswani et al. 2017, §3.2.1). Hovering a query keeps only its row and shades each key by its
weight. The page needs no network: styles, script and data (weights rounded to 4 decimals) are
inline, and token text only ever reaches the page as text, never as markup.

    with record_attention(model) as maps:
        model(x)
    write_attention_html("attention.html", tokens, [m[0] for m in maps])  # batch item 0
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import torch

from encoderkit.utils.files import atomic_write_text

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 12px; }
label { margin-right: 16px; }
#view { display: flex; align-items: flex-start; margin-top: 12px; }
.column { display: flex; flex-direction: column; }
.token { height: 24px; line-height: 24px; padding: 0 6px; white-space: pre; cursor: default; }
.query { text-align: right; }
.query:hover { background: #eee; }
.key { text-align: left; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<label>Layer <select id="layer"></select></label>
<label>Head <select id="head"></select></label>
<div id="view">
  <div id="queries" class="column"></div>
  <svg id="lines" width="240"></svg>
  <div id="keys" class="column"></div>
</div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const ROW = 24, WIDTH = 240;
const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
const svg = document.getElementById("lines"), SVG_NS = svg.namespaceURI;
const nHeads = DATA.weights[0].length, T = DATA.tokens.length;
svg.setAttribute("height", T * ROW);

function fill(select, n, label) {
  for (let i = 0; i < n; i++) {
    const opt = document.createElement("option");
    opt.value = String(i);
    opt.textContent = label + " " + i;
    select.appendChild(opt);
  }
}
fill(layerSel, DATA.weights.length, "Layer");
fill(headSel, nHeads, "Head");

function tokens(parentId, cls) {
  return DATA.tokens.map((text, i) => {
    const el = document.createElement("div");
    el.className = "token " + cls;
    el.id = cls + "-" + i;
    el.dataset.index = String(i);
    el.textContent = text;
    document.getElementById(parentId).appendChild(el);
    return el;
  });
}
const queries = tokens("queries", "query"), keys = tokens("keys", "key");

function colour(alpha) {
  const hue = Math.round(360 * Number(headSel.value) / nHeads);
  return alpha === undefined ? `hsl(${hue}, 70%, 45%)` : `hsla(${hue}, 70%, 45%, ${alpha})`;
}

// Draw the current layer and head: every row, or only row `only` while a query is hovered.
function draw(only) {
  const layer = Number(layerSel.value), head = Number(headSel.value);
  const rows = DATA.weights[layer][head];
  svg.replaceChildren();
  svg.dataset.layer = String(layer);
  svg.dataset.head = String(head);
  if (only === undefined) delete svg.dataset.query; else svg.dataset.query = String(only);
  for (let q = 0; q < T; q++) {
    if (only !== undefined && q !== only) continue;
    for (let k = 0; k < T; k++) {
      const w = rows[q][k];
      const line = document.createElementNS(SVG_NS, "line");
      const attrs = { x1: 0, y1: (q + 0.5) * ROW, x2: WIDTH, y2: (k + 0.5) * ROW,
                      stroke: colour(), "stroke-width": 6 * w, "stroke-opacity": w,
                      "data-query": q, "data-key": k, "data-weight": w };
      for (const [name, value] of Object.entries(attrs)) line.setAttribute(name, String(value));
      const tip = document.createElementNS(SVG_NS, "title");
      tip.textContent = `${DATA.tokens[q]} \\u2192 ${DATA.tokens[k]}: ${w}`;
      line.appendChild(tip);
      svg.appendChild(line);
    }
  }
  keys.forEach((el, k) => {
    if (only === undefined) {
      el.style.backgroundColor = "";
      el.removeAttribute("title");
      delete el.dataset.weight;
    } else {
      el.style.backgroundColor = colour(rows[only][k]);
      el.title = String(rows[only][k]);
      el.dataset.weight = String(rows[only][k]);
    }
  });
}

queries.forEach((el, q) => {
  el.addEventListener("mouseenter", () => draw(q));
  el.addEventListener("mouseleave", () => draw());
});
layerSel.addEventListener("change", () => draw());
headSel.addEventListener("change", () => draw());
draw();
</script>
</body>
</html>
"""


def attention_html(tokens: list[str], maps: list[torch.Tensor], title: str = "") -> str:
    """One self-contained HTML page showing ``maps``: one (H, T, T) tensor of post-softmax
    attention per layer (query rows, key columns), over the T ``tokens``."""
    _check(tokens, maps)
    weights = [
        [
            [[round(w, 4) for w in row] for row in head]
            for head in m.detach().cpu().double().tolist()
        ]
        for m in maps
    ]
    data = json.dumps({"tokens": list(tokens), "weights": weights}, separators=(",", ":"))
    # Inside <script>, "</script>" or "<!--" in a token would end or confuse the element; as JSON
    # escapes these characters still parse back to the same strings.
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


def write_attention_html(
    path: str | os.PathLike[str], tokens: list[str], maps: list[torch.Tensor], title: str = ""
) -> Path:
    """Write :func:`attention_html` to ``path`` atomically; returns the path."""
    return atomic_write_text(path, attention_html(tokens, maps, title))


def _check(tokens: list[str], maps: list[torch.Tensor]) -> None:
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise TypeError(f"expected tokens as a list of str, got {tokens!r:.80}")
    if not tokens:
        raise ValueError("expected at least one token, got none")
    if not maps:
        raise ValueError("expected one (H, T, T) attention map per layer, got an empty list")
    for i, m in enumerate(maps):
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"expected maps[{i}] to be a torch.Tensor, got {type(m).__name__}")
        expected = (maps[0].shape[0] if i else "H", len(tokens), len(tokens))
        if m.dim() != 3 or tuple(m.shape[1:]) != expected[1:] or (i and m.shape[0] != expected[0]):
            raise ValueError(
                f"expected maps[{i}] of shape {expected} (H heads, T={len(tokens)} tokens), "
                f"got {tuple(m.shape)}"
            )
        if m.shape[0] == 0:
            raise ValueError(f"expected at least one head in maps[{i}], got shape {tuple(m.shape)}")
        if not bool(((m >= 0) & (m <= 1)).all()):
            raise ValueError(
                f"expected post-softmax weights in [0, 1] in maps[{i}], "
                f"got values from {m.min().item()} to {m.max().item()} (or NaN)"
            )
