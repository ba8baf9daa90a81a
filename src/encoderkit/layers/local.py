"""Local (sliding-window) attention: query i attends only to keys j of its own sequence with
|i - j| <= w, w = window // 2 (Longformer, Beltagy et al. 2020, section 3.1; ModernBERT's
``local_attention``, whose window of 128 reaches 64 tokens each way).

Computed in blocks of queries, never as a T x T matrix: the queries of block b (Q of them,
starting at s) can only see keys in [s - w, s + Q + w), so each block scores its Q queries
against one span of S = Q + 2w keys (clamped to the row), and memory grows as T * S, linear in T
(``block_layout``). Inside a span the band, the sequence boundaries and ALiBi's distance
penalty are applied exactly, so the result equals the formula with an explicit band mask
(``band_mask``, the oracle the tests compare against).

The blocks run along one row of tokens in which each sequence is contiguous: a padded batch's
rows (real tokens first moved to the front of their row, so that positions and distances count
real tokens only, whatever the padding), or all the packed tokens of a batch as one row, a
segment id telling the sequences apart (see :mod:`encoderkit.layers.varlen_kernels`).

Shape legend: B batch (rows), H heads, T tokens per row, K head width, Q queries per block,
S keys per span, nb blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIN_BLOCK = 16  # queries per block at least: smaller blocks are many tiny matmuls


def band_mask(
    query_positions: torch.Tensor, key_positions: torch.Tensor, half_window: int
) -> torch.Tensor:
    """(..., T, S) bool, True where |i - j| <= half_window: the explicit mask of the oracle."""
    distance = query_positions[..., :, None] - key_positions[..., None, :]  # (..., T, S)
    return distance.abs() <= half_window


@dataclass(frozen=True)
class BlockLayout:
    """Blocks of ``size`` queries over a row of ``seq_len`` tokens, each scoring one span of
    ``span`` keys starting at ``key_index[b, 0]``."""

    size: int  # Q
    span: int  # S
    blocks: int  # nb; the queries are padded to nb * Q
    key_index: torch.Tensor  # (nb, S) int64: the keys each block scores
    distance: torch.Tensor  # (nb, Q, S) int64: |i - j| for each query and key of a block


def block_sizes(seq_len: int, half_window: int) -> tuple[int, int, int]:
    """(Q, S, nb): Q = max(w, 16) queries per block (at most T), spans of S = min(Q + 2w, T)
    keys, nb blocks."""
    T, w = seq_len, half_window
    Q = max(min(max(w, MIN_BLOCK), T), 1)
    return Q, min(Q + 2 * w, T), (T + Q - 1) // Q


def block_layout(seq_len: int, half_window: int, device: torch.device) -> BlockLayout:
    """The blocks of :func:`block_sizes` and the keys each one scores."""
    T, w = seq_len, half_window
    Q, S, nb = block_sizes(T, w)
    # Each span starts w before its block, moved inside the row: it still holds every key
    # within w of its queries, and all spans have the same length S.
    starts = (torch.arange(nb, device=device) * Q - w).clamp(0, max(T - S, 0))  # (nb,)
    key_index = starts[:, None] + torch.arange(S, device=device)  # (nb, S)
    query_index = torch.arange(nb * Q, device=device).view(nb, Q)  # (nb * Q,) -> (nb, Q)
    distance = (query_index[:, :, None] - key_index[:, None, :]).abs()  # (nb, Q, S)
    return BlockLayout(Q, S, nb, key_index, distance)


def blocked_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    segments: torch.Tensor,
    half_window: int,
    slopes: torch.Tensor | None,
    layout: BlockLayout,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores of each block's queries over its span, -inf where a key is out of reach, in
    float32 at least; their softmax is the attention probabilities.

    q, k (B, H, T, K); ``segments`` (B or 1, T) int: a query sees a key of the same segment
    (>= 0) within ``half_window``; ``slopes`` (H,) ALiBi's, or None. Returns (scores
    (B, H, nb, Q, S), has_key (B or 1, 1, nb, Q, 1) bool, the queries in blocks scaled by
    1 / sqrt(K) (B, H, nb, Q, K)). Rows with no key to attend to (padding) see every key, so
    nothing divides 0 by 0: the caller zeroes their output with ``has_key``.
    """
    B, H, T, K = q.shape
    Q, nb = layout.size, layout.blocks
    compute = torch.promote_types(q.dtype, torch.float32)
    # Scaled before the product: one (B, H, nb, Q, S) tensor less than scaling the scores
    blocks = F.pad(q.to(compute) / math.sqrt(K), (0, 0, 0, nb * Q - T)).view(B, H, nb, Q, K)
    scores = blocks @ spans(k, layout).to(compute).transpose(-2, -1)  # (B, H, nb, Q, S)
    # In place: the product's backward needs its inputs, not its output
    if slopes is not None:
        scores.sub_(slopes.to(compute)[:, None, None, None] * layout.distance.to(compute))
    query_segment = F.pad(segments, (0, nb * Q - T), value=-1).view(-1, nb, Q)  # (B|1, nb, Q)
    key_segment = segments[:, layout.key_index]  # (B|1, nb, S)
    valid = (query_segment[..., None] == key_segment[:, :, None, :]) & (
        key_segment[:, :, None, :] >= 0
    )  # (B|1, nb, Q, S)
    valid = (valid & (layout.distance <= half_window))[:, None]  # -> (B|1, 1, nb, Q, S)
    has_key = valid.any(dim=-1, keepdim=True)
    scores.masked_fill_(~(valid | ~has_key), float("-inf"))
    return scores, has_key, blocks


def spans(t: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """(B, H, T, K) -> (B, H, nb, S, K): each block's span of keys (or values)."""
    B, H, _, K = t.shape
    flat = t.index_select(2, layout.key_index.flatten())  # (B, H, nb * S, K)
    return flat.view(B, H, layout.blocks, layout.span, K)


def dropout_keep(
    q: torch.Tensor, half_window: int, dropout_p: float, generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """Which probabilities dropout keeps, (B, H, nb, Q, S) bool, or None without dropout. A
    seeded ``generator`` draws the same mask again (the operator's backward); None draws from
    the default generator of q's device."""
    if dropout_p == 0.0:
        return None
    B, H, T, _ = q.shape
    Q, S, nb = block_sizes(T, half_window)
    shape = (B, H, nb, Q, S)
    return torch.rand(shape, generator=generator, device=q.device) >= dropout_p


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segments: torch.Tensor,
    half_window: int,
    slopes: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Banded attention along rows: q, k, v (B, H, T, K) -> (B, H, T, K), differentiable.

    ``segments`` (B or 1, T) int: each sequence's tokens are contiguous and share an id >= 0
    (padding -1); a query attends the keys of its segment within ``half_window``, with ALiBi's
    penalty when ``slopes`` (H,) is given. Rows with no key to attend to output 0. Memory
    O(T * half_window): the backward recomputes the probabilities rather than keeping them,
    as flash-attention does, so only q, k, v (and dropout's mask) are kept.
    """
    keep = dropout_keep(q, half_window, dropout_p)
    out = _LocalAttention.apply(q, k, v, segments, half_window, slopes, dropout_p, keep)
    return out  # type: ignore[no-any-return]


class _LocalAttention(torch.autograd.Function):
    @staticmethod
    def forward(q, k, v, segments, half_window, slopes, dropout_p, keep):  # type: ignore[override]
        return local_attention_with_lse(q, k, v, segments, half_window, slopes, dropout_p, keep)[0]

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        q, k, v, segments, half_window, slopes, dropout_p, keep = inputs
        ctx.save_for_backward(q, k, v, segments, slopes, keep)
        ctx.half_window, ctx.dropout_p = half_window, dropout_p

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, segments, slopes, keep = ctx.saved_tensors
        grads = local_attention_grads(
            grad_out, q, k, v, segments, ctx.half_window, slopes, ctx.dropout_p, keep
        )
        return *grads, None, None, None, None, None


def local_attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segments: torch.Tensor,
    half_window: int,
    slopes: torch.Tensor | None,
    dropout_p: float,
    keep: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`local_attention`'s output (no autograd) with dropout's ``keep`` mask (from
    :func:`dropout_keep`), and each query's log-sum-exp of scores (B, H, T) (over its whole
    span for rows with no key in reach)."""
    B, H, T, K = q.shape
    compute = torch.promote_types(q.dtype, torch.float32)
    if T == 0:
        return q.new_zeros(q.shape), q.new_zeros(B, H, 0, dtype=compute)
    layout = block_layout(T, half_window, q.device)
    scores, has_key, _ = blocked_scores(q, k, segments, half_window, slopes, layout)
    lse = scores.logsumexp(dim=-1).view(B, H, -1)[:, :, :T]  # (B, H, nb, Q) -> (B, H, T)
    probs = scores.softmax(dim=-1)  # (B, H, nb, Q, S)
    del scores
    if keep is not None:
        probs = probs.mul_(keep).div_(1.0 - dropout_p)
    out = probs @ spans(v, layout).to(compute)  # (B, H, nb, Q, S) @ (B, H, nb, S, K)
    out = out * has_key  # rows with no key: 0
    return out.view(B, H, -1, K)[:, :, :T].to(q.dtype), lse  # (B, H, nb * Q, K) -> (B, H, T, K)


def local_attention_grads(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segments: torch.Tensor,
    half_window: int,
    slopes: torch.Tensor | None,
    dropout_p: float,
    keep: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of :func:`local_attention`, recomputing the probabilities, with the
    forward's dropout mask ``keep``: the formulas of ``varlen_kernels._formula_grads`` per
    block, the spans' key and value gradients summed back into the rows they were read from."""
    B, H, T, K = q.shape
    if T == 0:
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    layout = block_layout(T, half_window, q.device)
    scores, has_key, blocks = blocked_scores(q, k, segments, half_window, slopes, layout)
    probs = scores.softmax(dim=-1)  # (B, H, nb, Q, S)
    del scores
    compute = probs.dtype
    nb, Q = layout.blocks, layout.size
    scale = None if keep is None else keep.to(compute) / (1.0 - dropout_p)
    g = F.pad(grad_out.to(compute), (0, 0, 0, nb * Q - T)).view(B, H, nb, Q, K) * has_key
    dropped = probs if scale is None else probs * scale
    dvalues = dropped.transpose(-2, -1) @ g  # (B, H, nb, S, Q) @ (B, H, nb, Q, K)
    del dropped
    dprobs = g @ spans(v, layout).to(compute).transpose(-2, -1)  # (B, H, nb, Q, S)
    if scale is not None:
        dprobs.mul_(scale)
    # dS = P * (dP - rowsum(P * dP)), in place over dP; the 1 / sqrt(K) is in the blocks
    dscores = dprobs.sub_((probs * dprobs).sum(dim=-1, keepdim=True)).mul_(probs)
    del probs
    dq = (dscores @ spans(k, layout).to(compute)) / math.sqrt(K)  # (B, H, nb, Q, K)
    dq = dq.view(B, H, nb * Q, K)[:, :, :T]  # -> (B, H, T, K)
    dkeys = dscores.transpose(-2, -1) @ blocks  # (B, H, nb, S, K)
    index = layout.key_index.flatten()  # (nb * S,)

    def fold(d: torch.Tensor) -> torch.Tensor:  # (B, H, nb, S, K) -> (B, H, T, K), summed
        return d.new_zeros(B, H, T, K).index_add_(2, index, d.flatten(2, 3))

    return dq.to(q.dtype), fold(dkeys).to(k.dtype), fold(dvalues).to(v.dtype)


def local_attention_padded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    real: torch.Tensor | None,
    half_window: int,
    slopes: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """:func:`local_attention` on a padded batch q, k, v (B, H, T, K) with ``real`` (B, T)
    True = real token (or None): each row's real tokens are moved to its front in order (a
    permutation), so windows and ALiBi count real tokens only, and moved back afterwards."""
    B, H, T, K = q.shape
    if real is None:
        segments = torch.zeros(1, T, dtype=torch.int64, device=q.device)  # (1, T): one sequence
        return local_attention(q, k, v, segments, half_window, slopes, dropout_p)
    count = real.sum(dim=1, keepdim=True)  # (B, 1)
    # Real token r of a row goes to r, padding after all the real tokens, both in order
    rank = real.cumsum(dim=1) - 1
    pad_rank = (~real).cumsum(dim=1) - 1
    target = torch.where(real, rank, count + pad_rank)  # (B, T), a permutation of each row
    index = target[:, None, :, None].expand(B, H, T, K)  # (B, T) -> (B, H, T, K)
    q, k, v = (torch.zeros_like(t).scatter(2, index, t) for t in (q, k, v))
    position = torch.arange(T, device=q.device)
    segments = torch.where(position < count, 0, -1)  # (B, T): one sequence, then padding
    out = local_attention(q, k, v, segments, half_window, slopes, dropout_p)
    return out.gather(2, index)  # back to where each token came from
