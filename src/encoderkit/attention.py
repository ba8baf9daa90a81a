"""Scaled dot-product attention and multi-head self-attention (Vaswani et al. 2017, section 3.2).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V                          (eq. 1)
    MultiHead(X) = Concat(head_1, ..., head_h) W^O,  head_i = Attention(X W_i^Q, X W_i^K, X W_i^V)

Shape legend: B batch, T tokens (queries), S keys (S == T in self-attention), D model width,
H heads, K head width (D / H).

Two paths compute the same thing. ``"math"`` is the formula written out: it is the executable
spec and the test oracle. ``"fused"`` calls ``torch.nn.functional.scaled_dot_product_attention``,
which dispatches to flash / memory-efficient kernels. ``"auto"`` means fused.

``varlen_attention`` computes the same attention on packed tokens (see :mod:`encoderkit.packing`):
q, k, v (N, H, K), each token attending within its own sequence, with no padding anywhere. Its
kernels: ``"varlen"`` (``torch.nn.attention.varlen.varlen_attn``, flash-attention on CUDA, half
precision, no dropout), ``"loop"`` (one fused call per sequence: the fastest on CPU, measured
against the others in ``benchmarks/RESULTS.md``) and ``"repad"`` (pad each sequence to the longest,
one masked call: the CUDA fallback). ``"auto"`` picks the first that applies: varlen, then loop on
CPU, repad on other devices.

A query row with no key to attend to (an all-padding sequence, or a pattern that forbids every
key) outputs exactly 0 with gradient 0 on every path, never NaN: such rows are given every key
before the softmax (so nothing divides 0 by 0) and zeroed afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from encoderkit.checks import (
    check_choice,
    check_heads,
    check_hidden_states,
    check_input_dtype,
    check_packed_tokens,
    check_probability,
)
from encoderkit.masks import make_attention_mask, padding_mask_bool
from encoderkit.packing import Packing

varlen_attn: Callable[..., torch.Tensor] | None
try:  # torch >= 2.10, CUDA only
    from torch.nn.attention import varlen as _varlen

    varlen_attn = _varlen.varlen_attn  # type: ignore[assignment]
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None

Backend = Literal["auto", "math", "fused"]
BACKENDS: tuple[str, ...] = ("auto", "math", "fused")
VarlenKernel = Literal["auto", "varlen", "loop", "repad"]
VARLEN_KERNELS: tuple[str, ...] = ("auto", "varlen", "loop", "repad")


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    backend: Backend = "auto",
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k) + mask) V for q (B, H, T, K), k and v (B, H, S, K).

    ``mask`` is bool (True = may attend) or floating (added to the scores), broadcastable to
    (B, H, T, S); build it with :func:`encoderkit.masks.make_attention_mask`. ``dropout_p`` drops
    attention probabilities: callers pass 0.0 outside training (as the modules here do).
    """
    check_choice("backend", backend, BACKENDS)
    check_probability("dropout_p", dropout_p)
    _check_qkv(q, k, v)
    return _attend(q, k, v, mask, dropout_p, backend)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float,
    backend: Backend,
) -> torch.Tensor:
    """:func:`scaled_dot_product_attention` on arguments already checked (its callers here)."""
    if backend == "math":
        probs = attention_weights(q, k, mask)
        if dropout_p > 0.0:
            probs = F.dropout(probs, dropout_p)
        return probs @ v  # (B, H, T, S) @ (B, H, S, K) -> (B, H, T, K)
    mask, has_key = _open_empty_rows(mask, q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out if has_key is None else out.masked_fill(~has_key, 0.0)


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
        out = _attend(q_s, k_s, v_s, None, dropout_p, backend)  # checked once, not per sequence
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
    out = _attend(pad(q), pad(k), pad(v), key_mask, dropout_p, backend)  # (B, H, M, K)
    return out.transpose(1, 2).flatten(0, 1).index_select(0, index)  # -> (B * M, H, K) -> (N, H, K)


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The attention probabilities softmax(Q K^T / sqrt(d_k) + mask): (B, H, T, S).

    Rows with no key to attend to are all zero. The scores and the softmax are computed in
    float32 at least and the probabilities returned in q's dtype: half precision q . k overflows
    fp16 (|q . k| > 65504, e.g. entries of 1e3 in 64 dimensions) and keeps too few digits in bf16
    for the softmax, whose result depends on differences between scores.
    """
    _check_qkv(q, k, k)
    compute = torch.promote_types(q.dtype, torch.float32)
    # In q's dtype first, as the fused path gets it: -1e9 is -inf in fp16 on both paths
    mask, has_key = _open_empty_rows(mask, q.dtype)
    # .to() copies nothing for float32 and float64
    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(compute)
    probs = scores.softmax(dim=-1).to(q.dtype)  # (B, H, T, S)
    return probs if has_key is None else probs.masked_fill(~has_key, 0.0)


def _open_empty_rows(
    mask: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Let rows that may attend to nothing see every key; return the mask and which rows had keys.

    The caller zeroes the rows where ``has_key`` is False, so their output and gradient are 0.
    """
    if mask is None:
        return None, None
    if mask.dim() != 4:
        raise ValueError(
            f"mask must be 4-D, broadcastable to (B, H, T, S), got shape {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        has_key = mask.any(dim=-1, keepdim=True)  # (B|1, H|1, T|1, 1)
        return mask | ~has_key, has_key
    if not mask.is_floating_point():
        raise TypeError(f"mask must be bool or floating, got dtype {mask.dtype}")
    mask = mask.to(dtype)
    has_key = (mask != float("-inf")).any(dim=-1, keepdim=True)
    return mask.masked_fill(~has_key, 0.0), has_key


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


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, T, K), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"expected q (B, H, T, K) and k, v (B, H, S, K), got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


class MultiHeadSelfAttention(nn.Module):
    """h heads of width d_model / h: one fused qkv projection, attention, concat, projection W^O."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        check_heads(d_model, n_heads)
        check_probability("dropout", dropout)
        check_choice("backend", backend, BACKENDS)
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.backend: Backend = backend
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)  # [W^Q; W^K; W^V] for all heads
        self.proj = nn.Linear(d_model, d_model, bias=bias)  # W^O
        self.recorded: list[torch.Tensor] | None = None  # set by record_attention()

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D); or packed tokens x (N, D) -> (N, D) given ``packing``.

        Padded positions of x (``attention_mask`` False) are read as zeros, so no value there,
        NaN and inf included, changes any output.
        """
        if packing is not None:
            if attention_mask is not None or attn_mask is not None:
                raise ValueError("packed tokens take no masks: the packing says what attends")
            return self.forward_packed(x, packing)
        B, T, D = check_hidden_states(x, self.d_model).shape
        check_input_dtype(x, self.qkv.weight.dtype)
        H, K = self.n_heads, self.head_dim
        real = None if attention_mask is None else padding_mask_bool(attention_mask, B, T)
        mask = make_attention_mask(
            real, attn_mask, batch_size=B, seq_len=T, n_heads=H, dtype=x.dtype
        )
        if real is not None:
            # Masking the scores is not enough: 0 * NaN is NaN in probs @ V, and a NaN query row
            # poisons every key's gradient. Zeros keep padded rows finite and content-free.
            x = x.masked_fill(~real[..., None], 0.0)  # (B, T) -> (B, T, 1)
        qkv = self.qkv(x).view(B, T, 3, H, K)  # (B, T, 3D) -> (B, T, 3, H, K)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # -> 3 x (B, H, T, K)
        if self.recorded is not None:
            # Observed beside the output path, so recording never changes the outputs.
            with torch.no_grad():
                self.recorded.append(attention_weights(q, k, mask))
        dropout_p = self.dropout if self.training else 0.0
        out = scaled_dot_product_attention(q, k, v, mask, dropout_p, self.backend)
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, H, T, K) -> (B, T, H*K): concat heads
        return self.proj(out)

    def forward_packed(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """Packed real tokens x (N, D) -> (N, D), each attending within its own sequence."""
        N, D = check_packed_tokens(x, self.d_model, packing.num_tokens).shape
        check_input_dtype(x, self.qkv.weight.dtype)
        H, K = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).view(N, 3, H, K).unbind(1)  # (N, 3D) -> (N, 3, H, K) -> 3 x (N, H, K)
        if self.recorded is not None:
            with torch.no_grad():
                self.recorded.append(packed_attention_weights(q, k, packing))
        dropout_p = self.dropout if self.training else 0.0
        out = varlen_attention(q, k, v, packing, dropout_p, self.backend)
        return self.proj(out.reshape(N, D))  # (N, H, K) -> (N, H*K): concat heads


def packed_attention_weights(q: torch.Tensor, k: torch.Tensor, packing: Packing) -> torch.Tensor:
    """The (B, H, T, T) probabilities of packed q, k (N, H, K), laid out as the padded batch.

    Columns of padded keys and rows of padded queries (which packed execution never computes)
    are 0.
    """
    real = packing.unpack(q.new_ones(packing.num_tokens, dtype=torch.bool))  # (B, T)
    q, k = (packing.unpack(t).transpose(1, 2) for t in (q, k))  # (N, H, K) -> (B, H, T, K)
    probs = attention_weights(q, k, real[:, None, None, :])  # (B, H, T, T)
    return probs.masked_fill(~real[:, None, :, None], 0.0)


@contextmanager
def record_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record every attention layer's probabilities during the forwards run inside the block.

    Yields a list that, after one forward, holds one (B, H, T, T) tensor per attention layer in
    the order they ran: post-softmax, pre-dropout probabilities per head (not averaged), detached.
    Columns of padded keys are 0; rows of queries with nothing to attend to are all 0, and so
    are the rows of padded queries when the encoder runs padding-free (it never computes them).

        with record_attention(model) as maps:
            model(x, attention_mask)
    """
    layers = [m for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MultiHeadSelfAttention layer to record")
    if any(layer.recorded is not None for layer in layers):
        raise RuntimeError("record_attention is already active on this model")
    maps: list[torch.Tensor] = []
    for layer in layers:
        layer.recorded = maps
    try:
        yield maps
    finally:
        for layer in layers:
            layer.recorded = None
