"""Fully sharded data parallelism for encoderkit models: FSDP2 (torch's ``fully_shard``; Zhao et
al. 2023, "PyTorch FSDP"; the per-block wrapping of torchtitan), and checkpoints as full states.

Each rank keeps 1/world of every parameter, gradient and optimizer state, as a ``DTensor``
sharded on dim 0. :func:`shard` makes every :class:`EncoderBlock` one unit (its parameters are
all-gathered just before the block runs and freed after it) and the rest of the model (embeddings,
final norm, head) the root unit. Gradients are reduce-scattered with an average, so a loss averaged
over each rank's equal share of the global batch trains exactly as the whole batch in one process.

Checkpoints stay in the one-process format, whatever the number of ranks: :func:`full_state`
gathers the full weights (the keys of ``model.state_dict()``) and the optimizer state in the
layout of ``Optimizer.state_dict()`` (parameters numbered over the groups in order) onto rank 0's
CPU; :func:`load_full_state` shards such states back. A checkpoint written under FSDP therefore
loads in one process with ``load_state_dict`` and the other way round, and a run resumes on any
number of ranks. Both work on an unsharded model too, in one process or several.

Works on CPUs with gloo as on GPUs with NCCL (torch 2.13: gloo has every collective FSDP2 uses).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from encoderkit.layers.block import EncoderBlock

log = logging.getLogger(__name__)

# Full (unsharded) tensors, gathered to rank 0's CPU; the other ranks get empty dicts
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place over the default process group and return it: each
    :class:`EncoderBlock` one FSDP unit, then the model itself the root unit.

    Call it on every rank, with the same initial weights on all of them (each keeps its own
    chunk), after moving the model to its device and before building the optimizer, which must
    hold the sharded parameters.
    """
    if not dist.is_initialized():
        raise ValueError(
            "shard() needs a process group (torchrun, or dist.init_process_group); none is set up"
        )
    if isinstance(model, FSDPModule):
        raise ValueError(f"{type(model).__name__} is sharded already")
    blocks = [m for m in model.modules() if isinstance(m, EncoderBlock)]
    if not blocks:
        raise ValueError(
            f"expected a model with EncoderBlocks to shard, got {type(model).__name__}"
        )
    # Bottom-up: a unit takes the parameters that no unit below it has taken
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    log.info("sharded %d blocks and the root over %d ranks", len(blocks), dist.get_world_size())
    return model


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, optimizer state) in the one-process format, as CPU tensors, on rank 0; empty
    dicts on the other ranks. Collective: every rank must call it.

    ``model`` is the module itself (sharded or not), not a DDP or ``torch.compile`` wrapper. The
    tensors are copies: later steps do not change them. The optimizer state is ``{}`` without
    an optimizer. An optimizer that has not stepped yet is given its state by a step at lr 0
    (torch's ``get_optimizer_state_dict`` does that).
    """
    # torch hands back the live tensors wherever no gather was needed (every tensor in one
    # process, the optimizer's 0-dim step counts under FSDP): copy those
    live = _storages(model, optimizer)
    weights = {k: _copy_if(v, live) for k, v in get_model_state_dict(model, options=FULL).items()}
    if optimizer is None:
        return weights, {}
    state = cast(dict[str, Any], get_optimizer_state_dict(model, optimizer, options=FULL))
    if not state:
        return weights, {}
    state = {
        "state": {
            k: {key: _copy_if(v, live) for key, v in s.items()} for k, s in state["state"].items()
        },
        "param_groups": state["param_groups"],
    }
    return weights, _numbered(state)


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    weights: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any] | None = None,
) -> None:
    """Load full ``weights`` (``model.state_dict()``'s keys) and, with an optimizer, its full
    state (``Optimizer.state_dict()``'s layout) into ``model`` and ``optimizer``, sharded or not.
    Collective: every rank must call it with the same full states (each reads the checkpoint).
    As ``Optimizer.load_state_dict`` does, the optimizer may adopt tensors of ``optimizer_state``
    (on the CPU) rather than copy them."""
    # torch's set_* write into the dicts they are given: pass copies
    if optimizer is None:
        set_model_state_dict(model, dict(weights), options=FULL)
        return
    if optimizer_state is None:
        raise ValueError("expected the optimizer's state to load into the optimizer, got None")
    named = _named(model, optimizer, optimizer_state)  # checked before any work
    set_model_state_dict(model, dict(weights), options=FULL)
    set_optimizer_state_dict(model, optimizer, named, options=FULL)


def _storages(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> set[int]:
    """Where this rank's parameters, buffers and optimizer state live (storage addresses)."""
    tensors = [*model.parameters(), *model.buffers()]
    if optimizer is not None:
        tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    return {t.untyped_storage().data_ptr() for t in local}


def _copy_if(value: Any, live: set[int]) -> Any:
    if torch.is_tensor(value) and value.untyped_storage().data_ptr() in live:
        return value.clone()
    return value


def _numbered(state: Mapping[str, Any]) -> dict[str, Any]:
    """torch.distributed.checkpoint's optimizer state, keyed by parameter name, -> the layout of
    ``Optimizer.state_dict()``: parameters numbered 0, 1, ... over the groups in order."""
    number: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = [number.setdefault(name, len(number)) for name in group["params"]]
        groups.append({**group, "params": ids})
    return {
        "state": {number[name]: dict(s) for name, s in state["state"].items()},
        "param_groups": groups,
    }


def _named(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
) -> dict[str, Any]:
    """``Optimizer.state_dict()``'s layout -> keyed by parameter name, for this optimizer: its
    parameters in group order are the numbers 0, 1, ..."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    saved_sizes = [len(group["params"]) for group in state["param_groups"]]
    if saved_sizes != sizes:
        raise ValueError(
            f"expected an optimizer state with {sizes} parameters per group (this optimizer's), "
            f"got {saved_sizes}"
        )
    groups = [
        {**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]
    ]
    return {"state": {names[i]: dict(s) for i, s in state["state"].items()}, "param_groups": groups}
