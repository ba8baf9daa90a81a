"""encoderkit on one GPU: first whether its CUDA paths compute the right thing, then how fast.

    python -m benchmarks.gpu                        # every section; sized for 8 minutes on an H200
    python -m benchmarks.gpu --smoke                # every code path at tiny sizes, any device
    python -m benchmarks.gpu --sections correctness,attention --out DIR

Five sections run in order, each on its own: one that raises prints its traceback, is marked
"error" in the results, and the run goes on with the next; inside a section each check and each
timed case is guarded the same way. Results print as they come and, after every section, are
written to DIR/gpu.json and DIR/gpu.md (``--out``; default $OUT, else benchmarks/gpu-results).
The exit status is 0 when every section ran and the files were written, 1 otherwise, 2 when the
full run finds no GPU; a check that FAILED is reported in the output and the files, not in the
exit status. Sections not started within ``--budget`` seconds (420) are skipped. Parts that need
CUDA (the varlen kernel, allocator statistics) print "skipped: needs CUDA" elsewhere; the timm
rows are skipped without timm.

1. env: torch, transformers and timm versions, the GPU, and a bf16 matmul ceiling (8192^3, the
   best of 10 after warm-up). MFU is reported against both this ceiling and the 989 TFLOP/s of
   the H100/H200 SXM datasheet (perf-anchors section 0).
2. correctness: a BERT-base-shaped ``Encoder`` on a padded batch (lengths from 512 down to 1) run
   padding-free (the default) and with ``padding_free=False``, against a float64 copy on the math
   backend. fp32 (TF32 off): output on real tokens and a weight gradient within 1e-5 (the
   gradient relative to its largest entry). bf16 weights (as inference) and bf16 autocast with
   fp32 weights (as training): within 3e-2 relative RMS, with ``varlen_attention``'s kernel as
   "auto" picks it (``varlen_attn`` on CUDA in half precision) and forced to "repad". Then each
   varlen kernel alone against the math backend in float64.
3. compare: ``benchmarks.compare``'s two groups (encoderkit ``Encoder`` vs
   ``nn.TransformerEncoder``; ``TextEncoder`` vs HF ``BertModel`` sdpa and eager) at BERT-base,
   batch 32 x 512: "varlen" (lengths uniform in [64, 512] by a fixed seed, about 57% real, the
   padding mask passed) and "dense" (all real, no mask). Inference: models cast to bf16 (no
   autocast, under which torch's fast path turns itself off), eval, ``torch.inference_mode()``.
   Training step: forward under bf16 autocast with fp32 weights, the mean squared error of the
   real tokens' states to a fixed target, backward, fused AdamW step; dropout 0.1. Before timing,
   each peer's output on the real tokens (and for training a weight gradient, dropout off) is
   compared with encoderkit's as in compare.py, at the bf16 tolerance; a mismatch is flagged,
   not fatal. (encoderkit's padded-batch attention is ``varlen_attn`` in inference but "repad"
   in training with dropout, which ``varlen_attn`` lacks.) The issue's targets (training >= 1.3x
   HF sdpa, varlen inference >= 1.8x the best peer, dense inference >= 1.0x) are reported as met
   or missed.
4. vit: ``ImageClassifier(VisionConfig.vit_base(), num_classes=1000)`` vs timm's
   ``vit_base_patch16_224`` with timm's weights copied into ours (fp32 logits checked first),
   batch 64 at 224 x 224: bf16 inference, and a training step (bf16 autocast, cross-entropy on
   random labels, fused AdamW).
5. attention: T = 2,048 and 8,192, 12 heads x 64, bf16, forward and forward + backward of
   ``scaled_dot_product_attention`` (fused, no mask) at batch 1, ``varlen_attention`` on one
   sequence of T and on four summing to T (kernel "auto", and "repad"), and the math path at
   2,048 only, for contrast. Peak memory above the inputs (CUDA allocator statistics) must stay
   O(T): under 1/4 of one T x T x H bf16 tensor at the largest T, and growing with T at an
   exponent under 1.5 (1 is linear, 2 quadratic); checked from T = 1,024, below which O(T)
   buffers are as large as one T x T x H tensor. The packed paths must agree with the dense one.

Timing: the device is synchronised before and after every call; contenders run interleaved,
A B C, A B C, ... after warm-up rounds (the gate's run is one more); rows give the median and the
min-max. FLOPs count real tokens only (perf-anchors section 1, ``compare.forward_flops``), x3 for a
training step; attention rows use the kernel convention, forward 4 s^2 K H per sequence of s
tokens and forward + backward 3.5x that.

Shape legend: B batch, T tokens, N real (packed) tokens, D model width, H heads, K head width,
C channels or classes.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.compare import (
    OURS,
    SHAPES,
    TRAIN_FLOPS_FACTOR,
    Batch,
    Contender,
    Group,
    Shape,
    comma_list,
    encoder_group,
    forward_flops,
    loss_on_real,
    make_batches,
    make_target,
    positive_int,
    probability,
    text_group,
)
from encoderkit import Encoder, EncoderConfig, ImageClassifier, VisionConfig
from encoderkit import attention as attention_module
from encoderkit.attention import pick_varlen_kernel, scaled_dot_product_attention, varlen_attention
from encoderkit.files import atomic_write_text
from encoderkit.packing import Packing

SECTIONS = ("env", "correctness", "compare", "vit", "attention")
DATASHEET_PEAK = 989e12  # dense bf16 FLOP/s, H100 / H200 SXM (perf-anchors section 0)
FP32_TOL = 1e-5  # max abs diff on real tokens; gradients relative to their largest entry
BF16_TOL = 3e-2  # relative RMS diff, ||a - ref|| / ||ref||; bf16 BERT-base measures about 1e-2
MEMORY_FRACTION = 0.25  # extra attention memory at the largest T / one T x T x H bf16 tensor
MEMORY_EXPONENT = 1.5  # growth of that memory with T: 1 is O(T), 2 is O(T^2)
MEMORY_MIN_T = 1024  # below, a kernel's O(T) buffers are about as large as one T x T x H tensor
ATTENTION_BACKWARD = 2.5  # kernel convention: backward FLOPs = 2.5 x forward (recompute)
DROPOUT = 0.1
LR = 1e-5
RESULTS = "gpu"  # DIR/gpu.json and DIR/gpu.md


@dataclass(frozen=True)
class Sizes:
    """Everything the sections' sizes depend on: the real run's or the smoke run's."""

    name: str
    shape: Shape  # correctness and compare
    batch_size: int
    seq_len: int
    min_len: int
    check_lengths: tuple[int, ...]  # the correctness section's padded batch
    warmup: int  # rounds before the timed ones, after the gate's run
    repeats: Mapping[str, int]  # timed runs per row: "infer", "train", "attention"
    vision: VisionConfig
    num_classes: int
    vit_batch: int
    timm_overrides: Mapping[str, Any]  # timm.create_model arguments that match ``vision``
    attention_lengths: tuple[int, ...]
    math_max_len: int  # the math path only up to this T
    heads: int
    head_dim: int
    ceiling_n: int
    ceiling_repeats: int


# Repeats for the 8-minute budget on one H200, where a BERT-base 32 x 512 training step takes
# about 0.1-0.3 s and an inference 30-60 ms: the compare section's ~100 timed calls per case cost
# about a minute in all.
FULL = Sizes(
    name="full",
    shape=SHAPES["bert-base"],
    batch_size=32,
    seq_len=512,
    min_len=64,
    check_lengths=(512, 389, 256, 255, 128, 64, 17, 1),
    warmup=2,
    repeats={"infer": 20, "train": 10, "attention": 20},
    vision=VisionConfig.vit_base(),
    num_classes=1000,
    vit_batch=64,
    timm_overrides={},
    attention_lengths=(2048, 8192),
    math_max_len=2048,
    heads=12,
    head_dim=64,
    ceiling_n=8192,
    ceiling_repeats=10,
)
SMOKE = Sizes(
    name="smoke",
    shape=Shape(
        "tiny", n_layers=2, d_model=64, n_heads=4, d_ff=128, vocab_size=100, max_positions=32
    ),
    batch_size=4,
    seq_len=32,
    min_len=8,
    check_lengths=(32, 20, 9, 1),
    warmup=0,
    repeats={"infer": 1, "train": 1, "attention": 1},
    vision=VisionConfig(
        d_model=64,
        n_heads=4,
        d_ff=128,
        n_layers=2,
        dropout=0.0,
        attention_dropout=0.0,
        norm_first=True,
        layer_norm_eps=1e-6,
        image_size=32,
        patch_size=8,
    ),
    num_classes=10,
    vit_batch=4,
    timm_overrides={
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 4,
        "mlp_ratio": 2.0,
    },
    attention_lengths=(64, 128),
    math_max_len=64,
    heads=12,
    head_dim=64,
    ceiling_n=256,
    ceiling_repeats=3,
)


# Results


@dataclass
class Check:
    """One comparison against a tolerance; ``passed`` None means skipped."""

    name: str
    metric: str
    value: float | None
    tolerance: float | None
    passed: bool | None
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "ok", False: "FAILED", None: "skipped"}[self.passed]


@dataclass
class Row:
    """One contender's timings on one case."""

    case: str
    contender: str
    times_ms: list[float]
    items: int  # real tokens (or images) per call
    unit: str  # "tok" or "img"
    flops: float  # per call, real tokens only
    ceiling: float  # measured matmul FLOP/s
    peak: float | None  # datasheet FLOP/s, where the GPU has one here
    out_diff: float | None = None  # None on the reference row
    grad_diff: float | None = None
    speedup: float = math.nan  # ours: best peer / ours; a peer: this peer / ours. > 1: we win
    memory_bytes: int | None = None  # attention: peak allocated above the inputs
    memory_ratio: float | None = None  # that, over one T x T x H bf16 tensor

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def per_s(self) -> float:
        return self.items / (self.median_ms / 1e3)

    @property
    def tflops(self) -> float:
        return self.flops / (self.median_ms / 1e3) / 1e12

    @property
    def mfu(self) -> float:
        return self.tflops * 1e12 / self.ceiling

    @property
    def mfu_peak(self) -> float | None:
        return None if self.peak is None else self.tflops * 1e12 / self.peak

    def as_dict(self) -> dict[str, Any]:
        derived = {k: getattr(self, k) for k in ("median_ms", "per_s", "tflops", "mfu", "mfu_peak")}
        return asdict(self) | derived


@dataclass
class Section:
    name: str
    status: str = "not run"  # "ok", "error", "skipped"
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": self.seconds,
            "info": self.info,
            "checks": [asdict(c) | {"verdict": c.verdict} for c in self.checks],
            "rows": [r.as_dict() for r in self.rows],
            "notes": self.notes,
            "errors": self.errors,
        }


@dataclass
class Bench:
    """What every section needs: sizes, device, the log, the matmul ceiling (measured once)."""

    sizes: Sizes
    device: torch.device
    dropout: float
    start: float = field(default_factory=time.perf_counter)
    ceiling_flops: float | None = None  # measured on first use

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def log(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f} s] {text}", flush=True)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @property
    def peak(self) -> float | None:
        """The datasheet's dense bf16 FLOP/s where this GPU is an H100 / H200 SXM."""
        if not self.cuda:
            return None
        name = torch.cuda.get_device_name(self.device)
        sxm = ("H100" in name or "H200" in name) and not ("PCIe" in name or "NVL" in name)
        return DATASHEET_PEAK if sxm else None

    def ceiling(self) -> float:
        if self.ceiling_flops is None:
            self.ceiling_flops = matmul_ceiling(
                self.device, self.sizes.ceiling_n, self.sizes.ceiling_repeats, self.sync
            )
        return self.ceiling_flops


def record(
    b: Bench,
    section: Section,
    name: str,
    metric: str,
    value: float,
    tolerance: float,
    note: str = "",
) -> Check:
    """Append and print one check: passed when value <= tolerance (NaN fails)."""
    check = Check(name, metric, value, tolerance, bool(value <= tolerance), note)
    section.checks.append(check)
    extra = f" ({note})" if note else ""
    b.log(f"  {check.verdict:>7}  {name}: {metric} {value:.2e} (tol {tolerance:.0e}){extra}")
    return check


def skip(b: Bench, section: Section, name: str, why: str) -> None:
    """Record and print a check that cannot run here, and why."""
    section.checks.append(Check(name, "", None, None, None, why))
    b.log(f"  {'-':>7}  {name}: skipped: {why}")


@contextmanager
def guarded(b: Bench, section: Section, what: str) -> Iterator[None]:
    """Run one part of a section; if it raises, record a FAILED check and go on."""
    try:
        yield
    except Exception as e:  # a benchmark reports every failure and carries on
        message = f"{what}: {type(e).__name__}: {e}"
        section.errors.append(message)
        section.checks.append(Check(what, "raised", None, None, False, f"{type(e).__name__}: {e}"))
        b.log(f"   FAILED  {message}")
        print(traceback.format_exc(), flush=True)


# Measuring


def time_calls(
    calls: Mapping[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    sync: Callable[[], None],
) -> dict[str, list[float]]:
    """Seconds per call of each entry, interleaved A B C, A B C, ... after ``warmup`` rounds;
    the device is synchronised before and after each call."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    sync()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def matmul_ceiling(device: torch.device, n: int, repeats: int, sync: Callable[[], None]) -> float:
    """FLOP/s of a bf16 (n, n) @ (n, n) matmul: the best of ``repeats`` after warm-up. The best,
    not the median: it is what the chip reaches, which no model's median may exceed."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, torch.bfloat16)
    b = torch.randn(n, n, generator=g).to(device, torch.bfloat16)
    times = time_calls({"matmul": lambda: a @ b}, warmup=3, repeats=repeats, sync=sync)["matmul"]
    return 2 * n**3 / min(times)


def peak_extra_bytes(device: torch.device, call: Callable[[], object]) -> int:
    """Peak CUDA memory allocated during ``call`` above what was allocated before it."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def rel_rms(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref||, in float64: the bf16 comparisons' measure."""
    a, ref = a.detach().double(), ref.detach().double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def max_abs(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.detach().double() - ref.detach().double()).abs().max().item()


def rel_max(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| relative to max |ref|: the fp32 gradient comparisons' measure."""
    return max_abs(a, ref) / ref.detach().abs().max().double().clamp_min(1e-30).item()


@contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32, so fp32 means fp32 in the checks.

    (Through the settings torch has had longest; mixing them with the newer ``fp32_precision``
    ones is an error in recent torch, and nothing here uses those.)"""
    if device.type != "cuda":
        yield
        return
    matmul, conv = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = conv


@contextmanager
def forced_varlen_kernel(kernel: str) -> Iterator[None]:
    """Make ``varlen_attention``'s "auto" run ``kernel`` inside a model, which has no switch."""
    with mock.patch.object(attention_module, "pick_varlen_kernel", lambda q, dropout_p: kernel):
        yield


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _to_device(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Floating inputs take ``dtype``; token ids keep theirs."""
    return x.to(device, dtype) if x.is_floating_point() else x.to(device)


# 1. Environment


def run_env(b: Bench, section: Section) -> None:
    info = environment(b.device)
    section.info.update(info)
    for key, value in info.items():
        b.log(f"  {key}: {value}")
    ceiling = b.ceiling()
    n = b.sizes.ceiling_n
    section.info["bf16 matmul ceiling TFLOP/s"] = ceiling / 1e12
    section.info["ceiling"] = f"bf16 {n}^3, best of {b.sizes.ceiling_repeats}"
    peak = f"{ceiling / b.peak:.0%} of the datasheet's 989" if b.peak else "no datasheet peak here"
    b.log(f"  bf16 matmul ceiling ({n}^3): {ceiling / 1e12:.1f} TFLOP/s ({peak})")


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "varlen_attn available": attention_module.varlen_attn is not None,
    }
    for name in ("transformers", "timm"):
        if importlib.util.find_spec(name) is None:
            info[name] = "not installed"
        else:
            info[name] = getattr(__import__(name), "__version__", "unknown")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
            "memory GiB": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "sdpa backends enabled": {
                "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                "flash": torch.backends.cuda.flash_sdp_enabled(),
                "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "math": torch.backends.cuda.math_sdp_enabled(),
            },
        }
    else:
        info |= {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        }
    return info


# 2. Correctness


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
    q = torch.empty(1, 1, 1, device=b.device)  # (N, H, K); only device and dtype matter
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
    q = torch.empty(1, 1, 1, device=b.device, dtype=torch.bfloat16)
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
            probe = torch.empty(1, 1, 1, device=dev, dtype=dtype)
            if kernel == "varlen" and not attention_module.varlen_kernel_applies(probe, 0.0):
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


# 3. The comparison


def run_compare(b: Bench, section: Section) -> None:
    """compare.py's groups on the device: bf16 inference, then bf16-autocast training."""
    sz = b.sizes
    batches = make_batches(sz.batch_size, sz.seq_len, sz.min_len, seed=0)
    for batch in batches:
        share = batch.tokens / (len(batch.lengths) * batch.seq_len)
        section.info[f"{batch.kind} real share"] = round(share, 4)
        b.log(f"  {batch.kind} batch {len(batch.lengths)} x {batch.seq_len}: {share:.1%} real")
    q = torch.empty(1, 1, 1, device=b.device, dtype=torch.bfloat16)  # (N, H, K)
    kernels = f"inference {pick_varlen_kernel(q, 0.0)}, training {pick_varlen_kernel(q, b.dropout)}"
    section.notes.append(f"encoderkit's attention on the varlen batch: {kernels}")
    b.log(f"  encoderkit's varlen_attention kernel: {kernels}")
    groups = build_groups(b, section)
    states = [[_state_copy(c.model) for c in g.contenders] for g in groups]
    for mode in ("infer", "train"):
        for batch in batches:
            for group, fresh in zip(groups, states, strict=True):
                case = f"{sz.shape.name} {batch.kind} {mode}, {group.level}"
                b.log(case)
                with guarded(b, section, case):
                    rows = time_group(b, section, case, group, fresh, batch, mode)
                    section.rows += rows
                    log_rows(b, rows)
                free_memory(b.device)
    section.info["targets"] = targets(section.rows, sz.shape.name)
    for t in section.info["targets"]:
        b.log(f"  target {t['what']}: {t['value']:.2f}x (>= {t['target']:g}x) {t['verdict']}")
    del groups, states
    free_memory(b.device)


def build_groups(b: Bench, section: Section) -> list[Group]:
    """compare.py's encoder and text-model groups, each built on its own, on the CPU in fp32."""
    groups = []
    with guarded(b, section, "build the encoder group"):
        groups.append(encoder_group(b.sizes.shape, dropout=b.dropout))
    with guarded(b, section, "build the text-model group"), tempfile.TemporaryDirectory() as tmp:
        groups.append(text_group(b.sizes.shape, Path(tmp), dropout=b.dropout))
    return groups


def time_group(
    b: Bench,
    section: Section,
    case: str,
    group: Group,
    fresh: Sequence[Mapping[str, torch.Tensor]],
    batch: Batch,
    mode: str,
) -> list[Row]:
    """Give every contender the same starting weights, gate, then time one case.

    A contender whose gated run raises is reported and left out; the others are still timed.
    """
    dtype = torch.bfloat16 if mode == "infer" else torch.float32
    for c, state in zip(group.contenders, fresh, strict=True):
        c.model.to(b.device, torch.float32).load_state_dict(state)
        c.model.to(dtype)
    inputs = _to_device(group.make_inputs(batch), b.device, dtype)
    mask = None if batch.mask is None else batch.mask.to(b.device)
    real = batch.real.to(b.device)
    contenders = {c.name: c for c in group.contenders}
    calls: dict[str, Callable[[], None]] = {}
    if mode == "infer":
        outs = each(b, section, case, contenders, lambda _, c: infer_once(c, inputs, mask, real))
        grads: dict[str, torch.Tensor] = {}
        for name in outs:
            calls[name] = _inference_call(contenders[name].forward, inputs, mask)
    else:
        target = make_target(batch, b.sizes.shape.d_model).to(b.device)
        optimizers = {c.name: _adamw(c.model) for c in group.contenders}

        def once(name: str, c: Contender) -> tuple[torch.Tensor, torch.Tensor]:
            return train_once(c, inputs, mask, real, target, optimizers[name])

        results = each(b, section, case, contenders, once)
        outs = {name: out for name, (out, _) in results.items()}
        grads = {name: grad for name, (_, grad) in results.items()}
        for name in results:
            c = contenders[name]
            c.model.train()
            calls[name] = _training_call(c.forward, inputs, mask, real, target, optimizers[name])
    out_diffs, grad_diffs = diffs_to_ours(outs), diffs_to_ours(grads)
    for name, diff in out_diffs.items():
        record(b, section, f"{case}: {name} output vs {OURS}", "rel RMS", diff, BF16_TOL)
    for name, diff in grad_diffs.items():
        record(b, section, f"{case}: {name} grad vs {OURS}", "rel RMS", diff, BF16_TOL)
    times = time_calls(
        runnable(b, section, case, calls), b.sizes.warmup, b.sizes.repeats[mode], b.sync
    )
    s = b.sizes.shape
    flops = forward_flops(s.n_layers, s.d_model, s.d_ff, batch.lengths)
    flops *= TRAIN_FLOPS_FACTOR if mode == "train" else 1
    rows = [
        Row(case, name, [t * 1e3 for t in ts], batch.tokens, "tok", flops, b.ceiling(), b.peak)
        for name, ts in times.items()
    ]
    for r in rows:
        r.out_diff, r.grad_diff = out_diffs.get(r.contender), grad_diffs.get(r.contender)
    return with_speedups(rows)


Forward = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
Item = TypeVar("Item")
Result = TypeVar("Result")


def each(
    b: Bench,
    section: Section,
    case: str,
    contenders: Mapping[str, Item],
    run: Callable[[str, Item], Result],
) -> dict[str, Result]:
    """``run`` on each contender in turn, guarded: a failure is recorded and that one left out."""
    results = {}
    for name, contender in contenders.items():
        with guarded(b, section, f"{case}: {name}"):
            results[name] = run(name, contender)
    return results


def runnable(
    b: Bench, section: Section, case: str, calls: Mapping[str, Callable[[], None]]
) -> dict[str, Callable[[], None]]:
    """Each call once, guarded, in the mode it is timed in (so also the first warm-up round):
    one that raises is reported and left out of the timing."""
    ran = each(b, section, f"{case}, timed call", calls, lambda _, call: call())
    return {name: call for name, call in calls.items() if name in ran}


def diffs_to_ours(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Each peer's relative RMS difference from encoderkit's tensor, when encoderkit's ran."""
    if OURS not in values:
        return {}
    return {name: rel_rms(v, values[OURS]) for name, v in values.items() if name != OURS}


def infer_once(
    c: Contender, inputs: torch.Tensor, mask: torch.Tensor | None, real: torch.Tensor
) -> torch.Tensor:
    """The output on the real tokens, (N, D), run exactly as timed."""
    c.model.eval()
    with torch.inference_mode():
        return c.forward(inputs, mask)[real]  # (B, T, D)[(B, T)] -> (N, D)


def train_once(
    c: Contender,
    inputs: torch.Tensor,
    mask: torch.Tensor | None,
    real: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training step's function with dropout off (eval mode, bf16 autocast): the output on
    the real tokens and the probe weight's gradient. The optimizer then steps on the checked
    gradient, so the check also warms it up."""
    c.model.eval()
    c.model.zero_grad(set_to_none=True)
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
        out = c.forward(inputs, mask)
    loss_on_real(out.float(), real, target).backward()
    if c.probe.grad is None:
        raise RuntimeError(f"{c.name}: the training loss gave no gradient to the probe weight")
    grad = c.probe.grad.detach().clone()
    optimizer.step()
    c.model.zero_grad(set_to_none=True)
    return out.detach()[real], grad


def _inference_call(
    forward: Forward, inputs: torch.Tensor, mask: torch.Tensor | None
) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            forward(inputs, mask)

    return run


def _training_call(
    forward: Forward,
    inputs: torch.Tensor,
    mask: torch.Tensor | None,
    real: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> Callable[[], None]:
    """Forward under bf16 autocast, loss on the real tokens, backward, optimizer step."""

    def step() -> None:
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
            out = forward(inputs, mask)
        loss_on_real(out.float(), real, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, fused=True)


def with_speedups(rows: list[Row]) -> list[Row]:
    """Fill ``speedup`` where encoderkit's row (the first) is there: on it the best peer's median
    over ours, on a peer's its median over ours."""
    if not rows or rows[0].contender != OURS:
        return rows
    ours, peers = rows[0], rows[1:]
    if peers:
        ours.speedup = min(r.median_ms for r in peers) / ours.median_ms
    for r in peers:
        r.speedup = r.median_ms / ours.median_ms
    return rows


def targets(rows: Sequence[Row], shape: str) -> list[dict[str, Any]]:
    """The issue's speed targets, where the rows to judge them are there."""
    by_key = {(r.case, r.contender): r for r in rows}
    found = []

    def add(what: str, value: float, target: float) -> None:
        verdict = "met" if value >= target else "missed"
        found.append({"what": what, "value": value, "target": target, "verdict": verdict})

    for batch in ("varlen", "dense"):
        case = f"{shape} {batch} train, text model"
        ours, sdpa = by_key.get((case, OURS)), by_key.get((case, "HF BertModel sdpa"))
        if ours and sdpa:
            add(f"{case}: vs HF sdpa", sdpa.median_ms / ours.median_ms, 1.3)
    for batch, target in (("varlen", 1.8), ("dense", 1.0)):
        for level in ("text model", "encoder"):
            ours = by_key.get((f"{shape} {batch} infer, {level}", OURS))
            if ours and math.isfinite(ours.speedup):
                add(f"{shape} {batch} infer, {level}: vs best peer", ours.speedup, target)
    return found


# 4. ViT


TIMM_TOP = {
    "encoder.embeddings.cls_token": "cls_token",
    "encoder.embeddings.pos_embed": "pos_embed",
    "encoder.embeddings.proj.weight": "patch_embed.proj.weight",
    "encoder.embeddings.proj.bias": "patch_embed.proj.bias",
    "encoder.encoder.norm.weight": "norm.weight",
    "encoder.encoder.norm.bias": "norm.bias",
    "head.fc.weight": "head.weight",
    "head.fc.bias": "head.bias",
}
TIMM_LAYER = {  # ours under encoder.encoder.blocks.{i}. <- timm's under blocks.{i}.
    "norm1": "norm1",
    "attn.qkv": "attn.qkv",  # both pack [W_q; W_k; W_v], heads contiguous within each
    "attn.proj": "attn.proj",
    "norm2": "norm2",
    "ff.fc1": "mlp.fc1",
    "ff.fc2": "mlp.fc2",
}
PROBES = {OURS: "encoder.encoder.blocks.0.attn.qkv.weight", "timm": "blocks.0.attn.qkv.weight"}


def timm_to_ours(state: Mapping[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """timm VisionTransformer's state dict under ``ImageClassifier``'s names; ValueError naming
    the keys when timm's model has others than these."""
    names = dict(TIMM_TOP)
    for i in range(n_layers):
        for ours, theirs in TIMM_LAYER.items():
            for p in ("weight", "bias"):
                names[f"encoder.encoder.blocks.{i}.{ours}.{p}"] = f"blocks.{i}.{theirs}.{p}"
    missing = sorted(set(names.values()) - set(state))
    unused = sorted(set(state) - set(names.values()))
    if missing or unused:
        raise ValueError(f"timm's keys do not map: missing {missing[:6]}, unused {unused[:6]}")
    return {ours: state[theirs] for ours, theirs in names.items()}


def vit_forward_flops(config: VisionConfig, num_classes: int) -> int:
    """Forward FLOPs per image: the encoder on 1 + N tokens, the patch projection and the head."""
    n = config.num_patches
    encoder = forward_flops(config.n_layers, config.d_model, config.d_ff, [1 + n])
    patches = 2 * n * config.num_channels * config.patch_size**2 * config.d_model
    return encoder + patches + 2 * config.d_model * num_classes


def run_vit(b: Bench, section: Section) -> None:
    """encoderkit's ImageClassifier vs timm's ViT-B/16 on timm's weights: inference, training."""
    sz, dev = b.sizes, b.device
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {OURS: ImageClassifier(sz.vision, num_classes=sz.num_classes)}
    mapped = _add_timm(b, section, models)
    states = {name: _state_copy(m) for name, m in models.items()}
    if mapped:
        with guarded(b, section, "ViT fp32 logits vs timm"):
            _check_vit_logits(b, section, models, states)
    g = torch.Generator().manual_seed(1)
    vc = sz.vision
    pixels = torch.randn(sz.vit_batch, vc.num_channels, vc.image_size, vc.image_size, generator=g)
    labels = torch.randint(0, sz.num_classes, (sz.vit_batch,), generator=g).to(dev)
    for mode in ("infer", "train"):
        case = f"ViT {vc.image_size}/{vc.patch_size} batch {sz.vit_batch} {mode}"
        b.log(case)
        with guarded(b, section, case):
            train = mode == "train"
            rows = time_vit(b, section, case, train, models, states, pixels.to(dev), labels, mapped)
            section.rows += rows
            log_rows(b, rows)
        free_memory(dev)
    del models, states
    free_memory(dev)


def _add_timm(b: Bench, section: Section, models: dict[str, nn.Module]) -> bool:
    """Build timm's model beside ours and copy its weights into ours; True when they fit."""
    if importlib.util.find_spec("timm") is None:
        section.notes.append("timm is not installed: its rows were skipped")
        skip(b, section, "timm rows", "timm is not installed")
        return False
    with guarded(b, section, "build timm vit_base_patch16_224"):
        import timm

        models["timm"] = timm.create_model(
            "vit_base_patch16_224",
            pretrained=False,
            num_classes=b.sizes.num_classes,
            **b.sizes.timm_overrides,
        )
    if "timm" not in models:
        return False
    try:
        state = timm_to_ours(models["timm"].state_dict(), b.sizes.vision.n_layers)
        models[OURS].load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as e:
        note = f"timm's weights do not fit ours ({e}); timed on the same shapes, own weights"
        section.notes.append(note)
        b.log(f"  {note}")
        return False
    section.notes.append("timm's weights copied into encoderkit's ImageClassifier")
    b.log("  timm's weights copied into ours")
    return True


def _check_vit_logits(
    b: Bench,
    section: Section,
    models: Mapping[str, nn.Module],
    states: Mapping[str, Mapping[str, torch.Tensor]],
) -> None:
    vc, dev = b.sizes.vision, b.device
    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(
        min(8, b.sizes.vit_batch), vc.num_channels, vc.image_size, vc.image_size, generator=g
    )
    logits = {}
    with exact_fp32(dev), torch.inference_mode():
        for name, m in models.items():
            m.to(dev, torch.float32).load_state_dict(states[name])
            logits[name] = m.eval()(pixels.to(dev))
    diff = max_abs(logits["timm"], logits[OURS])
    record(b, section, "ViT fp32 logits, timm vs ours", "max abs", diff, FP32_TOL)


def time_vit(
    b: Bench,
    section: Section,
    case: str,
    train: bool,
    models: Mapping[str, nn.Module],
    states: Mapping[str, Mapping[str, torch.Tensor]],
    pixels: torch.Tensor,
    labels: torch.Tensor,
    gate: bool,
) -> list[Row]:
    """bf16 inference or a bf16-autocast training step of each model on the same images; with
    ``gate`` (same weights), timm's logits and gradient are compared with ours first."""
    dtype = torch.float32 if train else torch.bfloat16
    for name, m in models.items():
        m.to(b.device, torch.float32).load_state_dict(states[name])
        m.to(dtype).eval()
    x = pixels.to(dtype)
    calls: dict[str, Callable[[], None]] = {}
    if not train:
        logits = each(b, section, case, models, lambda _, m: _vit_infer_once(m, x))
        grads: dict[str, torch.Tensor] = {}
        for name in logits:
            calls[name] = _vit_inference_call(models[name], x)
    else:
        optimizers = {name: _adamw(m) for name, m in models.items()}

        def once(name: str, m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            return _vit_train_once(name, m, x, labels, optimizers[name])

        results = each(b, section, case, models, once)
        logits = {name: out for name, (out, _) in results.items()}
        grads = {name: grad for name, (_, grad) in results.items()}
        for name in results:
            models[name].train()
            calls[name] = _vit_training_call(models[name], x, labels, optimizers[name])
    out_diffs = diffs_to_ours(logits) if gate else {}
    grad_diffs = diffs_to_ours(grads) if gate else {}
    for name, diff in out_diffs.items():
        record(b, section, f"{case}: {name} logits vs {OURS}", "rel RMS", diff, BF16_TOL)
    for name, diff in grad_diffs.items():
        record(b, section, f"{case}: {name} grad vs {OURS}", "rel RMS", diff, BF16_TOL)
    repeats = b.sizes.repeats["train" if train else "infer"]
    times = time_calls(runnable(b, section, case, calls), b.sizes.warmup, repeats, b.sync)
    flops = vit_forward_flops(b.sizes.vision, b.sizes.num_classes) * len(x)
    flops *= TRAIN_FLOPS_FACTOR if train else 1
    rows = [
        Row(case, name, [t * 1e3 for t in ts], len(x), "img", flops, b.ceiling(), b.peak)
        for name, ts in times.items()
    ]
    for r in rows:
        r.out_diff, r.grad_diff = out_diffs.get(r.contender), grad_diffs.get(r.contender)
    return with_speedups(rows)


def _vit_infer_once(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def _vit_train_once(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the first qkv weight's gradient under the training loss (eval mode, bf16
    autocast); the optimizer then steps, warming itself up."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        logits = model(x)
    F.cross_entropy(logits.float(), labels).backward()
    probe = model.get_parameter(PROBES[name])
    if probe.grad is None:
        raise RuntimeError(f"{name}: the loss gave no gradient to {PROBES[name]}")
    grad = probe.grad.detach().clone()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return logits.detach(), grad


def _vit_inference_call(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def _vit_training_call(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            logits = model(x)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# 5. Attention at long T


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AttentionCase:
    name: str  # the same at every T, so memory can be followed across T
    fn: AttentionFn
    inputs: tuple[torch.Tensor, ...]  # q, k, v: leaves that require grad
    lengths: tuple[int, ...]
    memory_checked: bool = True  # the math path is O(T^2) by design: reported, not checked


def run_attention(b: Bench, section: Section) -> None:
    """Each attention path at each T: forward and forward + backward, time and peak memory."""
    memory: dict[tuple[str, str], dict[int, int]] = {}  # (case, mode) -> {T: extra bytes}
    for T in b.sizes.attention_lengths:
        b.log(f"attention T = {T}, {b.sizes.heads} heads x {b.sizes.head_dim}, bf16")
        with guarded(b, section, f"attention T={T}"):
            cases = attention_cases(b, T)
            with guarded(b, section, f"attention T={T}: agreement"):
                _check_attention_agreement(b, section, cases, T)
            checked = {c.name for c in cases if c.memory_checked}
            for mode in ("fwd", "fwd+bwd"):
                rows = time_attention(b, section, cases, T, mode)
                section.rows += rows
                log_rows(b, rows)
                for row in rows:
                    if row.memory_bytes is not None and row.contender in checked:
                        memory.setdefault((row.contender, mode), {})[T] = row.memory_bytes
        free_memory(b.device)
    longest = max(b.sizes.attention_lengths)
    if not b.cuda:
        skip(b, section, "attention memory O(T)", "needs CUDA")
    elif longest < MEMORY_MIN_T:
        why = f"below T = {MEMORY_MIN_T} O(T) buffers are as large as T x T ones"
        skip(b, section, "attention memory O(T)", why)
    else:
        for (name, mode), by_length in sorted(memory.items()):
            _check_memory(b, section, f"{name}, {mode}", by_length, longest)


def attention_cases(b: Bench, T: int) -> list[AttentionCase]:
    """The paths at one T: batch 1 dense, and packed as one sequence and as four."""
    H, K, dev = b.sizes.heads, b.sizes.head_dim, b.device
    g = torch.Generator().manual_seed(T)
    dense = tuple(
        torch.randn(1, H, T, K, generator=g).to(dev, torch.bfloat16).requires_grad_()
        for _ in range(3)
    )  # 3 x (1, H, T, K)
    packed = tuple(
        t.detach()[0].transpose(0, 1).contiguous().requires_grad_() for t in dense
    )  # (1, H, T, K) -> (T, H, K): the same tokens, packed
    four = (3 * T // 8, T // 4, T // 4, T - 3 * T // 8 - 2 * (T // 4))
    one_pack, four_pack = _packing((T,), dev), _packing(four, dev)
    auto = pick_varlen_kernel(packed[0], 0.0)
    cases = [
        AttentionCase(
            "sdpa fused, 1 x T",
            lambda q, k, v: scaled_dot_product_attention(q, k, v, backend="fused"),
            dense,
            (T,),
        ),
        AttentionCase(
            f"varlen_attention {auto}, 1 seq",
            lambda q, k, v: varlen_attention(q, k, v, one_pack),
            packed,
            (T,),
        ),
        AttentionCase(
            f"varlen_attention {auto}, 4 seqs",
            lambda q, k, v: varlen_attention(q, k, v, four_pack),
            packed,
            four,
        ),
        AttentionCase(
            "varlen_attention repad, 4 seqs",
            lambda q, k, v: varlen_attention(q, k, v, four_pack, kernel="repad"),
            packed,
            four,
        ),
    ]
    if T <= b.sizes.math_max_len:
        cases.append(
            AttentionCase(
                "math, 1 x T",
                lambda q, k, v: scaled_dot_product_attention(q, k, v, backend="math"),
                dense,
                (T,),
                memory_checked=False,
            )
        )
    return cases


def _packing(lengths: Sequence[int], device: torch.device) -> Packing:
    real = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    return Packing.from_mask(real.to(device))


def _check_attention_agreement(
    b: Bench, section: Section, cases: Sequence[AttentionCase], T: int
) -> None:
    """The packed paths give what the dense one gives on the same tokens."""
    with torch.no_grad():
        outs = {c.name: c.fn(*c.inputs) for c in cases}
    dense = outs[cases[0].name][0].transpose(0, 1)  # (1, H, T, K) -> (T, H, K)
    one, four, repad = (outs[c.name] for c in cases[1:4])
    name = f"T={T}: {cases[1].name} vs sdpa fused"
    record(b, section, name, "rel RMS", rel_rms(one, dense), BF16_TOL)
    name = f"T={T}: {cases[2].name} vs repad"
    record(b, section, name, "rel RMS", rel_rms(four, repad), BF16_TOL)


def time_attention(
    b: Bench, section: Section, cases: Sequence[AttentionCase], T: int, mode: str
) -> list[Row]:
    """Time every case in turn; then, on CUDA, each one's peak memory above its inputs."""
    case = f"attention T={T} {mode}"
    calls = runnable(
        b, section, case, {c.name: _attention_call(c, mode == "fwd+bwd") for c in cases}
    )
    times = time_calls(calls, b.sizes.warmup, b.sizes.repeats["attention"], b.sync)
    scores_bytes = T * T * b.sizes.heads * 2  # one (T, T, H) bf16 tensor
    rows = []
    for c in (c for c in cases if c.name in calls):
        forward = 4 * b.sizes.head_dim * b.sizes.heads * sum(s * s for s in c.lengths)
        flops = forward * (1 + ATTENTION_BACKWARD) if mode == "fwd+bwd" else forward
        ms = [t * 1e3 for t in times[c.name]]
        row = Row(case, c.name, ms, T, "tok", flops, b.ceiling(), b.peak)
        if b.cuda:
            extra = peak_extra_bytes(b.device, calls[c.name])
            row.memory_bytes, row.memory_ratio = extra, extra / scores_bytes
        rows.append(row)
    return rows


def _attention_call(case: AttentionCase, backward: bool) -> Callable[[], None]:
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                case.fn(*case.inputs)

        return forward
    grad_out = torch.ones_like(case.inputs[0])  # the output has the queries' shape

    def forward_backward() -> None:
        case.fn(*case.inputs).backward(grad_out)
        for t in case.inputs:
            t.grad = None

    return forward_backward


def _check_memory(
    b: Bench, section: Section, name: str, by_length: Mapping[int, int], hi: int
) -> None:
    """O(T): a small share of one T x T x H tensor at the largest T, and near-linear growth."""
    if hi not in by_length:
        skip(b, section, f"{name}: memory", f"not measured at T={hi}")
        return
    lo = min(by_length)
    ratio = by_length[hi] / (hi * hi * b.sizes.heads * 2)
    metric = "/ one T x T x H bf16 tensor"
    record(b, section, f"{name}: extra memory at T={hi}", metric, ratio, MEMORY_FRACTION)
    if hi > lo and by_length[lo] > 0 and by_length[hi] > 0:
        exponent = math.log(by_length[hi] / by_length[lo]) / math.log(hi / lo)
        name = f"{name}: memory growth T={lo}..{hi}"
        record(b, section, name, "exponent", exponent, MEMORY_EXPONENT)


# Reporting


def log_rows(b: Bench, rows: Sequence[Row]) -> None:
    for r in rows:
        parts = [
            f"    {r.contender:<34} {_ms(r.median_ms):>7} ms",
            f"[{_ms(min(r.times_ms))}-{_ms(max(r.times_ms))} x{len(r.times_ms)}]",
            f"{r.per_s:>12,.0f} {r.unit}/s",
            _speedup(r).strip("*"),
            f"{r.tflops:.1f} TFLOP/s",
            f"MFU {r.mfu:.1%}" + ("" if r.mfu_peak is None else f" ({r.mfu_peak:.1%} of 989)"),
            "" if r.out_diff is None else f"diff {r.out_diff:.1e}",
            "" if r.grad_diff is None else f"grad diff {r.grad_diff:.1e}",
            "" if r.memory_bytes is None else f"memory +{_memory(r)}",
        ]
        b.log("  ".join(p for p in parts if p))


def markdown(b: Bench, sections: Sequence[Section]) -> str:
    lines = [
        "# encoderkit on one GPU (benchmarks/gpu.py)",
        "",
        f"Sizes: {b.sizes.name}; device {b.device}; training dropout {b.dropout:g}; "
        f"run took {time.perf_counter() - b.start:.0f} s. What is measured and how: the "
        "docstring of `benchmarks/gpu.py`. Speed-up > 1 means encoderkit is faster (on its own "
        "row: against the best peer). MFU: against the measured bf16 matmul ceiling, and the "
        "989 TFLOP/s datasheet peak where the GPU is an H100/H200 SXM.",
    ]
    for s in sections:
        lines += ["", f"## {s.name} ({s.status}, {s.seconds:.0f} s)"]
        items = [f"- error: {e}" for e in s.errors] + [f"- {n}" for n in s.notes]
        items += [f"- {k}: {v}" for k, v in s.info.items() if k != "targets"]
        lines += ["", *items] if items else []
        if s.info.get("targets"):
            lines += ["", "| target | value | wanted | verdict |", "|---|--:|--:|---|"]
            lines += [
                f"| {t['what']} | {t['value']:.2f}x | >= {t['target']:g}x | {t['verdict']} |"
                for t in s.info["targets"]
            ]
        if s.checks:
            lines += [
                "",
                "| check | metric | value | tolerance | result |",
                "|---|---|--:|--:|---|",
            ]
            for c in s.checks:
                verdict = "**FAILED**" if c.passed is False else c.verdict
                result = f"{verdict}: {c.note}" if c.note else verdict
                lines.append(
                    f"| {c.name} | {c.metric} | {_num(c.value)} | {_num(c.tolerance)} | {result} |"
                )
        if s.rows:
            lines += ["", _rows_table(s.rows)]
    return "\n".join(lines) + "\n"


def _rows_table(rows: Sequence[Row]) -> str:
    lines = [
        "| case | contender | median ms | min-max ms (runs) | throughput | speed-up | TFLOP/s "
        "| MFU (ceiling) | MFU (989) | out diff | grad diff | extra memory |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        cells = [
            r.case,
            r.contender,
            _ms(r.median_ms),
            f"{_ms(min(r.times_ms))}-{_ms(max(r.times_ms))} ({len(r.times_ms)})",
            f"{r.per_s:,.0f} {r.unit}/s",
            _speedup(r),
            f"{r.tflops:.1f}",
            f"{r.mfu:.1%}",
            "" if r.mfu_peak is None else f"{r.mfu_peak:.1%}",
            _num(r.out_diff),
            _num(r.grad_diff),
            _memory(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _memory(row: Row) -> str:
    if row.memory_bytes is None:
        return ""
    return f"{row.memory_bytes / 2**20:.1f} MiB ({row.memory_ratio:.3f} of T x T x H)"


def _speedup(row: Row) -> str:
    if not math.isfinite(row.speedup):
        return ""
    return f"**{row.speedup:.2f}x**" if row.contender == OURS else f"{row.speedup:.2f}x"


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2e}"


def results(b: Bench, sections: Sequence[Section]) -> dict[str, Any]:
    return {
        "script": "benchmarks/gpu.py",
        "sizes": asdict(b.sizes),
        "device": str(b.device),
        "dropout": b.dropout,
        "seconds": time.perf_counter() - b.start,
        "ceiling_flops_per_s": b.ceiling_flops,
        "datasheet_peak_flops_per_s": b.peak,
        "sections": [s.as_dict() for s in sections],
    }


def write_results(out: Path, b: Bench, sections: Sequence[Section]) -> bool:
    """Write both files; False, after saying why, when they could not be written."""
    try:
        text = json.dumps(results(b, sections), indent=2, default=str) + "\n"
        atomic_write_text(out / f"{RESULTS}.json", text)
        atomic_write_text(out / f"{RESULTS}.md", markdown(b, sections))
    except (OSError, TypeError, ValueError) as e:
        b.log(f"could not write the results to {out}: {type(e).__name__}: {e}")
        return False
    return True


# The run


RUNNERS: dict[str, Callable[[Bench, Section], None]] = {
    "env": run_env,
    "correctness": run_correctness,
    "compare": run_compare,
    "vit": run_vit,
    "attention": run_attention,
}


def run_section(b: Bench, section: Section, budget_s: float) -> None:
    """Run one section; an exception marks it "error", prints its traceback, and returns."""
    if time.perf_counter() - b.start > budget_s:
        section.status = "skipped"
        section.errors.append(f"skipped: the time budget of {budget_s:.0f} s is spent")
        b.log(f"== {section.name}: skipped, the time budget of {budget_s:.0f} s is spent")
        return
    b.log(f"== {section.name}")
    start = time.perf_counter()
    try:
        RUNNERS[section.name](b, section)
        section.status = "ok"
    except Exception as e:  # one section's failure must not stop the others
        section.status = "error"
        section.errors.append(f"{type(e).__name__}: {e}")
        b.log(f"== {section.name}: ERROR {type(e).__name__}: {e}")
        print(traceback.format_exc(), flush=True)
    finally:
        section.seconds = time.perf_counter() - start
        free_memory(b.device)


def summary(sections: Sequence[Section], out: Path) -> str:
    checks = [c for s in sections for c in s.checks]
    failed = [c for c in checks if c.passed is False]
    lines = ["", "== summary"]
    lines += [
        f"  {s.name}: {s.status}, {s.seconds:.0f} s"
        + (f", {len(s.errors)} error(s)" if s.errors else "")
        for s in sections
    ]
    lines.append(
        f"  checks: {sum(c.passed is True for c in checks)} ok, {len(failed)} FAILED, "
        f"{sum(c.passed is None for c in checks)} skipped"
    )
    lines += [f"  FAILED {c.name}: {c.metric} {_num(c.value)} {c.note}".rstrip() for c in failed]
    for s in sections:
        for t in s.info.get("targets", []):
            lines.append(
                f"  target {t['what']}: {t['value']:.2f}x (>= {t['target']:g}x) {t['verdict']}"
            )
    lines.append(f"  results: {out / RESULTS}.json, {out / RESULTS}.md")
    return "\n".join(lines)


def _sections(text: str) -> list[str]:
    names = comma_list(SECTIONS)(text)
    return [n for n in SECTIONS if n in names]  # always in the documented order


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description="encoderkit on one GPU: correctness of the CUDA paths, then BERT-base "
        "against torch and Hugging Face, ViT-B/16 against timm, and attention at long T.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every section at tiny sizes, on CUDA if there is one, else on the CPU (seconds)",
    )
    parser.add_argument(
        "--sections",
        type=_sections,
        default=list(SECTIONS),
        help=f"a comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or "benchmarks/gpu-results"),
        help=f"directory for {RESULTS}.json and {RESULTS}.md (default: $OUT, else "
        "benchmarks/gpu-results)",
    )
    parser.add_argument("--repeats", type=positive_int, help="timed runs per row, every section")
    parser.add_argument(
        "--dropout",
        type=probability,
        default=DROPOUT,
        help=f"dropout of the compared models, seen by the training rows (default {DROPOUT})",
    )
    parser.add_argument(
        "--budget",
        type=positive_int,
        default=420,
        help="seconds after which sections not yet started are skipped (default 420)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.repeats:
        sizes = replace(sizes, repeats=dict.fromkeys(sizes.repeats, args.repeats))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        print(
            "benchmarks.gpu: the full run needs a CUDA GPU; --smoke runs every code path at "
            "tiny sizes on the CPU",
            file=sys.stderr,
        )
        return 2
    # No hub: the models are built here or saved to a temporary directory and read back.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # torch's fast path announces its nested tensors on every padded call; we run it on purpose.
    warnings.filterwarnings(
        "ignore", message="The PyTorch API of nested tensors is in prototype stage"
    )
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    b = Bench(sizes, device, args.dropout)
    b.log(f"benchmarks.gpu: {sizes.name} sizes on {device}; sections {', '.join(args.sections)}")
    sections = [Section(name) for name in args.sections]
    written = True
    for section in sections:
        run_section(b, section, args.budget)
        written = write_results(args.out, b, sections)
    print(summary(sections, args.out), flush=True)
    ran = all(s.status == "ok" and not s.errors for s in sections)
    return 0 if ran and written else 1


if __name__ == "__main__":
    raise SystemExit(main())
