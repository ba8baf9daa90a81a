"""Pretrained weights in and out, in the Hugging Face layout (``config.json`` +
``model.safetensors``), for every family in :mod:`encoderkit.models.formats` (BERT, MiniLM
included, and ViT today): each family's key map and config translation live in its own module
there; loading and saving here dispatch on them.

The config is checked against the weights before anything is allocated: config.json is a few
bytes that can ask for any size, so its values are type-checked, its layer count is compared with
the layers the weights hold, and the shape of every source tensor (read from the safetensors
header, without the data) is compared with the shape our model, built on the meta device, expects.
Only then are tensors read and the real model built, so memory follows the file, not the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.formats import FORMATS, format_of_config, format_of_model
from encoderkit.models.formats.checkpoint import (
    CONFIG,
    WEIGHTS,
    PretrainedError,
    open_weights,
    read_config,
)
from encoderkit.models.formats.keymap import check_layer_count, map_state
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder
from encoderkit.utils.files import atomic_write, atomic_write_text

__all__ = [
    "PretrainedError",
    "config_from_hf",
    "config_to_hf",
    "load_pretrained",
    "read_config",
    "save_pretrained",
]


def load_pretrained(path: str | Path, *, allow_pickle: bool = False) -> TextEncoder | VisionEncoder:
    """Read a Hugging Face-format directory of a BERT-family or ViT model into our model.

    Weights come from ``model.safetensors``. A ``pytorch_model.bin`` is read only when
    ``allow_pickle=True``, and then with ``torch.load(weights_only=True)``.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise PretrainedError(
            f"expected a model directory, got {str(directory)!r}: not a directory"
        )
    source = str(directory)
    hf = read_config(directory / CONFIG)
    model_type = hf.get("model_type")
    fmt = FORMATS.get(model_type) if isinstance(model_type, str) else None
    if fmt is None:
        raise PretrainedError(
            f"{directory / CONFIG}: model_type must be {_known_types()}, got {model_type!r}"
        )
    keymap = fmt.keymap
    weights = open_weights(directory, keymap.model_prefix, allow_pickle=allow_pickle)
    config = fmt.config_from_hf(hf, has_pooler="pooler.dense.weight" in weights.specs)
    check_layer_count(weights.specs, keymap, config.n_layers, source)
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated for what the config asks
            skeleton = fmt.model(config)
    except RuntimeError as e:  # sizes whose product overflows int64, say
        raise PretrainedError(f"{source}: config.json asks sizes no tensor can have ({e})") from e
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    ours = map_state(weights, keymap, expected, config.n_layers, source)
    model: TextEncoder | VisionEncoder = fmt.model(config)  # memory now follows the file
    model.load_state_dict(ours, strict=True)
    return model.eval()


def save_pretrained(model: TextEncoder | VisionEncoder, path: str | Path) -> Path:
    """Write ``model`` as a Hugging Face-format directory (``model.safetensors`` then
    ``config.json``, each atomically) that ``transformers`` and :func:`load_pretrained` read."""
    fmt = format_of_model(model)
    if fmt is None:
        names = dict.fromkeys(f.model.__name__ for f in FORMATS.values())
        raise TypeError(f"expected a {' or '.join(names)}, got {type(model).__name__}")
    keymap, hf = fmt.keymap, fmt.config_to_hf(model.config)
    ours = model.state_dict()
    theirs: dict[str, torch.Tensor] = {}
    for our_key, sources in keymap.expand(model.config.n_layers).items():
        if our_key not in ours:  # the optional pooler
            continue
        parts = ours[our_key].detach().cpu().chunk(len(sources), dim=0)  # (3D, D) -> 3 x (D, D)
        for source, part in zip(sources, parts, strict=True):
            theirs[source] = part.contiguous().clone()  # own storage: safetensors refuses shares
    directory = Path(path)
    metadata = {"format": "pt", "producer": "encoderkit"}
    atomic_write(directory / WEIGHTS, lambda tmp: save_file(theirs, str(tmp), metadata))
    atomic_write_text(directory / CONFIG, json.dumps(hf, indent=2, sort_keys=True) + "\n")
    return directory


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> TextConfig | VisionConfig:
    """Our config from a Hugging Face config.json of any known ``model_type``, with Hugging
    Face's defaults for absent keys.

    Each value is type- and range-checked by the family's module, so that the error names
    config.json's field; whether the sizes agree with the weights is ``map_state``'s to check.
    """
    model_type = hf.get("model_type")
    fmt = FORMATS.get(model_type) if isinstance(model_type, str) else None
    if fmt is None:
        raise PretrainedError(
            f"config.json: model_type must be {_known_types()}, got {model_type!r}"
        )
    config: TextConfig | VisionConfig = fmt.config_from_hf(hf, has_pooler=has_pooler)
    return config


def config_to_hf(config: TextConfig | VisionConfig) -> dict[str, Any]:
    """The Hugging Face config.json of our config; refuses what its family cannot express."""
    fmt = format_of_config(config)
    if fmt is None:
        names = dict.fromkeys(f.config.__name__ for f in FORMATS.values())
        raise TypeError(f"expected a {' or '.join(names)}, got {type(config).__name__}")
    hf: dict[str, Any] = fmt.config_to_hf(config)
    return hf


def _known_types() -> str:
    return " or ".join(repr(t) for t in FORMATS)
