"""The declarative key map from a foreign checkpoint's names to ours, and applying it.

A map is ours <- theirs, with one transform: a tuple of source keys is concatenated along dim 0,
which fuses separate W^Q, W^K, W^V into our one ``qkv``. Loading is strict: every source tensor
is used or deliberately dropped, every parameter of ours is filled, shapes and dtypes are checked
and values must be finite, and any disagreement raises one error that lists the offending keys
before the model is touched. Export runs the same map backwards.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from encoderkit.models.formats.checkpoint import PretrainedError, TensorSpec, Weights

log = logging.getLogger(__name__)

Sources = str | tuple[str, ...]


@dataclass(frozen=True)
class KeyMap:
    """ours <- theirs. ``layer`` entries are relative to ``encoder.blocks.{i}.`` (ours) and
    ``layer_prefix.{i}.`` (theirs); ``dropped`` are regexes of source keys used by nothing."""

    top: dict[str, Sources]
    layer: dict[str, Sources]
    layer_prefix: str
    dropped: tuple[str, ...]
    model_prefix: str  # what task models (BertForX, ViTForX) put in front of every key
    layers_field: str = "num_hidden_layers"  # config.json's layer count (DistilBERT: n_layers)

    def expand(self, n_layers: int) -> dict[str, tuple[str, ...]]:
        mapping = {ours: as_tuple(theirs) for ours, theirs in self.top.items()}
        for i in range(n_layers):
            for ours, theirs in self.layer.items():
                mapping[f"encoder.blocks.{i}.{ours}"] = tuple(
                    f"{self.layer_prefix}.{i}.{t}" for t in as_tuple(theirs)
                )
        return mapping


def as_tuple(sources: Sources) -> tuple[str, ...]:
    return (sources,) if isinstance(sources, str) else sources


def weight_and_bias(pairs: dict[str, Sources]) -> dict[str, Sources]:
    """{"attn.proj": "attention.output.dense"} -> the .weight and .bias entries of each."""
    out: dict[str, Sources] = {}
    for ours, theirs in pairs.items():
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = tuple(f"{t}.{p}" for t in as_tuple(theirs))
    return out


def _is_floating(dtype: torch.dtype | str) -> bool:
    return isinstance(dtype, torch.dtype) and dtype.is_floating_point


def check_layer_count(
    specs: dict[str, TensorSpec], keymap: KeyMap, n_layers: int, source: str
) -> None:
    """Refuse a config that asks more layers than the weights hold, before a model of that many
    layers is built (even on the meta device, each layer costs time)."""
    pattern = re.compile(rf"{re.escape(keymap.layer_prefix)}\.(\d+)\.")
    present = sorted({int(m.group(1)) for k in specs if (m := pattern.match(k))})
    if n_layers > len(present):
        held = f": {keymap.layer_prefix}.{{{present[0]}..{present[-1]}}}" if present else ""
        raise PretrainedError(
            f"{source}: config.json asks {keymap.layers_field}={n_layers}, but the weights hold "
            f"{len(present)} layers{held}"
        )


def map_state(
    weights: Weights,
    mapping: dict[str, tuple[str, ...]],
    dropped: tuple[str, ...],
    expected: dict[str, tuple[int, ...]],
    source: str,
) -> dict[str, torch.Tensor]:
    """Build our state dict from theirs by ``mapping`` (ours <- theirs, expanded, as
    :meth:`KeyMap.expand` gives it), or raise one error naming every offending key; source keys
    used by nothing must match a regex of ``dropped``.

    Every source tensor's shape and dtype is checked against ``expected`` (our shapes, from
    the config) before any data is read or concatenated: of n sources concatenated on dim 0,
    each must be our shape with dim 0 divided by n. Data is read only for the tensors whose
    shapes fit, so what is read never exceeds what the file holds.
    """
    problems: list[str] = []
    plan: dict[str, tuple[str, ...]] = {}
    used: set[str] = set()
    for our_key, sources in mapping.items():
        if our_key not in expected:
            continue  # an optional part we did not build (the pooler)
        used.update(s for s in sources if s in weights.specs)
        absent = [s for s in sources if s not in weights.specs]
        if absent:
            problems.append(f"missing {', '.join(absent)} (for {our_key})")
            continue
        want = expected[our_key]
        n = len(sources)
        part = want if n == 1 else (want[0] // n, *want[1:])  # (3D, D) -> 3 x (D, D)
        whole = f"{our_key}" if n == 1 else f"{our_key} {want}, 1/{n} each"
        fits = True
        for s in sources:
            shape, dtype = weights.specs[s]
            if shape != part:
                problems.append(f"shape of {s}: expected {part} for {whole}, got {shape}")
                fits = False
            elif not _is_floating(dtype):
                problems.append(
                    f"dtype of {s}: expected floating for {whole}, got {dtype} (shape {shape})"
                )
                fits = False
        if fits:
            plan[our_key] = sources
    skipped = {
        k for k in weights.specs if k not in used and any(re.fullmatch(p, k) for p in dropped)
    }
    unused = sorted(set(weights.specs) - used - skipped)
    if unused:
        problems.append(f"unexpected keys, used by nothing: {', '.join(unused)}")
    tensors = weights.read(s for sources in plan.values() for s in sources)
    problems += [
        f"values of {k}: not all finite" for k, t in tensors.items() if not t.isfinite().all()
    ]
    if problems:
        raise PretrainedError(
            f"{source}: the weights do not match the config:\n  " + "\n  ".join(problems)
        )
    if skipped:
        log.info(
            "%s: dropped %d keys used by no part of the model: %s",
            source,
            len(skipped),
            ", ".join(sorted(skipped)),
        )
    return {
        our_key: torch.cat([tensors[s] for s in sources], dim=0)
        if len(sources) > 1
        else tensors[sources[0]]
        for our_key, sources in plan.items()
    }
