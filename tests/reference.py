"""Independent float64 references the tests compare against, written apart from the library.

They follow the paper's description directly, one head at a time, with separate W^Q, W^K, W^V
slices and an explicit exp / sum softmax, so a shared bug in the library's layout or masking
cannot hide in both.
"""

from __future__ import annotations

import math
from unittest import mock

import torch
from torch import nn


def reference_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d) + mask) v in float64; rows with nothing to attend to give 0."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("bhtk,bhsk->bhts", q, k) / math.sqrt(q.shape[-1])
    allowed = torch.ones_like(scores, dtype=torch.bool)
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            scores = scores + mask.double()
            allowed = allowed & (mask != float("-inf"))
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True).nan_to_num(neginf=0.0)
    e = torch.exp(scores - row_max) * allowed
    total = e.sum(dim=-1, keepdim=True)
    probs = torch.where(total > 0, e / total.clamp_min(1e-300), torch.zeros_like(e))
    return torch.einsum("bhts,bhsk->bhtk", probs, v), probs


def reference_self_attention(x, qkv_weight, qkv_bias, proj_weight, proj_bias, n_heads, mask=None):
    """Multi-head self-attention head by head: (B, T, D) float64 -> (B, T, D)."""
    x = x.double()
    D = x.shape[-1]
    K = D // n_heads
    heads = []
    for h in range(n_heads):
        parts = []
        for j in range(3):  # W^Q, W^K, W^V rows of head h
            rows = slice(j * D + h * K, j * D + (h + 1) * K)
            w = qkv_weight[rows].double()
            b = qkv_bias[rows].double() if qkv_bias is not None else 0.0
            parts.append((x @ w.T + b)[:, None])  # (B, 1, T, K)
        head_mask = None if mask is None else mask[:, h : h + 1] if mask.shape[1] > 1 else mask
        out, _ = reference_attention(*parts, head_mask)
        heads.append(out[:, 0])
    concat = torch.cat(heads, dim=-1)
    bias = proj_bias.double() if proj_bias is not None else 0.0
    return concat @ proj_weight.double().T + bias


def padding_mask(lengths, seq_len):
    """(B, T) bool, True = real token, for right-padded sequences of the given lengths."""
    return torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]


def perturb_norms_and_biases(module: nn.Module, std: float = 0.3) -> None:
    """Move LayerNorm weights and biases off their 1 / 0 init, so a copying mix-up shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * std)


def run_torch_fast_path(theirs: nn.Module, x, key_padding_mask):
    """Run a torch encoder (layer) under inference_mode; return its output and how many times
    the fused native fast path ran, which proves the fast path was the one compared."""
    fast = torch._transformer_encoder_layer_fwd
    with (
        torch.inference_mode(),
        mock.patch.object(torch, "_transformer_encoder_layer_fwd", wraps=fast) as spy,
    ):
        out = theirs(x, src_key_padding_mask=key_padding_mask)
    return out, spy.call_count


def assert_padding_never_read(module, x, real, pattern=None):
    """Filling the padded positions of ``x`` with NaN, +inf or -inf changes nothing: the output,
    the input gradient (0 at padding) and every parameter gradient equal those of zero padding
    bit for bit, and all are finite. Returns the output with zero padding."""
    weight = torch.randn_like(x)

    def run(fill):
        module.zero_grad()
        xi = x.masked_fill(~real[..., None], fill).requires_grad_()
        torch.manual_seed(3)  # the same dropout masks for every fill
        out = module(xi, real, pattern)
        (out * weight).sum().backward()  # padded rows included: they are finite too
        return out, xi.grad, [p.grad.clone() for p in module.parameters()]

    base_out, base_dx, base_dp = run(0.0)
    assert torch.isfinite(base_out).all()
    for fill in (float("nan"), float("inf"), float("-inf")):
        out, dx, dp = run(fill)
        assert torch.equal(out, base_out), fill
        assert torch.isfinite(dx).all() and torch.equal(dx, base_dx), fill
        assert torch.equal(dx[~real], torch.zeros_like(dx[~real]))
        for a, b in zip(dp, base_dp, strict=True):
            assert torch.isfinite(a).all() and torch.equal(a, b), fill
    return base_out


def reference_rotary(x, positions, base):
    """RoPE pair by pair in float64: dimensions (i, i + K/2) of x (..., s, K) at position m
    rotated by m * base^(-2i / K) (the rotate-half pairing of GPT-NeoX and ModernBERT)."""
    x = x.double()
    out = x.clone()
    half = x.shape[-1] // 2
    for t, m in enumerate(positions):
        for i in range(half):
            angle = float(m) * base ** (-2 * i / x.shape[-1])
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[..., t, i], x[..., t, i + half]
            out[..., t, i], out[..., t, i + half] = a * c - b * s, a * s + b * c
    return out


def reference_alibi_slopes(n_heads):
    """Press et al.'s slopes as their reference code computes them."""

    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + reference_alibi_slopes(2 * closest)[0::2][: n_heads - closest]


def reference_sequence_attention(q, k, v, window=None, slopes=None, rope_base=None):
    """Attention over one sequence q, k, v (H, s, K) in float64 at positions 0 .. s - 1:
    rotary positions, ALiBi's -slope_h * |i - j| and a band |i - j| <= window // 2, all
    written out one query and key at a time."""
    H, s, _ = q.shape
    if rope_base is not None:
        q, k = reference_rotary(q, range(s), rope_base), reference_rotary(k, range(s), rope_base)
    q, k, v = q.double(), k.double(), v.double()
    mask = torch.zeros(H, s, s, dtype=torch.float64)
    for i in range(s):
        for j in range(s):
            if window is not None and abs(i - j) > window // 2:
                mask[:, i, j] = float("-inf")
            elif slopes is not None:
                mask[:, i, j] = -torch.tensor(slopes, dtype=torch.float64) * abs(i - j)
    return reference_attention(q[None], k[None], v[None], mask[None])[0][0]
