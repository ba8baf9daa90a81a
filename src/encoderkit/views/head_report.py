"""What each attention head looks at, measured as in Clark et al. 2019, "What Does BERT Look At?
An Analysis of BERT's Attention" (section 3: attention to the previous / next token, to itself,
to [CLS], to [SEP], to punctuation, and the entropy of each head's attention).

Shape legend: L layers, H heads, T tokens (queries = keys), K statistics per head
(``len(PATTERNS) + 1``: the pattern masses, then the entropy). Layers and heads count from 0.

Nothing here knows what a particular model's heads do: the report is measured from the maps
the model computes, sentence by sentence, under
:func:`encoderkit.layers.self_attention.record_attention`.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from encoderkit.layers.self_attention import record_attention
from encoderkit.models.text import TextEncoder
from encoderkit.views.plots import (
    MAX_FIGURE_INCHES,
    check_layer_maps,
    check_tokens,
    quantise,
    save_png,
    use_agg,
)

PATTERNS: tuple[str, ...] = ("previous", "next", "self", "[CLS]", "[SEP]", "punctuation")
OTHER: tuple[str, ...] = ("broad", "mixed")  # heads that no single pattern dominates
BROAD_FRACTION = 0.75  # "broad": entropy above this fraction of a uniform head's entropy
COLUMNS: tuple[str, ...] = ("prev", "next", "self", "CLS", "SEP", "punct")  # table headings

SENTENCES: list[str] = [
    "The cat sat on the mat.",
    "A man is playing a guitar on the street, and people stop to listen.",
    "Where did you put the keys?",
    "It was raining, so we stayed inside and read books all afternoon.",
    'She said, "I\'ll be there by six," but she arrived at eight.',
    "Can you believe how quickly the summer went by?",
    "The committee, after hours of debate, finally approved the new budget.",
    "Dogs bark; cats meow.",
    "My brother, who lives in Paris, is visiting us next week.",
    "Why do birds fly south for the winter?",
    "The old bridge collapsed during the storm, but nobody was hurt.",
    "Please bring milk, eggs, bread, and a little butter.",
    "Although the test was difficult, most students passed it.",
    "He opened the door: the room was empty.",
    "If you heat ice, it melts; if you cool water, it freezes.",
    "The scientist who discovered the vaccine received a prize last year.",
    "What time does the train to London leave?",
    "The children laughed, sang and danced until midnight.",
    "I think, therefore I am.",
    "Stock prices fell sharply today after the bank raised interest rates.",
    "Is this the right way to the museum, or should we turn left?",
    "The recipe calls for two cups of flour (sifted) and one egg.",
    "She plays the piano beautifully.",
    "They didn't know that the meeting had been cancelled.",
    "When the sun rose over the hills, the whole valley turned gold.",
    "Who wrote this letter, and why was it never sent?",
    "Our team won the match - three goals to one!",
    "The book that you lent me is on the table next to the lamp.",
    "After dinner, we walked along the river and talked about the future.",
    "Do you prefer tea or coffee in the morning?",
]


class _Encoding(Protocol):
    @property
    def ids(self) -> list[int]: ...

    @property
    def tokens(self) -> list[str]: ...


class Tokenizer(Protocol):
    """What :func:`head_report` needs of a tokenizer: a ``tokenizers.Tokenizer`` has it."""

    def encode(self, sequence: str, /) -> _Encoding: ...


class SeenText(Protocol):
    """One text's tokens and its maps (one (H, T, T) tensor per layer), e.g. ``views``'s."""

    @property
    def tokens(self) -> list[str]: ...

    @property
    def maps(self) -> list[torch.Tensor]: ...


def is_punctuation(token: str) -> bool:
    """A token made only of ``string.punctuation`` characters ("." "," "'" "##." ...).

    [CLS] and [SEP] contain letters, so they never count."""
    return bool(token) and all(ch in string.punctuation for ch in token)


def head_statistics(maps: list[torch.Tensor], tokens: list[str]) -> torch.Tensor:
    """Per layer and head, the attention mass on each pattern and the entropy: (L, H, K) float64.

    For one sentence of T tokens with attention A (rows: queries i, columns: keys j; each row
    sums to 1), every statistic is an average over all T query positions:

    - previous:    (1/T) Σ_{i=1}^{T-1} A[i, i-1]  (query 0 has no previous token and adds 0,
      so a head that always looks one token back scores (T-1)/T, not 1)
    - next:        (1/T) Σ_{i=0}^{T-2} A[i, i+1]  (likewise, at most (T-1)/T)
    - self:        (1/T) Σ_i A[i, i]
    - [CLS]:       (1/T) Σ_i Σ_{j: tokens[j] == "[CLS]"} A[i, j]
    - [SEP]:       (1/T) Σ_i Σ_{j: tokens[j] == "[SEP]"} A[i, j]  (every [SEP] of the sentence)
    - punctuation: (1/T) Σ_i Σ_{j: is_punctuation(tokens[j])} A[i, j]
    - entropy:     (1/T) Σ_i -Σ_j A[i, j] ln A[i, j]  (nats; 0 ln 0 = 0), at most ln T

    The patterns overlap (a [CLS] query attending to itself counts for self and [CLS]), so a
    head's masses need not sum to 1; previous, next and self are disjoint, as are [CLS], [SEP]
    and punctuation, so each of those two sums is at most 1. [CLS] / [SEP] are matched by their
    BERT WordPiece spelling; a tokenizer that spells them otherwise scores 0 there.
    """
    _, _, T = check_layer_maps(maps)
    check_tokens(tokens, T)
    A = torch.stack([m.detach().cpu().to(torch.float64) for m in maps])  # (L, H, T, T)
    if not torch.isfinite(A).all() or (A < 0).any():
        raise ValueError("attention maps must be finite and non-negative")
    row_sums = A.sum(dim=-1)
    if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-2):
        worst = float((row_sums - 1).abs().max())
        raise ValueError(
            "every attention row must sum to 1 (post-softmax maps of real tokens, no padding); "
            f"a row sum is off by {worst:.3g}"
        )
    i = torch.arange(T)
    sets = {
        "[CLS]": [j for j, t in enumerate(tokens) if t == "[CLS]"],
        "[SEP]": [j for j, t in enumerate(tokens) if t == "[SEP]"],
        "punctuation": [j for j, t in enumerate(tokens) if is_punctuation(t)],
    }
    stats = torch.stack(
        [
            A[..., i[1:], i[:-1]].sum(dim=-1) / T,  # A[i, i-1]: (L, H, T-1) -> (L, H)
            A[..., i[:-1], i[1:]].sum(dim=-1) / T,  # A[i, i+1]
            A.diagonal(dim1=-2, dim2=-1).sum(dim=-1) / T,
            *(A[..., sets[name]].sum(dim=(-2, -1)) / T for name in ("[CLS]", "[SEP]")),
            A[..., sets["punctuation"]].sum(dim=(-2, -1)) / T,
            -torch.xlogy(A, A).sum(dim=(-2, -1)) / T,
        ],
        dim=-1,
    )  # (L, H, K)
    return stats


def dominant_patterns(
    stats: torch.Tensor, threshold: float = 0.5, max_entropy: float | None = None
) -> list[list[str]]:
    """Name each head (L, H, K) by what it mostly does.

    The pattern with the largest mass, if that mass is at least ``threshold`` (ties go to the
    earlier pattern in ``PATTERNS``); otherwise "broad" if the entropy exceeds
    ``BROAD_FRACTION * max_entropy`` (``max_entropy``: the entropy a uniform head would have,
    see :class:`HeadReport`), else "mixed". Without ``max_entropy`` no head is broad.
    """
    _check_stats(stats)
    _check_threshold(threshold)
    names = []
    for layer in stats.to(torch.float64):
        row = []
        for head in layer:
            masses = head[: len(PATTERNS)].tolist()
            best = max(range(len(PATTERNS)), key=masses.__getitem__)  # the first of a tie
            if masses[best] >= threshold:
                row.append(PATTERNS[best])
            elif max_entropy is not None and float(head[-1]) > BROAD_FRACTION * max_entropy:
                row.append("broad")
            else:
                row.append("mixed")
        names.append(row)
    return names


@dataclass
class HeadReport:
    """What every head of a model attends to, over a set of sentences.

    ``stats`` (L, H, K) are :func:`head_statistics` averaged over the sentences weighted by
    their number of query positions T_s: Σ_s T_s stats_s / Σ_s T_s, which is the average over
    every query of every sentence pooled. ``max_entropy`` is the entropy column a uniform head
    would get under the same weighting, Σ_s T_s ln T_s / Σ_s T_s, the most it can be; a head
    is "broad" above ``BROAD_FRACTION`` of it (rather than a fraction of ln(mean T), which a
    uniform head does not reach when lengths vary). ``dominant[l][h]`` follows
    :func:`dominant_patterns` with ``threshold``.
    """

    stats: torch.Tensor
    dominant: list[list[str]]
    threshold: float
    max_entropy: float
    n_sentences: int
    n_queries: int
    patterns: tuple[str, ...] = PATTERNS

    def counts(self) -> dict[str, int]:
        """How many heads each name (pattern, "broad", "mixed") describes, in that order."""
        flat = [name for row in self.dominant for name in row]
        return {name: flat.count(name) for name in (*self.patterns, *OTHER)}


def pattern_report(seen: Sequence[SeenText], threshold: float = 0.5) -> HeadReport:
    """A :class:`HeadReport` from texts already run: each with ``.tokens`` and ``.maps``."""
    _check_threshold(threshold)
    if not seen:
        raise ValueError("need at least one text's maps to report on, got none")
    per_text = []
    for k, text in enumerate(seen):
        try:
            per_text.append(head_statistics(list(text.maps), list(text.tokens)))
        except (TypeError, ValueError) as e:
            raise type(e)(f"text {k}: {e}") from e
        if per_text[k].shape != per_text[0].shape:
            L, H, _ = per_text[k].shape
            raise ValueError(
                f"text {k} has {L} layers x {H} heads, text 0 {per_text[0].shape[0]} x "
                f"{per_text[0].shape[1]}: all must come from one model"
            )
    lengths = [len(text.tokens) for text in seen]
    queries = sum(lengths)
    stats = sum(
        (s * T for s, T in zip(per_text, lengths, strict=True)), torch.zeros_like(per_text[0])
    )
    stats = stats / queries
    max_entropy = sum(T * math.log(T) for T in lengths) / queries
    return HeadReport(
        stats=stats,
        dominant=dominant_patterns(stats, threshold, max_entropy),
        threshold=threshold,
        max_entropy=max_entropy,
        n_sentences=len(seen),
        n_queries=queries,
    )


@dataclass
class _Seen:
    tokens: list[str]
    maps: list[torch.Tensor]


def head_report(
    model: TextEncoder,
    tokenizer: Tokenizer,
    sentences: Sequence[str] = SENTENCES,
    threshold: float = 0.5,
) -> HeadReport:
    """Run ``model`` on each sentence alone (no padding, eval mode, no gradients), record its
    attention and report on every head (:class:`HeadReport`).

    ``tokenizer.encode(sentence)`` gives ``.ids`` and ``.tokens`` (a ``tokenizers.Tokenizer``
    with the model's special tokens, e.g. ``SentenceEncoder.tokenizer``). The model's training
    mode is restored afterwards.
    """
    if not isinstance(model, TextEncoder):
        raise TypeError(f"model must be a TextEncoder, got {type(model).__name__}")
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a list of str")
    if not sentences:
        raise ValueError("sentences is empty: give at least one sentence")
    _check_threshold(threshold)
    limit = model.config.max_positions
    device = next(model.parameters()).device
    seen = []
    was_training = model.training
    model.eval()
    try:
        for k, sentence in enumerate(sentences):
            encoding = tokenizer.encode(sentence)
            ids, tokens = list(encoding.ids), list(encoding.tokens)
            if not ids or len(ids) != len(tokens) or len(ids) > limit:
                raise ValueError(
                    f"sentence {k} ({_shorten(sentence)!r}) gives {len(ids)} ids and "
                    f"{len(tokens)} tokens; expected the same number, between 1 and the "
                    f"model's {limit} positions"
                )
            with torch.inference_mode(), record_attention(model) as maps:
                model(torch.tensor([ids], device=device))  # (1, T) -> (1, T, D)
            seen.append(_Seen(tokens, [m[0] for m in maps]))  # (1, H, T, T) -> (H, T, T)
    finally:
        model.train(was_training)
    return pattern_report(seen, threshold)


def format_table(report: HeadReport) -> str:
    """A fixed-width table, one row per (layer, head): masses, entropy (nats), dominant name."""
    L, H, _ = report.stats.shape
    header = f"{'L':>2} {'H':>3} " + " ".join(f"{c:>6}" for c in COLUMNS)
    lines = [f"{header} {'entropy':>8}  dominant"]
    for layer in range(L):
        for head in range(H):
            values = report.stats[layer, head].tolist()
            masses = " ".join(f"{v:6.3f}" for v in values[:-1])
            name = report.dominant[layer][head]
            lines.append(f"{layer:>2} {head:>3} {masses} {values[-1]:8.3f}  {name}")
    return "\n".join(lines)


def report_records(report: HeadReport) -> dict[str, Any]:
    """The report as JSON-ready data: one record per (layer, head) with its pattern masses,
    entropy and dominant name, and how many heads each name describes."""
    L, H, _ = report.stats.shape
    heads = []
    for layer in range(L):
        for head in range(H):
            values = report.stats[layer, head].tolist()
            heads.append(
                {
                    "layer": layer,
                    "head": head,
                    **dict(zip(report.patterns, values[:-1], strict=True)),
                    "entropy": values[-1],
                    "dominant": report.dominant[layer][head],
                }
            )
    return {
        "sentences": report.n_sentences,
        "threshold": report.threshold,
        "counts": report.counts(),
        "heads": heads,
    }


_COLOURS = {
    "previous": "#1f77b4",
    "next": "#ff7f0e",
    "self": "#2ca02c",
    "[CLS]": "#d62728",
    "[SEP]": "#9467bd",
    "punctuation": "#8c564b",
    "broad": "#d9d9d9",
    "mixed": "#7f7f7f",
}


def plot_head_map(report: HeadReport, out: str | Path) -> Path:
    """A layer x head grid, each cell coloured by the head's dominant name (legend on the
    right) and showing its largest pattern mass, the dominant one for pattern heads.

    Cells are 0.55 inch (smaller when the grid would pass ``viz.MAX_FIGURE_INCHES``); the
    figure is (0.6 + 0.55 H + 2.0) x (0.9 + max(0.55 L + 0.2, 1.9)) inches, rounded up to a
    quarter inch, at ``viz.DPI``.
    """
    L, H, _ = _check_stats(report.stats)
    names = (*report.patterns, *OTHER)
    left, top, bottom, legend_w = 0.6, 0.9, 0.2, 2.0
    max_w, max_h = MAX_FIGURE_INCHES
    cell = min(0.55, (max_w - left - legend_w) / H, (max_h - top - bottom) / L)
    fig_w = quantise(left + H * cell + legend_w)
    fig_h = quantise(top + max(L * cell + bottom, 1.9))  # the legend needs 1.9 inches
    index = torch.tensor([[names.index(n) for n in row] for row in report.dominant])  # (L, H)
    best = report.stats[..., : len(report.patterns)].amax(dim=-1)  # (L, H)

    use_agg()
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, to_rgb
    from matplotlib.patches import Patch

    fig = plt.figure(figsize=(fig_w, fig_h))
    try:
        ax = fig.add_axes(
            (left / fig_w, (fig_h - top - L * cell) / fig_h, H * cell / fig_w, L * cell / fig_h)
        )
        colours = [_COLOURS.get(n, "#ffffff") for n in names]
        ax.imshow(
            index.numpy(),
            cmap=ListedColormap(colours),
            vmin=-0.5,
            vmax=len(names) - 0.5,
            interpolation="nearest",
            aspect="auto",
        )
        fontsize = max(4.0, min(8.0, cell * 14))
        for layer in range(L):
            for head in range(H):
                r, g, b = to_rgb(colours[int(index[layer, head])])
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(
                    head,
                    layer,
                    f"{float(best[layer, head]):.2f}",
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if dark else "black",
                )
        ax.set_xticks(range(H), [f"H{h}" for h in range(H)], fontsize=fontsize)
        ax.set_yticks(range(L), [f"L{layer}" for layer in range(L)], fontsize=fontsize)
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        counts = report.counts()
        handles = [
            Patch(color=c, label=f"{n} ({counts[n]})") for n, c in zip(names, colours, strict=True)
        ]
        fig.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=((left + H * cell + 0.15) / fig_w, (fig_h - top) / fig_h),
            fontsize=8,
            frameon=False,
            title=f"dominant (mass ≥ {report.threshold:g})",
            title_fontsize=8,
        )
        fig.suptitle(
            f"{report.n_sentences} sentences, {report.n_queries} tokens\n"
            "cell: the head's largest pattern mass",
            fontsize=9,
            y=1 - 0.08 / fig_h,
            va="top",
        )
        return save_png(fig, out)
    finally:
        plt.close(fig)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_stats(stats: object) -> tuple[int, int, int]:
    if not isinstance(stats, torch.Tensor):
        raise TypeError(f"stats must be a torch.Tensor (L, H, K), got {type(stats).__name__}")
    K = len(PATTERNS) + 1
    if stats.dim() != 3 or stats.shape[-1] != K or stats.shape[0] == 0 or stats.shape[1] == 0:
        raise ValueError(
            f"stats must be (L, H, {K}): {len(PATTERNS)} pattern masses and the entropy, got "
            f"shape {tuple(stats.shape)}"
        )
    L, H, _ = stats.shape
    return L, H, K


def _check_threshold(threshold: object) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float in (0, 1], got {threshold!r}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
