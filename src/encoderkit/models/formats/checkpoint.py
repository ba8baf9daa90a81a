"""Reading a Hugging Face-format checkpoint directory (``config.json`` + ``model.safetensors``,
or a ``pytorch_model.bin`` only when asked), whatever the model family.

The safetensors header is read first, without the data: :class:`Weights` holds every tensor's
shape and dtype up front and reads data on demand, so the config can be checked against the file
before anything is allocated (memory follows the file, not the config). Pickles are read only with
``torch.load(weights_only=True)``, never unpickled blindly.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

log = logging.getLogger(__name__)

WEIGHTS, PICKLED, CONFIG = "model.safetensors", "pytorch_model.bin", "config.json"


class PretrainedError(ValueError):
    """A checkpoint that cannot be loaded as it is: missing or corrupt files, or disagreement."""


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PretrainedError(f"expected {path.name} in {path.parent}, found none")
    config: dict[str, Any] = read_json(path, dict)
    return config


def read_json(path: Path, kind: type[dict] | type[list]) -> Any:
    """The JSON ``kind`` (object or array) in the file ``path``; any other content, bytes that are
    not UTF-8 or a file that cannot be read raise a PretrainedError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PretrainedError(f"{path}: not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{path}: not valid JSON ({e})") from e
    except OSError as e:
        raise PretrainedError(f"{path}: could not be read ({e})") from e
    if not isinstance(value, kind):
        expected = "object" if kind is dict else "array"
        raise PretrainedError(f"{path}: expected a JSON {expected}, got {type(value).__name__}")
    return value


class TensorSpec(NamedTuple):
    """What a checkpoint's header says of a tensor, known before its data is read."""

    shape: tuple[int, ...]
    dtype: torch.dtype | str  # a str when torch has no such dtype


# safetensors' dtype names -> torch's, to check dtypes from the header; others stay names.
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class Weights:
    """A checkpoint's tensors by our-side name (task-model prefix stripped): shapes and dtypes
    up front, data read on demand, so the config can be checked before anything is allocated."""

    path: Path
    specs: dict[str, TensorSpec]
    names: dict[str, str]  # our-side name -> name in the file
    tensors: dict[str, torch.Tensor] | None = None  # a pickle is read whole; safetensors lazily

    def read(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        if self.tensors is not None:
            return {k: self.tensors[self.names[k]] for k in keys}
        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(self.names[k]) for k in keys}
        except (SafetensorError, OSError, ValueError) as e:
            raise PretrainedError(f"{self.path}: not a readable safetensors file ({e})") from e


def open_weights(directory: Path, prefix: str, *, allow_pickle: bool) -> Weights:
    """The checkpoint in ``directory``: ``model.safetensors``'s header only, or the whole
    ``pytorch_model.bin`` (a pickle has no header) when ``allow_pickle``."""
    weights = directory / WEIGHTS
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt", device="cpu") as f:
                header = {}
                for key in f.keys():
                    part = f.get_slice(key)
                    dtype = part.get_dtype()
                    header[key] = TensorSpec(
                        tuple(part.get_shape()), _SAFETENSORS_DTYPES.get(dtype, dtype)
                    )
        except (SafetensorError, OSError, ValueError) as e:
            raise PretrainedError(f"{weights}: not a readable safetensors file ({e})") from e
        names = _strip_prefix(header, prefix, weights)
        return Weights(weights, {k: header[n] for k, n in names.items()}, names)
    state = read_weights(directory, allow_pickle=allow_pickle)
    pickled = directory / PICKLED
    names = _strip_prefix(state, prefix, pickled)
    specs = {k: TensorSpec(tuple(state[n].shape), state[n].dtype) for k, n in names.items()}
    return Weights(pickled, specs, names, state)


def read_weights(directory: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """All tensors of ``directory``'s checkpoint, read whole (``load_pretrained`` reads the
    safetensors header first, through :func:`open_weights`)."""
    weights, pickled = directory / WEIGHTS, directory / PICKLED
    if weights.is_file():
        try:
            return load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise PretrainedError(f"{weights}: not a readable safetensors file ({e})") from e
    if pickled.is_file():
        if not allow_pickle:
            raise PretrainedError(
                f"{directory} holds only {PICKLED}, a pickle; pass allow_pickle=True to read it "
                f"with torch.load(weights_only=True), or convert it to {WEIGHTS}"
            )
        if tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2]) < (2, 10):
            raise PretrainedError(
                f"reading pickles needs torch >= 2.10 (weights_only loader fixes, "
                f"CVE-2025-32434 and CVE-2026-24747), this is {torch.__version__}"
            )
        log.warning("reading pickled weights %s with torch.load(weights_only=True)", pickled)
        try:
            state = torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PretrainedError(f"{pickled}: could not be read safely ({e})") from e
        if not isinstance(state, dict):
            raise PretrainedError(
                f"{pickled}: expected a dict of tensors, got {type(state).__name__}"
            )
        odd = [
            f"{k!r}: {type(v).__name__}"
            for k, v in state.items()
            if not (isinstance(k, str) and isinstance(v, torch.Tensor))
        ]
        if odd:
            raise PretrainedError(
                f"{pickled}: expected a dict of str -> tensor, got {', '.join(odd[:5])}"
                + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
            )
        return state
    raise PretrainedError(f"expected {WEIGHTS} in {directory}, found none")


def _strip_prefix(keys: Iterable[str], prefix: str, path: Path) -> dict[str, str]:
    """Our-side name -> name in the file. Task models (BertForSequenceClassification, ...)
    keep the encoder under ``bert.``."""
    keys = list(keys)
    if not any(k.startswith(prefix) for k in keys):
        return {k: k for k in keys}
    names: dict[str, str] = {}
    for key in keys:
        short = key.removeprefix(prefix)
        if short in names:
            raise PretrainedError(f"{path}: both {names[short]} and {key} would be {short}")
        names[short] = key
    return names
