"""A run's model rebuilt from its directory alone: its config.json and a checkpoint, checked against
the checkpoint's header before anything is allocated. No training data is read."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from encoderkit.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    pick_checkpoint,
    read_weights_header,
)
from encoderkit.training.config import TrainConfig
from encoderkit.training.objectives import objective_for
from encoderkit.training.runs import read_model_config, read_run_file, read_test_split
from encoderkit.training.tasks import Task, load_test_split, model_config

log = logging.getLogger(__name__)


def load_run_model(
    run: Path, which: Literal["best", "latest"] = "best", *, test_split: bool = False
) -> tuple[TrainConfig, Task]:
    """The run's config and task, with the model weights of its best (or latest) checkpoint.

    The model is rebuilt from the run's config.json and saved classes alone: no training data is
    generated or read, no pretrained weights are loaded (the checkpoint replaces them). The
    task's ``train`` is empty, and so is ``test`` unless ``test_split``: the split saved in the run
    directory (runs older than that file rebuild it from the data). Before anything is
    allocated, the config is checked against the shapes in the checkpoint's header, so an
    edited or foreign config.json fails fast with a CheckpointError.
    """
    run = Path(run)
    cfg, classes = read_run_file(run)
    objective = objective_for(cfg, run)
    objective.classes = classes
    path = pick_checkpoint(run, which)
    shapes = read_weights_header(path / "model.safetensors")
    # a pretrained model's sizes as saved when it was built: --init need not be there any more
    pretrained = cfg.init != "scratch" and read_model_config(run)
    config = pretrained or model_config(cfg, objective)
    _check_layer_count(config.n_layers, shapes, path)
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        try:
            with torch.device("meta"):  # shapes only: nothing is allocated yet
                skeleton = objective.build_model(config, classes)
        except RuntimeError as e:  # sizes whose product overflows, say
            raise CheckpointError(f"{run}/config.json asks sizes no tensor can have ({e})") from e
        _check_shapes(skeleton, shapes, path)
        model = objective.build_model(config, classes)
    weights, _, _ = load_checkpoint(path)
    model.load_state_dict(weights)
    model.eval()
    test = (read_test_split(run) or load_test_split(cfg)) if test_split else ()
    return cfg, Task(cfg.task, objective, (), test, model, classes)


def _check_layer_count(n_layers: int, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """Before a model is built, even on the meta device (a million layers take minutes)."""
    held = {key.split(".")[3] for key in shapes if key.startswith("encoder.encoder.blocks.")}
    if n_layers != len(held):
        raise CheckpointError(
            f"config.json asks n_layers={n_layers}, but {path}/model.safetensors holds "
            f"{len(held)} layers"
        )


def _check_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    where = f"{path}/model.safetensors"
    missing, extra = sorted(expected.keys() - shapes), sorted(shapes.keys() - expected)
    if missing or extra:
        raise CheckpointError(
            f"config.json does not match {where}: the config's model has "
            f"{', '.join(missing) or 'no key'} not in the checkpoint, the checkpoint has "
            f"{', '.join(extra) or 'no key'} not in the model"
        )
    for key, shape in expected.items():
        if shapes[key] != shape:
            raise CheckpointError(
                f"config.json does not match {where}: {key} should be {shape} by the config, "
                f"found {shapes[key]}"
            )
