"""What the benchmarks' reports share: the machine they ran on, and times as the tables print
them."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from encoderkit.utils.files import atomic_write_text

# The CPU features that decide which kernels run: AVX-512 fp32 FMA, bf16 dot products on
# AVX512-BF16, int8 ones on VNNI, and AMX tiles (the fast bf16 / int8 matmul units).
NOTABLE_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def machine_info() -> dict[str, Any]:
    import transformers

    cpu: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpu.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = cpu.get("model name") or platform.processor() or "unknown CPU"
    flags = set(cpu.get("flags", "").split())
    if "cpu family" in cpu and "model" in cpu:
        name += f" (family {cpu['cpu family']}, model {cpu['model']})"
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "cpu_flags": [f for f in NOTABLE_FLAGS if f in flags],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": now(),
    }


def flags_note(flags: Sequence[str]) -> str:
    """The CPU flags a reader needs to judge bf16 and int8 figures, in words."""
    amx = "AMX" if "amx_bf16" in flags else "no AMX"
    bf16 = "AVX512-BF16" if "avx512_bf16" in flags else "no AVX512-BF16"
    return f"{' '.join(flags) or 'none of ' + ', '.join(NOTABLE_FLAGS)} ({bf16}, {amx})"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def ms(value: float) -> str:
    """Milliseconds to three significant digits, whole ones from 100 up."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def spread(times_ms: Sequence[float]) -> str:
    """The min-max cell: fastest and slowest run, and how many runs."""
    return f"{ms(min(times_ms))}-{ms(max(times_ms))} ({len(times_ms)})"


def table(columns: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table's lines; ``align`` has a letter a column: "l" left, "r" right (numbers)."""
    if len(align) != len(columns) or set(align) - {"l", "r"}:
        raise ValueError(f"expected one of l, r per column ({len(columns)}), got {align!r}")
    rule = "|" + "|".join("--:" if a == "r" else "---" for a in align) + "|"
    return [_line(columns), rule, *map(_line, rows)]


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def publish(
    text: str, payload: dict[str, Any], markdown: Path | None, json_path: Path | None
) -> None:
    """Print the markdown ``text``; write it and the JSON ``payload`` (atomically) where asked."""
    print("\n" + text)
    if markdown is not None:
        atomic_write_text(markdown, text)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
