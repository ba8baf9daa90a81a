"""The kernels behind variable-length attention, registered as one PyTorch operator.

``encoderkit::varlen_attention`` takes packed q, k, v (N, H, K) and ``cu_seqlens`` (B + 1,) and
returns (out (N, H, K), logsumexp (H, N), rng (2,) uint64): the output, each query's log-sum-exp
of scores in float32 (float64 for float64 q; what the backward needs to rebuild the probabilities
without keeping them) and the random state its dropout used.
``half_window`` >= 0 makes it local attention (|i - j| <= half_window within each sequence; -1
is full attention) and ``alibi`` (H,) adds ALiBi's -slope_h * |i - j| to the scores (see
:mod:`encoderkit.layers.local` and :mod:`encoderkit.layers.alibi`).
``encoderkit::varlen_attention_backward`` is its gradient. Registered with
``torch.library.custom_op``, a fake (meta) implementation and autograd, it is one opaque node to
``torch.compile(fullgraph=True)`` and ``torch.export``, which cannot trace the per-sequence
Python and host reads inside.

Kernels, all with dropout on the attention probabilities scaled by 1 / (1 - p), as in
:func:`encoderkit.layers.attention.scaled_dot_product_attention`:

* ``"varlen"``: flash-attention over the packed tokens (``aten._flash_attention_forward`` with
  cumulative lengths), CUDA, float16 / bfloat16. Its dropout draws from the CUDA generator's
  Philox stream; the (seed, offset) pair comes back as ``rng`` for the backward.
* ``"loop"``: one attention per sequence. On the CPU without dropout each is the fused flash
  kernel; otherwise the formula in float32, with a dropout mask drawn from a generator seeded by
  ``rng``, so the backward draws the same mask again.
* ``"repad"``: every sequence padded to the longest, one masked computation of the formula.

Local attention (``half_window`` >= 0) runs, under ``"loop"`` and ``"repad"`` alike, as blocks of
queries along all the packed tokens at once, each scoring its span of keys (memory linear in
N, see :func:`encoderkit.layers.local.local_attention`); under ``"varlen"`` as flash-attention's
own window (``window_size_left`` and ``window_size_right``), which has no ALiBi backward.

Shape legend: N packed tokens, B sequences, M the longest sequence, H heads, K head width.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch.library import custom_op

from encoderkit.layers.alibi import alibi_bias
from encoderkit.layers.local import dropout_keep, local_attention_grads, local_attention_with_lse

KERNELS: tuple[str, ...] = ("varlen", "loop", "repad")


@custom_op("encoderkit::varlen_attention", mutates_args=())
def varlen_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_len: int,
    dropout_p: float,
    kernel: str,
    half_window: int = -1,
    alibi: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out (N, H, K), logsumexp (H, N), rng (2,)); ``max_len`` bounds every sequence's length."""
    if kernel == "varlen":
        _check_flash_alibi(alibi)
        return _flash_forward(q, k, v, cu_seqlens, max_len, dropout_p, half_window)
    rng = _new_seed(q.device) if dropout_p > 0.0 else torch.zeros(2, dtype=torch.uint64)
    generator = _generator(rng, q.device)
    if half_window >= 0:
        out, lse = _local_forward(q, k, v, cu_seqlens, half_window, alibi, dropout_p, generator)
    else:
        out, lse = _formula_kernels[kernel](q, k, v, cu_seqlens, dropout_p, generator, alibi)
    return out, lse, rng.to(q.device)


@varlen_attention_op.register_fake
def _(q, k, v, cu_seqlens, max_len, dropout_p, kernel, half_window=-1, alibi=None):
    lse = q.new_empty(q.shape[1], q.shape[0], dtype=_lse_dtype(q))  # (H, N)
    return q.new_empty(q.shape), lse, q.new_empty(2, dtype=torch.uint64)


@custom_op("encoderkit::varlen_attention_backward", mutates_args=())
def varlen_attention_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    rng: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_len: int,
    dropout_p: float,
    kernel: str,
    half_window: int = -1,
    alibi: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each (N, H, K)."""
    grad_out = grad_out.contiguous()
    if kernel == "varlen":
        _check_flash_alibi(alibi)
        unused = torch.empty((), dtype=torch.uint64, device=q.device)
        window = _flash_window(half_window)
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad_out, q, k, v, out, lse, cu_seqlens, cu_seqlens, max_len, max_len,
            dropout_p, False, rng, unused, window_size_left=window, window_size_right=window,
        )  # fmt: skip
        return dq, dk, dv
    if half_window >= 0:
        return _local_backward(grad_out, q, k, v, rng, cu_seqlens, half_window, alibi, dropout_p)
    if kernel == "repad":
        return _repad_backward(grad_out, q, k, v, out, lse, rng, cu_seqlens, dropout_p, alibi)
    return _loop_backward(grad_out, q, k, v, out, lse, rng, cu_seqlens, dropout_p, alibi)


@varlen_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, rng, cu_seqlens, max_len, dropout_p, kernel, half_window=-1,
      alibi=None):  # fmt: skip
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 q


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens, max_len, dropout_p, kernel, half_window, alibi = inputs
    out, lse, rng = output
    ctx.save_for_backward(q, k, v, out, lse, rng, cu_seqlens, alibi)
    ctx.max_len, ctx.dropout_p, ctx.kernel = max_len, dropout_p, kernel
    ctx.half_window = half_window


def _backward(ctx, grad_out, _grad_lse, _grad_rng):
    q, k, v, out, lse, rng, cu_seqlens, alibi = ctx.saved_tensors
    dq, dk, dv = varlen_attention_backward_op(
        grad_out, q, k, v, out, lse, rng, cu_seqlens, ctx.max_len, ctx.dropout_p, ctx.kernel,
        ctx.half_window, alibi,
    )  # fmt: skip
    return dq, dk, dv, None, None, None, None, None, None


varlen_attention_op.register_autograd(_backward, setup_context=_setup_context)


# flash-attention on CUDA ------------------------------------------------------------------------


def _flash_window(half_window: int) -> int | None:
    """flash-attention's window: keys i - left .. i + right, inclusive; None = unbounded."""
    return half_window if half_window >= 0 else None


def _check_flash_alibi(alibi: torch.Tensor | None) -> None:
    if alibi is not None:  # aten's flash backward takes no slopes
        raise ValueError("the varlen kernel has no ALiBi backward: use the loop or repad kernel")


def _flash_forward(q, k, v, cu_seqlens, max_len, dropout_p, half_window=-1):
    window = _flash_window(half_window)
    out, lse, rng, _, _ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, dropout_p, False, False,
        window_size_left=window, window_size_right=window,
    )  # fmt: skip
    if dropout_p == 0.0:  # the kernel leaves its Philox state unset without dropout
        rng = torch.zeros(2, dtype=torch.uint64, device=q.device)
    return out, lse, rng


# the formula, one sequence at a time or re-padded ----------------------------------------------


def _new_seed(device: torch.device) -> torch.Tensor:
    """A seed drawn from the default generator of ``device``'s type, so ``torch.manual_seed``
    makes dropout reproducible; stored as the (seed, 0) state the backward reads."""
    seed = torch.randint(2**62, (), device=device).item()
    return torch.tensor([seed, 0], dtype=torch.uint64)


def _generator(rng: torch.Tensor, device: torch.device) -> torch.Generator | None:
    if not rng.any():
        return None  # no dropout
    return torch.Generator(device=device).manual_seed(int(rng[0].item()))


def _formula(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    dropout_p: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """softmax(Q K^T / sqrt(K) + bias) V with dropout for q, k, v (b, H, s, K), in float32 at
    least; ``bias`` (1, H, s, s) is ALiBi's, or None.

    Returns (out in q's dtype, logsumexp (b, H, s), probabilities P, the dropout scale Z or None):
    the output is (P * Z) V.
    """
    compute = torch.promote_types(q.dtype, torch.float32)
    scores = q.to(compute) @ k.to(compute).transpose(-2, -1)  # (b, H, s, K) @ (b, H, K, s)
    scores = scores / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.to(compute)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    lse = scores.logsumexp(dim=-1)  # (b, H, s)
    probs = (scores - lse[..., None]).exp()
    scale = None
    if dropout_p > 0.0:
        keep = torch.rand(probs.shape, generator=generator, device=probs.device) >= dropout_p
        scale = keep.to(compute) / (1.0 - dropout_p)
    dropped = probs if scale is None else probs * scale
    return (dropped @ v.to(compute)).to(q.dtype), lse, probs, scale


def _formula_grads(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    dropout_p: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_formula`'s output, recomputing P and drawing the same dropout mask.

    With O = (P * Z) V and S = Q K^T / sqrt(K): dV = (P * Z)^T dO; dP = (dO V^T) * Z;
    dS = P * (dP - rowsum(P * dP)); dQ = dS K / sqrt(K); dK = dS^T Q / sqrt(K).
    """
    _, _, probs, scale = _formula(q, k, v, key_mask, bias, dropout_p, generator)
    compute = probs.dtype
    g, qc, kc, vc = (t.to(compute) for t in (grad_out, q, k, v))
    dropped = probs if scale is None else probs * scale
    dv = dropped.transpose(-2, -1) @ g  # (b, H, s, s)^T @ (b, H, s, K)
    dprobs = g @ vc.transpose(-2, -1)  # (b, H, s, s)
    if scale is not None:
        dprobs = dprobs * scale
    dscores = probs * (dprobs - (probs * dprobs).sum(dim=-1, keepdim=True))
    dscores = dscores / math.sqrt(q.shape[-1])
    dq, dk = dscores @ kc, dscores.transpose(-2, -1) @ qc
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _spans(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) rows of each non-empty sequence: a host read, fine inside the operator."""
    cu = cu_seqlens.tolist()
    return [(a, b) for a, b in itertools.pairwise(cu) if b > a]


def _heads_first(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1)[None]  # (s, H, K) -> (1, H, s, K)


def _fused_cpu(q: torch.Tensor, dropout_p: float) -> bool:
    return q.device.type == "cpu" and dropout_p == 0.0


def _alibi_bias(alibi: torch.Tensor | None, length: int, dtype: torch.dtype) -> torch.Tensor | None:
    """ALiBi's (1, H, s, s) bias for a sequence of ``length`` tokens, or None without slopes."""
    if alibi is None:
        return None
    positions = torch.arange(length, device=alibi.device)
    return alibi_bias(positions, positions, alibi.to(dtype))[None]  # (H, s, s) -> (1, H, s, s)


def _loop_forward(q, k, v, cu_seqlens, dropout_p, generator, alibi=None):
    out = q.new_zeros(q.shape)  # (N, H, K)
    lse = q.new_zeros(q.shape[1], q.shape[0], dtype=_lse_dtype(q))  # (H, N)
    for a, b in _spans(cu_seqlens):
        q_s, k_s, v_s = (_heads_first(t[a:b]) for t in (q, k, v))  # -> (1, H, s, K)
        bias = _alibi_bias(alibi, b - a, q.dtype)
        if _fused_cpu(q, dropout_p):
            o_s, lse_s = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q_s, k_s, v_s, attn_mask=bias
            )
        else:
            o_s, lse_s, _, _ = _formula(q_s, k_s, v_s, None, bias, dropout_p, generator)
        out[a:b] = o_s[0].transpose(0, 1)  # (1, H, s, K) -> (s, H, K)
        lse[:, a:b] = lse_s[0]
    return out, lse


def _loop_backward(grad_out, q, k, v, out, lse, rng, cu_seqlens, dropout_p, alibi=None):
    dq, dk, dv = q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    generator = _generator(rng, q.device)
    for a, b in _spans(cu_seqlens):
        g_s, q_s, k_s, v_s = (_heads_first(t[a:b]) for t in (grad_out, q, k, v))
        bias = _alibi_bias(alibi, b - a, q.dtype)
        if _fused_cpu(q, dropout_p):
            o_s, lse_s = _heads_first(out[a:b]), lse[None, :, a:b]
            grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                g_s, q_s, k_s, v_s, o_s, lse_s, 0.0, False, attn_mask=bias
            )
        else:
            grads = _formula_grads(g_s, q_s, k_s, v_s, None, bias, dropout_p, generator)
        for total, part in zip((dq, dk, dv), grads, strict=True):
            total[a:b] = part[0].transpose(0, 1)  # (1, H, s, K) -> (s, H, K)
    return dq, dk, dv


def _repad_layout(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(real (B, M) bool, index (N,) of the packed rows in the (B * M) padded layout)."""
    lengths = cu_seqlens.diff()  # (B,)
    longest = int(lengths.max()) if lengths.numel() else 0
    real = torch.arange(longest, device=cu_seqlens.device) < lengths[:, None]  # (B, M)
    return real, real.flatten().nonzero().squeeze(1)


def _pad(t: torch.Tensor, real: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, H, K) -> (B, H, M, K), zeros at padded positions."""
    rows = t.new_zeros(real.numel(), *t.shape[1:]).index_copy(0, index, t)  # (B * M, H, K)
    return rows.view(*real.shape, *t.shape[1:]).transpose(1, 2)


def _unpad(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, M, ...) -> (N, H, ...): the real rows back in packed order."""
    return t.transpose(1, 2).flatten(0, 1).index_select(0, index).contiguous()


def _repad_forward(q, k, v, cu_seqlens, dropout_p, generator, alibi=None):
    real, index = _repad_layout(cu_seqlens)
    key_mask = real[:, None, None, :]  # (B, M) -> (B, 1, 1, M)
    bias = _alibi_bias(alibi, real.shape[1], q.dtype)
    out, lse, _, _ = _formula(*(_pad(t, real, index) for t in (q, k, v)), key_mask, bias,
                              dropout_p, generator)  # fmt: skip
    return _unpad(out, index), _unpad(lse[..., None], index)[..., 0].T.contiguous()


def _repad_backward(grad_out, q, k, v, out, lse, rng, cu_seqlens, dropout_p, alibi=None):
    real, index = _repad_layout(cu_seqlens)
    padded = (_pad(t, real, index) for t in (grad_out, q, k, v))
    bias = _alibi_bias(alibi, real.shape[1], q.dtype)
    generator = _generator(rng, q.device)
    grads = _formula_grads(*padded, real[:, None, None, :], bias, dropout_p, generator)
    return tuple(_unpad(g, index) for g in grads)


# local attention along all the packed tokens ----------------------------------------------------


def _segments(cu_seqlens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(1, N) int64: the sequence each packed token belongs to."""
    rows = torch.arange(num_tokens, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:], rows, right=True)[None]  # (N,) -> (1, N)


def _local_forward(q, k, v, cu_seqlens, half_window, alibi, dropout_p, generator):
    segments = _segments(cu_seqlens, q.shape[0])
    q_, k_, v_ = (_heads_first(t) for t in (q, k, v))  # (N, H, K) -> (1, H, N, K)
    keep = dropout_keep(q_, half_window, dropout_p, generator)
    out, lse = local_attention_with_lse(
        q_, k_, v_, segments, half_window, alibi, dropout_p, keep
    )  # (1, H, N, K), (1, H, N)
    return out[0].transpose(0, 1).contiguous(), lse[0].contiguous()  # (N, H, K), (H, N)


def _local_backward(grad_out, q, k, v, rng, cu_seqlens, half_window, alibi, dropout_p):
    segments = _segments(cu_seqlens, q.shape[0])
    g_, q_, k_, v_ = (_heads_first(t) for t in (grad_out, q, k, v))  # -> (1, H, N, K)
    keep = dropout_keep(q_, half_window, dropout_p, _generator(rng, q.device))  # the forward's
    grads = local_attention_grads(g_, q_, k_, v_, segments, half_window, alibi, dropout_p, keep)
    return tuple(g[0].transpose(0, 1).contiguous() for g in grads)  # -> (N, H, K)


_formula_kernels = {"loop": _loop_forward, "repad": _repad_forward}
