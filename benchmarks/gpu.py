"""encoderkit on one GPU: first whether its CUDA paths compute the right thing, then how fast.

    python -m benchmarks.gpu                        # every section; about 8 minutes on an H200
    python -m benchmarks.gpu --smoke                # every code path at tiny sizes, any device
    python -m benchmarks.gpu --sections correctness,attention --out DIR
    python -m benchmarks.gpu --compile none         # no torch.compile rows: about 3 minutes less

Five sections run in order, each on its own: one that raises prints its traceback, is marked
"error" in the results, and the run goes on with the next; inside a section each check and each
timed case is guarded the same way. Results print as they come and, after every section, are
written to DIR/gpu.json and DIR/gpu.md (``--out``; default $OUT, else benchmarks/gpu-results).
The exit status is 0 when every section ran and the files were written, 1 otherwise, 2 when the
full run finds no GPU; a check that FAILED is reported in the output and the files, not in the
exit status. Sections not started within ``--budget`` seconds (480) are skipped. Parts that need
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
   "auto" picks it ("varlen", flash-attention on the packed tokens, on CUDA in half precision)
   and forced to "repad". Then each
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
   not fatal. (encoderkit's padded-batch attention is the "varlen" kernel, dropout included.)
   Whole-model ``torch.compile`` copies
   (``--compile``, inductor) race beside the eager ones: by default ("train") encoderkit's and
   ``nn.TransformerEncoder``'s in the encoder group's training cases; "all" adds HF sdpa's and
   every case. Their compile time (first calls, compiling included) and dynamo's graph breaks
   are reported apart from the timed runs. The issue's targets, judged on encoderkit's fastest
   row of the case, eager or compiled, are reported as met or missed: dense training at dropout
   0.1 >= 45% MFU (of the 989 TFLOP/s datasheet peak; of the measured ceiling on other GPUs) and
   >= 1.25x compiled ``nn.TransformerEncoder``; variable-length training at dropout 0.1 >= 35%
   MFU on real tokens; variable-length inference >= 2.0x the best peer, per group.
4. vit: ``ImageClassifier(VisionConfig.vit_base(), num_classes=1000)`` vs timm's
   ``vit_base_patch16_224`` with timm's weights copied into ours (fp32 logits checked first),
   batch 64 at 224 x 224: bf16 inference, and a training step (bf16 autocast, cross-entropy on
   random labels, fused AdamW); the target: training >= 1.2x timm.
5. attention: T = 2,048 and 8,192, 12 heads x 64, bf16, forward and forward + backward of
   ``scaled_dot_product_attention`` (fused, no mask) at batch 1, ``varlen_attention`` on one
   sequence of T and on four summing to T (kernel "auto", and "repad"), and the math path at
   2,048 only, for contrast. Peak memory above the inputs (CUDA allocator statistics) must stay
   O(T): under 1/4 of one T x T x H bf16 tensor at the largest T, and growing with T at an
   exponent under 1.5 (1 is linear, 2 quadratic); checked from T = 1,024, below which O(T)
   buffers are as large as one T x T x H tensor. The packed paths must agree with the dense one.

Timing: the device is synchronised before and after every call; contenders run interleaved,
A B C, A B C, ... after warm-up rounds (the gate's run is one more); rows give the median and the
min-max. FLOPs count real tokens only (perf-anchors section 1, ``measure.forward_flops``), x3 for a
training step; attention rows use the kernel convention, forward 4 s^2 K H per sequence of s
tokens and forward + backward 3.5x that.

Shape legend: B batch, T tokens, N real (packed) tokens, D model width, H heads, K head width,
C channels or classes.
"""

import argparse
import importlib.util
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.flags import comma_list, positive_int, probability
from benchmarks.gpu_attention import run_attention
from benchmarks.gpu_bench import COMPILE_CHOICES, FULL, SMOKE, Bench, Section, free_memory
from benchmarks.gpu_compare import run_compare
from benchmarks.gpu_correctness import run_correctness
from benchmarks.gpu_report import RESULTS, summary, write_results
from benchmarks.gpu_vit import run_vit
from benchmarks.peers import DROPOUT
from benchmarks.report import now
from encoderkit.layers.varlen import varlen_kernel_applies

SECTIONS = ("env", "correctness", "compare", "vit", "attention")


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
        "date": now(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        # BERT-base's bf16 heads of 64 on this device
        "varlen kernel applies": varlen_kernel_applies(
            torch.empty(1, 1, 64, device=device, dtype=torch.bfloat16)
        ),
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
        "--compile",
        choices=COMPILE_CHOICES,
        default="train",
        help="whole-model torch.compile rows: 'train' (default) for encoderkit and "
        "nn.TransformerEncoder in the encoder group's training cases, 'all' for every case with "
        "HF sdpa too, 'none' (inductor; the smoke run traces with the eager backend)",
    )
    parser.add_argument(
        "--budget",
        type=positive_int,
        default=480,
        help="seconds after which sections not yet started are skipped (default 480)",
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
    b = Bench(sizes, device, args.dropout, args.compile)
    b.log(
        f"benchmarks.gpu: {sizes.name} sizes on {device}; sections {', '.join(args.sections)}; "
        f"compiled rows: {args.compile} ({sizes.compile_backend})"
    )
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
