"""``benchmarks.gpu``'s correctness section: whether encoderkit's CUDA paths compute the right
thing. A padded batch through the padding-free and the padded encoder against a float64 oracle on
the math backend, in fp32 and in bf16 (weights, and autocast); then each varlen kernel alone.

Shape legend: B batch, T tokens, N real (packed) tokens, D model width, H heads, K head width.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from unittest import mock

import torch

import encoderkit.layers.varlen as varlen_module
from benchmarks.gates import max_abs, rel_max, rel_rms
from benchmarks.gpu_bench import (
    BF16_TOL,
    FP32_TOL,
    Bench,
    Section,
    exact_fp32,
    free_memory,
    guarded,
    record,
    skip,
)
from benchmarks.steps import loss_on_real
from encoderkit import Encoder, EncoderConfig
from encoderkit.layers.packing import Packing
from encoderkit.layers.varlen import pick_varlen_kernel, varlen_attention, varlen_kernel_applies


def run_correctness(b: Bench, section: Section) -> None:
    """The padding-free encoder against padded execution and a float64 oracle, per dtype; then
    each varlen kernel alone."""
    _report_kernels(b, section)
    with guarded(b, section, "encoder checks"):
        _check_encoders(b, section)
    free_memory(b.device)
    with guarded(b, section, "kernel checks"):
        _check_kernels(b, section)


def _check_encoders(b: Bench, section: Section) -> None:
    s, dev = b.sizes.shape, b.device
    config = EncoderConfig(
        d_model=s.d_model, n_heads=s.n_heads, d_ff=s.d_ff, n_layers=s.n_layers, layer_norm_eps=1e-12
    )
    torch.manual_seed(0)
    ours = Encoder(config).eval()
    padded = Encoder(replace(config, padding_free=False)).eval()
    oracle = Encoder(replace(config, attention_backend="math")).eval()
    padded.load_state_dict(ours.state_dict())
    oracle.load_state_dict(ours.state_dict())
    ours.to(dev), padded.to(dev), oracle.to(dev, torch.float64)

    lengths = b.sizes.check_lengths
    T = max(lengths)
    real = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).to(dev)  # (B, T)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(lengths), T, s.d_model, generator=g).to(dev)  # (B, T, D)
    target = torch.randn(sum(lengths), s.d_model, generator=g).to(dev)  # (N, D)
    b.log(f"  padded batch {len(lengths)} x {T}, lengths {list(lengths)}")

    ref_out, ref_grad = forward_backward(oracle, x.double(), real, target.double())
    auto = pick_varlen_kernel(x, 0.0)
    for label, model in ((f"padding-free, kernel auto ({auto})", ours), ("padded", padded)):
        name = f"fp32 {label}"
        with guarded(b, section, name), exact_fp32(dev):
            out, grad = forward_backward(model, x, real, target)
            diff, grad_diff = max_abs(out[real], ref_out[real]), rel_max(grad, ref_grad)
            record(b, section, f"{name} vs float64: output", "max abs", diff, FP32_TOL)
            record(b, section, f"{name} vs float64: grad", "rel max", grad_diff, FP32_TOL)
            at_padding = out[~real].abs().max().item()
            record(b, section, f"{name}: output at padding", "max abs", at_padding, 0.0)
    _check_bf16(b, section, ours, padded, x, real, target, ref_out, ref_grad)


def _report_kernels(b: Bench, section: Section) -> None:
    """Which kernel ``varlen_attention``'s "auto" picks for each precision and mode."""
    s = b.sizes.shape
    # (N, H, K): the kernel depends on the device, the dtype and the head width K
    q = torch.empty(1, 1, s.d_model // s.n_heads, device=b.device)
    picks = {
        "fp32": pick_varlen_kernel(q, 0.0),
        "bf16 inference": pick_varlen_kernel(q.bfloat16(), 0.0),
        f"bf16 training (attention dropout {b.dropout:g})": pick_varlen_kernel(
            q.bfloat16(), b.dropout
        ),
    }
    section.info["varlen kernel picked by auto"] = picks
    b.log(f"  varlen_attention kernel picked by auto: {picks}")


def forward_backward(
    model: Encoder,
    x: torch.Tensor,
    real: torch.Tensor,
    target: torch.Tensor,
    autocast: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's output (B, T, D) and the gradient of its first qkv weight under the
    training loss, in eval mode (no dropout)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        out = model(x, real)
    wide = out if out.dtype == torch.float64 else out.float()
    loss_on_real(wide, real, target.to(wide.dtype)).backward()
    grad = model.blocks[0].attn.qkv.weight.grad
    if grad is None:
        raise RuntimeError("the training loss gave no gradient to blocks[0].attn.qkv.weight")
    model.zero_grad(set_to_none=True)
    return wide.detach(), grad.detach().clone()


def _check_bf16(
    b: Bench,
    section: Section,
    ours: Encoder,
    padded: Encoder,
    x: torch.Tensor,
    real: torch.Tensor,
    target: torch.Tensor,
    ref_out: torch.Tensor,
    ref_grad: torch.Tensor,
) -> None:
    """bf16 weights (as inference) and bf16 autocast over fp32 weights (as training)."""
    q = torch.empty(1, 1, ours.config.head_dim, device=b.device, dtype=torch.bfloat16)  # (N, H, K)
    auto = pick_varlen_kernel(q, 0.0)
    half_ours, half_padded = (copy.deepcopy(m).to(torch.bfloat16) for m in (ours, padded))
    cases: list[tuple[str, Encoder, torch.dtype | None, str | None]] = [
        (f"bf16 padding-free, kernel auto ({auto})", half_ours, None, None),
        ("bf16 padding-free, kernel repad", half_ours, None, "repad"),
        ("bf16 padded", half_padded, None, None),
        (f"autocast bf16 padding-free, kernel auto ({auto})", ours, torch.bfloat16, None),
        ("autocast bf16 padding-free, kernel repad", ours, torch.bfloat16, "repad"),
    ]
    for name, model, autocast, kernel in cases:
        with guarded(b, section, name):
            inputs = x if autocast is not None else x.bfloat16()
            if kernel is None:
                out, grad = forward_backward(model, inputs, real, target, autocast)
            else:
                with forced_varlen_kernel(kernel):
                    out, grad = forward_backward(model, inputs, real, target, autocast)
            diff, grad_diff = rel_rms(out[real], ref_out[real]), rel_rms(grad, ref_grad)
            record(b, section, f"{name} vs float64: output", "rel RMS", diff, BF16_TOL)
            record(b, section, f"{name} vs float64: grad", "rel RMS", grad_diff, BF16_TOL)


def _check_kernels(b: Bench, section: Section) -> None:
    """Each varlen kernel alone, forward and dq, against the math backend in float64."""
    s, dev = b.sizes.shape, b.device
    lengths = b.sizes.check_lengths
    T = max(lengths)
    real = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).to(dev)  # (B, T)
    packing = Packing.from_mask(real)
    g = torch.Generator().manual_seed(3)
    H, K = s.n_heads, s.d_model // s.n_heads
    qkv = [torch.randn(packing.num_tokens, H, K, generator=g).to(dev) for _ in range(3)]
    grad_out = torch.randn(packing.num_tokens, H, K, generator=g).to(dev)

    def run(dtype: torch.dtype, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = (t.to(dtype, copy=True).requires_grad_() for t in qkv)  # fresh leaves
        out = varlen_attention(q, k, v, packing, **kwargs)
        out.backward(grad_out.to(dtype))
        if q.grad is None:
            raise RuntimeError(f"varlen_attention {kwargs} gave q no gradient")
        return out.detach(), q.grad

    ref_out, ref_dq = run(torch.float64, backend="math")
    for kernel in ("loop", "repad", "varlen"):
        for dtype in (torch.float32, torch.bfloat16):
            name = f"varlen_attention kernel {kernel}, {str(dtype).removeprefix('torch.')}"
            probe = torch.empty(1, 1, K, device=dev, dtype=dtype)
            if kernel == "varlen" and not varlen_kernel_applies(probe):
                why = "needs CUDA" if not b.cuda else "needs half precision"
                skip(b, section, name, why)
                continue
            with guarded(b, section, name), exact_fp32(dev):
                out, dq = run(dtype, kernel=kernel)
                if dtype == torch.float32:
                    diff, grad_diff = max_abs(out, ref_out), rel_max(dq, ref_dq)
                    record(b, section, f"{name}: output", "max abs", diff, FP32_TOL)
                    record(b, section, f"{name}: dq", "rel max", grad_diff, FP32_TOL)
                else:
                    diff, grad_diff = rel_rms(out, ref_out), rel_rms(dq, ref_dq)
                    record(b, section, f"{name}: output", "rel RMS", diff, BF16_TOL)
                    record(b, section, f"{name}: dq", "rel RMS", grad_diff, BF16_TOL)


@contextmanager
def forced_varlen_kernel(kernel: str) -> Iterator[None]:
    """Make ``varlen_attention``'s "auto" run ``kernel`` inside a model, which has no switch.

    (``varlen_attention`` looks ``pick_varlen_kernel`` up in its own module, so it is patched
    there.)"""
    with mock.patch.object(varlen_module, "pick_varlen_kernel", lambda *args, **kwargs: kernel):
        yield
