"""How ``benchmarks.gpu`` reports: each row's line as it is timed, the summary, and the results
files (DIR/gpu.json, DIR/gpu.md), rewritten after every section."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.gpu_bench import Bench, Row, Section
from benchmarks.measure import OURS
from benchmarks.report import ms, spread, table
from encoderkit.utils.files import atomic_write_text

RESULTS = "gpu"  # DIR/gpu.json and DIR/gpu.md


def target(what: str, value: float, wanted: float, unit: str = "x") -> dict[str, Any]:
    """One of the issue's speed targets: met when ``value`` >= ``wanted`` (NaN: missed).
    ``unit``: "x" for a speed ratio, "%" for an MFU fraction."""
    verdict = "met" if value >= wanted else "missed"
    return {"what": what, "value": value, "target": wanted, "unit": unit, "verdict": verdict}


def format_target(t: Mapping[str, Any]) -> tuple[str, str]:
    """A target's value and what is wanted, as the report prints them."""
    if t.get("unit") == "%":
        return f"{t['value']:.1%}", f">= {t['target']:.0%}"
    return f"{t['value']:.2f}x", f">= {t['target']:g}x"


def log_rows(b: Bench, rows: Sequence[Row]) -> None:
    for r in rows:
        parts = [
            f"    {r.contender:<34} {ms(r.median_ms):>7} ms",
            f"[{ms(min(r.times_ms))}-{ms(max(r.times_ms))} x{len(r.times_ms)}]",
            f"{r.per_s:>12,.0f} {r.unit}/s",
            _speedup(r).strip("*"),
            f"{r.tflops:.1f} TFLOP/s",
            f"MFU {r.mfu:.1%}" + ("" if r.mfu_peak is None else f" ({r.mfu_peak:.1%} of 989)"),
            "" if r.out_diff is None else f"diff {r.out_diff:.1e}",
            "" if r.grad_diff is None else f"grad diff {r.grad_diff:.1e}",
            "" if r.memory_bytes is None else f"memory +{_memory(r)}",
            "" if r.compile_s is None else f"compile {r.compile_s:.1f} s",
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
        "989 TFLOP/s datasheet peak where the GPU is an H100/H200 SXM. Compiled rows are "
        f"whole-model `torch.compile` ({b.sizes.compile_backend}; cases: {b.compile}); their "
        "compile s, the time of their first calls with compiling, is apart from the timed runs.",
    ]
    for s in sections:
        lines += ["", f"## {s.name} ({s.status}, {s.seconds:.0f} s)"]
        items = [f"- error: {e}" for e in s.errors] + [f"- {n}" for n in s.notes]
        items += [f"- {k}: {v}" for k, v in s.info.items() if k != "targets"]
        lines += ["", *items] if items else []
        if s.info.get("targets"):
            cells = [[t["what"], *format_target(t), t["verdict"]] for t in s.info["targets"]]
            lines += ["", *table(("target", "value", "wanted", "verdict"), "lrrl", cells)]
        if s.checks:
            cells = []
            for c in s.checks:
                verdict = "**FAILED**" if c.passed is False else c.verdict
                result = f"{verdict}: {c.note}" if c.note else verdict
                cells.append([c.name, c.metric, _num(c.value), _num(c.tolerance), result])
            columns = ("check", "metric", "value", "tolerance", "result")
            lines += ["", *table(columns, "llrrl", cells)]
        if s.rows:
            lines += ["", _rows_table(s.rows)]
    return "\n".join(lines) + "\n"


def _rows_table(rows: Sequence[Row]) -> str:
    columns = (
        "case | contender | median ms | min-max ms (runs) | throughput | speed-up | TFLOP/s "
        "| MFU (ceiling) | MFU (989) | out diff | grad diff | extra memory | compile s"
    ).split(" | ")
    cells = [
        [
            r.case,
            r.contender,
            ms(r.median_ms),
            spread(r.times_ms),
            f"{r.per_s:,.0f} {r.unit}/s",
            _speedup(r),
            f"{r.tflops:.1f}",
            f"{r.mfu:.1%}",
            "" if r.mfu_peak is None else f"{r.mfu_peak:.1%}",
            _num(r.out_diff),
            _num(r.grad_diff),
            _memory(r),
            "" if r.compile_s is None else f"{r.compile_s:.1f}",
        ]
        for r in rows
    ]
    return "\n".join(table(columns, "llrrrrrrrrrrr", cells))


def _memory(row: Row) -> str:
    if row.memory_bytes is None:
        return ""
    return f"{row.memory_bytes / 2**20:.1f} MiB ({row.memory_ratio:.3f} of T x T x H)"


def _speedup(row: Row) -> str:
    if not math.isfinite(row.speedup):
        return ""
    return f"**{row.speedup:.2f}x**" if row.contender == OURS else f"{row.speedup:.2f}x"


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
            lines.append(target_line(t))
    lines.append(f"  results: {out / RESULTS}.json, {out / RESULTS}.md")
    return "\n".join(lines)


def target_line(t: dict[str, Any]) -> str:
    value, wanted = format_target(t)
    return f"  target {t['what']}: {value} ({wanted}) {t['verdict']}"
