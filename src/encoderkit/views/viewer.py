"""An interactive attention viewer: one self-contained HTML page, like bertviz's head view and
model view (Vig 2019).

The head view overlays every head of a layer in its own colour: one line per (query, key) pair,
queries on the left, keys on the right, whose opacity is the attention weight
softmax(QKᵀ/√d_k) (Vaswani et al. 2017, §3.2.1). Heads are shown and hidden by their colour,
hovering a token keeps its lines, and a slider hides the weights below a threshold so that long
inputs stay responsive. The model view shows every layer x head as a small picture of its
weights; clicking one opens it in the head view. The page (:mod:`encoderkit.views.viewer_page`)
needs no network: styles, script and data are inline, and token text only ever reaches the page
as text, never as markup.

    with record_attention(model) as maps:
        model(x)
    write_attention_html("attention.html", tokens, [m[0] for m in maps])  # batch item 0
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
import torch

from encoderkit.utils.files import atomic_write_text
from encoderkit.views.viewer_page import PAGE

# The most lines the head view draws at once (the strongest); beyond it a browser slows down.
MAX_LINES = 20_000


def attention_html(
    tokens: list[str], maps: list[torch.Tensor], title: str = "", *, threshold: float = 0.05
) -> str:
    """One self-contained HTML page showing ``maps``: one (H, T, T) tensor of post-softmax
    attention per layer (query rows, key columns), over the T ``tokens``. The head view starts
    by hiding weights below ``threshold`` (a slider on the page changes it)."""
    _check(tokens, maps)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"expected a threshold as a float, got {threshold!r}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"expected a threshold in [0, 1], got {threshold!r}")
    # numpy rounds the 6.5 M weights of 6 layers x 12 heads x 300 tokens in 1 s, Python's round()
    # one by one in 5; both give the double nearest a 4-decimal number, so the JSON stays short.
    weights = np.round(np.stack([m.detach().cpu().double().numpy() for m in maps]), 4).tolist()
    data = json.dumps(
        {
            "tokens": list(tokens),
            "weights": weights,  # [layer][head][query][key], 4 decimals
            "threshold": float(threshold),
            "max_lines": MAX_LINES,
        },
        separators=(",", ":"),
    )
    # Inside <script>, "</script>" or "<!--" in a token would end or confuse the element; as JSON
    # escapes these characters still parse back to the same strings.
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = PAGE.replace("__TITLE__", html.escape(title or "Attention"))
    return page.replace("__MAX__", f"{MAX_LINES:,}").replace("__DATA__", data)


def write_attention_html(
    path: str | os.PathLike[str],
    tokens: list[str],
    maps: list[torch.Tensor],
    title: str = "",
    *,
    threshold: float = 0.05,
) -> Path:
    """Write :func:`attention_html` to ``path`` atomically; returns the path."""
    return atomic_write_text(path, attention_html(tokens, maps, title, threshold=threshold))


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
