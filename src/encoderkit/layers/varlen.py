"""Attention within each packed sequence (variable-length attention): q, k, v (N, H, K) hold the
real tokens of a padded batch (see :mod:`encoderkit.layers.packing`), each token attending within
its own sequence, with no padding anywhere.

Kernels: ``"varlen"`` (``torch.nn.attention.varlen.varlen_attn``, flash-attention on CUDA, half
precision, no dropout), ``"loop"`` (one fused call per sequence: the fastest on CPU, measured
against the others in ``benchmarks/RESULTS.md``) and ``"repad"`` (pad each sequence to the longest,
one masked call: the CUDA fallback). ``"auto"`` picks the first that applies: varlen, then loop on
CPU, repad on other devices.

Shape legend: N packed tokens, B sequences, M the longest sequence, H heads, K head width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from encoderkit.layers.attention import BACKENDS, Backend, attend, attention_weights
from encoderkit.layers.packing import Packing
from encoderkit.utils.checks import check_choice, check_probability

varlen_attn: Callable[..., torch.Tensor] | None
try:  # torch >= 2.10, CUDA only
    from torch.nn.attention import varlen as _varlen

    varlen_attn = _varlen.varlen_attn  # type: ignore[assignment]
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None

VarlenKernel = Literal["auto", "varlen", "loop", "repad"]
VARLEN_KERNELS: tuple[str, ...] = ("auto", "varlen", "loop", "repad")


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    packing: Packing,
    dropout_p: float = 0.0,
    backend: Backend = "auto",
    kernel: VarlenKernel = "auto",
) -> torch.Tensor:
    """Attention within each packed sequence: q, k, v (N, H, K) -> (N, H, K).

    Row n of the output equals what :func:`scaled_dot_product_attention` gives that token in the
    padded (B, H, T, K) batch under its key-padding mask. ``backend="math"`` runs the formula
    one sequence at a time (the oracle); otherwise ``kernel`` chooses the fused kernel.
    """
    check_choice("backend", backend, BACKENDS)
    check_choice("kernel", kernel, VARLEN_KERNELS)
    check_probability("dropout_p", dropout_p)
    _check_packed_qkv(q, k, v, packing)
    if backend == "math":
        kernel = "loop"
    elif kernel == "auto":
        kernel = pick_varlen_kernel(q, dropout_p)
    if kernel == "varlen":
        cu, longest = packing.cu_seqlens, packing.max_len
        return _varlen_kernel(q, dropout_p)(q, k, v, cu, cu, longest, longest)
    if kernel == "repad":
        return _repadded_attention(q, k, v, packing, dropout_p, backend)
    return _per_sequence_attention(q, k, v, packing, dropout_p, backend)


def pick_varlen_kernel(q: torch.Tensor, dropout_p: float) -> VarlenKernel:
    """The kernel ``"auto"`` runs for these queries: varlen where it applies, else loop on the
    CPU and repad elsewhere."""
    if varlen_kernel_applies(q, dropout_p):
        return "varlen"
    return "loop" if q.device.type == "cpu" else "repad"


def varlen_kernel_applies(q: torch.Tensor, dropout_p: float) -> bool:
    return (
        varlen_attn is not None
        and q.device.type == "cuda"
        and q.dtype in (torch.float16, torch.bfloat16)
        and dropout_p == 0.0
    )


def _varlen_kernel(q: torch.Tensor, dropout_p: float) -> Callable[..., torch.Tensor]:
    if varlen_attn is None or not varlen_kernel_applies(q, dropout_p):
        raise ValueError(
            f"the varlen kernel needs torch >= 2.10, CUDA, float16 or bfloat16 and no dropout; "
            f"got torch {torch.__version__}, device {q.device.type}, dtype {q.dtype}, "
            f"dropout_p {dropout_p}"
        )
    return varlen_attn


def _per_sequence_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    packing: Packing,
    dropout_p: float,
    backend: Backend,
) -> torch.Tensor:
    """One attention call per sequence, on views of the packed tokens: no padding, no mask."""
    outs = []
    for q_s, k_s, v_s in zip(packing.split(q), packing.split(k), packing.split(v), strict=True):
        if q_s.shape[0] == 0:
            continue  # an empty sequence has no queries
        q_s, k_s, v_s = (t.transpose(0, 1)[None] for t in (q_s, k_s, v_s))  # -> (1, H, s, K)
        out = attend(q_s, k_s, v_s, None, dropout_p, backend)  # checked once, not per sequence
        outs.append(out[0].transpose(0, 1))  # (1, H, s, K) -> (s, H, K)
    return torch.cat(outs) if outs else torch.zeros_like(q)


def _repadded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    packing: Packing,
    dropout_p: float,
    backend: Backend,
) -> torch.Tensor:
    """Pad every sequence to the longest (M tokens), attend once with a key mask, repack."""
    lengths = packing.cu_seqlens.diff()  # (B,), on q's device already
    real = torch.arange(packing.max_len, device=q.device) < lengths[:, None]  # (B, M)
    index = real.flatten().nonzero().squeeze(1)  # (N,) rows of the (B * M) padded layout

    def pad(t: torch.Tensor) -> torch.Tensor:  # (N, H, K) -> (B, H, M, K)
        rows = t.new_zeros(real.numel(), *t.shape[1:]).index_copy(0, index, t)  # (B * M, H, K)
        return rows.view(*real.shape, *t.shape[1:]).transpose(1, 2)

    key_mask = real[:, None, None, :]  # (B, M) -> (B, 1, 1, M)
    out = attend(pad(q), pad(k), pad(v), key_mask, dropout_p, backend)  # (B, H, M, K)
    return out.transpose(1, 2).flatten(0, 1).index_select(0, index)  # -> (B * M, H, K) -> (N, H, K)


def packed_attention_weights(q: torch.Tensor, k: torch.Tensor, packing: Packing) -> torch.Tensor:
    """The (B, H, T, T) probabilities of packed q, k (N, H, K), laid out as the padded batch.

    Columns of padded keys and rows of padded queries (which packed execution never computes)
    are 0.
    """
    real = packing.unpack(q.new_ones(packing.num_tokens, dtype=torch.bool))  # (B, T)
    q, k = (packing.unpack(t).transpose(1, 2) for t in (q, k))  # (N, H, K) -> (B, H, T, K)
    probs = attention_weights(q, k, real[:, None, None, :])  # (B, H, T, T)
    return probs.masked_fill(~real[:, None, :, None], 0.0)


def _check_packed_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> None:
    if not isinstance(packing, Packing):
        raise TypeError(f"packing must be a Packing, got {type(packing).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3 or t.shape[0] != packing.num_tokens or not t.is_floating_point():
            raise ValueError(
                f"{name} must be floating (N, H, K) with N = {packing.num_tokens} packed "
                f"tokens, got dtype {t.dtype} shape {tuple(t.shape)}"
            )
    if not q.shape == k.shape == v.shape or not q.dtype == k.dtype == v.dtype:
        raise ValueError(
            f"q, k, v must share shape and dtype, got {tuple(q.shape)} {q.dtype}, "
            f"{tuple(k.shape)} {k.dtype}, {tuple(v.shape)} {v.dtype}"
        )
