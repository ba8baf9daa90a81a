"""Long context on one CPU: a 2-layer, 256-wide, 4-head encoder with rotary positions and local
attention (window 128 in both layers) runs a training step (forward, backward, AdamW) on one
sequence of T = 8,192 tokens in memory linear in T.

The bound: the step's peak resident memory grows by less than 512 MiB, half of what a single
(4 heads, 8,192 x 8,192) float32 score matrix takes (1,024 MiB), which the math path, or any path
with a dense band mask, needs several of. The step runs in a process of its own with glibc's
mmap threshold fixed, so that freed tensors leave the resident set at once and the peak is the
peak of live memory (repeatable to 1 MiB; with the default dynamic threshold it wanders by
200 MiB between runs).

Measured (2 cores, torch 2.13 CPU), growth / time of the step:

    local, window 128, padded           T = 4,096: 199 MiB / 0.6 s   8,192: 378 MiB / 1.1 s
                                        16,384: 734 MiB / 2.3 s      32,768: 1,447 MiB / 4.9 s
    local, window 128, padding-free     8,192: 385 MiB / 1.1 s
    local, window 256, padded           8,192: 454 MiB / 1.4 s
    full attention (fused, O(T^2) time) 8,192: 355 MiB / 3.4 s       16,384: 691 MiB / 12.1 s
    full attention, (T, T) band mask    8,192: 819 MiB / 3.7 s

The last row is measured by hand, not asserted: run in the full suite beside other work, the dense
band-mask step once came out at 241 MiB, so it is no reliable control for the bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STEP = Path(__file__).with_name("long_context_step.py")
BOUND_MIB = 512  # half of one 4 x 8192 x 8192 float32 score matrix


def run_step(*args: str) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}  # see the module doc
    done = subprocess.run(
        [sys.executable, str(STEP), *args],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "padding-free"])
def test_a_training_step_at_8192_tokens_with_local_attention_stays_in_bounded_memory(packed):
    result = run_step("8192", "128", *(["--packed"] if packed else []))
    assert result["growth_mib"] < BOUND_MIB, result
