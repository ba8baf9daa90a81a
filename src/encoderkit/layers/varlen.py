"""Attention within each packed sequence (variable-length attention): q, k, v (N, H, K) hold the
real tokens of a padded batch (see :mod:`encoderkit.layers.packing`), each token attending within
its own sequence, with no padding anywhere.

The fused kernels run as one registered operator, ``encoderkit::varlen_attention`` (see
:mod:`encoderkit.layers.varlen_kernels`), so compiled and exported models see a single node:
``"varlen"`` (flash-attention on the packed tokens: CUDA, half precision, dropout included),
``"loop"`` (one fused call per sequence: the fastest on CPU, measured against the others in
``benchmarks/RESULTS.md``) and ``"repad"`` (pad each sequence to the longest, one masked call).
``"auto"`` picks the first that applies: varlen, then loop on CPU, repad on other devices.
``backend="math"`` runs the formula one sequence at a time with autograd: the oracle the kernels
are tested against, for eager calls only (its Python loop reads the lengths on the host).

``window`` makes attention local (|i - j| <= window // 2 within each sequence) and
``alibi_slopes`` adds ALiBi's bias; the math path writes both out as an explicit mask per
sequence, the kernels never do (see :mod:`encoderkit.layers.varlen_kernels`).

Shape legend: N packed tokens, B sequences, M the longest sequence, H heads, K head width.
"""

from __future__ import annotations

from typing import Literal

import torch

from encoderkit.layers.attention import BACKENDS, Backend, attend, attention_weights
from encoderkit.layers.masks import add_position_pattern
from encoderkit.layers.packing import Packing
from encoderkit.layers.positions import token_positions
from encoderkit.layers.varlen_kernels import varlen_attention_op
from encoderkit.utils.checks import check_choice, check_positive_int, check_probability

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
    window: int | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention within each packed sequence: q, k, v (N, H, K) -> (N, H, K).

    Row n of the output equals what :func:`scaled_dot_product_attention` gives that token in the
    padded (B, H, T, K) batch under its key-padding mask. ``backend="math"`` runs the formula
    one sequence at a time (the oracle); otherwise ``kernel`` chooses the fused kernel.
    ``window``: local attention, |i - j| <= window // 2; ``alibi_slopes`` (H,): ALiBi's.
    """
    check_choice("backend", backend, BACKENDS)
    check_choice("kernel", kernel, VARLEN_KERNELS)
    check_probability("dropout_p", dropout_p)
    _check_packed_qkv(q, k, v, packing)
    if window is not None:
        check_positive_int("window", window)
    _check_slopes(alibi_slopes, q)
    half = -1 if window is None else window // 2
    if backend == "math":
        return _per_sequence_math(q, k, v, packing, dropout_p, half, alibi_slopes)
    if kernel == "auto":
        kernel = pick_varlen_kernel(q, dropout_p, alibi=alibi_slopes is not None)
    elif kernel == "varlen" and not varlen_kernel_applies(q):
        raise ValueError(
            f"the varlen kernel needs CUDA, float16 or bfloat16 and a head width that is a "
            f"multiple of 8 up to 256; got device {q.device.type}, dtype {q.dtype}, head width "
            f"{q.shape[-1]}"
        )
    elif kernel == "varlen" and alibi_slopes is not None:
        raise ValueError("the varlen kernel has no ALiBi backward: use the loop or repad kernel")
    # The longest sequence is at most T: an upper bound the kernel accepts, known without
    # reading the lengths back from the device.
    out, _, _ = varlen_attention_op(
        q, k, v, packing.cu_seqlens, packing.seq_len, float(dropout_p), kernel, half,
        alibi_slopes,
    )  # fmt: skip
    return out


def pick_varlen_kernel(
    q: torch.Tensor, dropout_p: float = 0.0, alibi: bool = False
) -> VarlenKernel:
    """The kernel ``"auto"`` runs for these queries: varlen where it applies (not with ALiBi,
    whose gradient flash-attention does not give here), else loop on the CPU and repad
    elsewhere. (All three support dropout and windows.)"""
    if varlen_kernel_applies(q) and not alibi:
        return "varlen"
    return "loop" if q.device.type == "cpu" else "repad"


def varlen_kernel_applies(q: torch.Tensor) -> bool:
    """Flash-attention's conditions: CUDA, half precision, head width a multiple of 8 <= 256."""
    return (
        q.device.type == "cuda"
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
    )


def _per_sequence_math(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    packing: Packing,
    dropout_p: float,
    half_window: int = -1,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The formula for each sequence on views of the packed tokens, with autograd: the oracle.
    Windows and ALiBi are an explicit (1, H, s, s) mask per sequence."""
    half = None if half_window < 0 else half_window
    outs = []
    for q_s, k_s, v_s in zip(packing.split(q), packing.split(k), packing.split(v), strict=True):
        if q_s.shape[0] == 0:
            continue  # an empty sequence has no queries
        q_s, k_s, v_s = (t.transpose(0, 1)[None] for t in (q_s, k_s, v_s))  # -> (1, H, s, K)
        positions = token_positions(None, q_s.shape[2], q.device)  # (1, s)
        mask = add_position_pattern(None, positions, half, alibi_slopes, q.dtype)
        out = attend(q_s, k_s, v_s, mask, dropout_p, "math")  # checked once, not per sequence
        outs.append(out[0].transpose(0, 1))  # (1, H, s, K) -> (s, H, K)
    return torch.cat(outs) if outs else torch.zeros_like(q)


def packed_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    packing: Packing,
    window: int | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (B, H, T, T) probabilities of packed q, k (N, H, K), laid out as the padded batch,
    with ``window`` and ``alibi_slopes`` as in :func:`varlen_attention`.

    Columns of padded keys and rows of padded queries (which packed execution never computes)
    are 0.
    """
    real = packing.unpack(q.new_ones(packing.num_tokens, dtype=torch.bool))  # (B, T)
    q, k = (packing.unpack(t).transpose(1, 2) for t in (q, k))  # (N, H, K) -> (B, H, T, K)
    half = None if window is None else window // 2
    positions = token_positions(real, packing.seq_len, q.device)  # (B, T)
    mask = add_position_pattern(real[:, None, None, :], positions, half, alibi_slopes, q.dtype)
    probs = attention_weights(q, k, mask)  # (B, H, T, T)
    return probs.masked_fill(~real[:, None, :, None], 0.0)


def _check_slopes(slopes: torch.Tensor | None, q: torch.Tensor) -> None:
    if slopes is None:
        return
    if not isinstance(slopes, torch.Tensor):
        raise TypeError(f"alibi_slopes must be a torch.Tensor, got {type(slopes).__name__}")
    if slopes.shape != (q.shape[1],) or not slopes.is_floating_point():
        raise ValueError(
            f"alibi_slopes must be floating (H,) with H = {q.shape[1]} heads, got dtype "
            f"{slopes.dtype} shape {tuple(slopes.shape)}"
        )


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
