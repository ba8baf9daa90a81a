"""Whether two contenders compute the same function: the measures of a difference, and the gate
that stops a comparison whose rows would not time the same work."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from benchmarks.measure import OURS

TOLERANCE = 1e-4  # fp32: max abs diff of outputs, and of gradients relative to their largest entry


class MismatchError(RuntimeError):
    """A peer computes something other than encoderkit, so its row would not time the same work."""


def max_abs(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.detach().double() - ref.detach().double()).abs().max().item()


def rel_max(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| relative to max |ref|: the fp32 gradient comparisons' measure."""
    return max_abs(a, ref) / ref.detach().abs().max().double().clamp_min(1e-30).item()


def rel_rms(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref||, in float64: the bf16 comparisons' measure."""
    a, ref = a.detach().double(), ref.detach().double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def diffs_to_ours(
    values: Mapping[str, torch.Tensor],
    measure: Callable[[torch.Tensor, torch.Tensor], float] = rel_rms,
) -> dict[str, float]:
    """Each peer's difference from encoderkit's tensor, when encoderkit's ran."""
    if OURS not in values:
        return {}
    return {name: measure(v, values[OURS]) for name, v in values.items() if name != OURS}


def gate(diffs: Mapping[str, float], what: str, tolerance: float = TOLERANCE) -> None:
    """MismatchError naming every peer whose difference is not below ``tolerance`` (NaN too)."""
    bad = [f"{name} differs by {diff:.3g}" for name, diff in diffs.items() if not diff < tolerance]
    if bad:  # `not <` also catches NaN
        raise MismatchError(
            f"{what}: {'; '.join(bad)} from encoderkit (tolerance {tolerance:g}); "
            f"these rows would not time the same work"
        )
