"""What the benchmarks' reports share: the machine they ran on, and times as the tables print
them."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


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
    if "cpu family" in cpu and "model" in cpu:
        name += f" (family {cpu['cpu family']}, model {cpu['model']})"
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": now(),
    }


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
