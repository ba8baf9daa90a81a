"""Pretrained weights in and out, in the Hugging Face layout (``config.json`` +
``model.safetensors``), for the BERT family (``model_type`` "bert", MiniLM included) and ViT.

Import is a declarative key map, ours <- theirs, with one transform: a tuple of source keys is
concatenated along dim 0, which fuses separate W^Q, W^K, W^V into our one ``qkv``. Loading is
strict: every source tensor is used or deliberately dropped, every parameter of ours is filled,
shapes and dtypes are checked and values must be finite, and any disagreement raises one error
that lists the offending keys before the model is touched. Export runs the same map backwards.

The config is checked against the weights before anything is allocated: config.json is a few
bytes that can ask for any size, so its values are type-checked, its layer count is compared with
the layers the weights hold, and the shape of every source tensor (read from the safetensors
header, without the data) is compared with the shape our model, built on the meta device, expects.
Only then are tensors read and the real model built, so memory follows the file, not the config.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder
from encoderkit.utils.files import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

WEIGHTS, PICKLED, CONFIG = "model.safetensors", "pytorch_model.bin", "config.json"
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

    def expand(self, n_layers: int) -> dict[str, tuple[str, ...]]:
        mapping = {ours: _as_tuple(theirs) for ours, theirs in self.top.items()}
        for i in range(n_layers):
            for ours, theirs in self.layer.items():
                mapping[f"encoder.blocks.{i}.{ours}"] = tuple(
                    f"{self.layer_prefix}.{i}.{t}" for t in _as_tuple(theirs)
                )
        return mapping


def _as_tuple(sources: Sources) -> tuple[str, ...]:
    return (sources,) if isinstance(sources, str) else sources


def _weight_and_bias(pairs: dict[str, Sources]) -> dict[str, Sources]:
    """{"attn.proj": "attention.output.dense"} -> the .weight and .bias entries of each."""
    out: dict[str, Sources] = {}
    for ours, theirs in pairs.items():
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = tuple(f"{t}.{p}" for t in _as_tuple(theirs))
    return out


BERT = KeyMap(
    top={
        "embeddings.tokens.weight": "embeddings.word_embeddings.weight",
        "embeddings.positions.weight": "embeddings.position_embeddings.weight",
        "embeddings.segments.weight": "embeddings.token_type_embeddings.weight",
        **_weight_and_bias(
            {"embeddings.norm": "embeddings.LayerNorm", "pooler.dense": "pooler.dense"}
        ),
    },
    layer=_weight_and_bias(
        {
            "attn.qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
            "attn.proj": "attention.output.dense",
            "norm1": "attention.output.LayerNorm",
            "ff.fc1": "intermediate.dense",
            "ff.fc2": "output.dense",
            "norm2": "output.LayerNorm",
        }
    ),
    layer_prefix="encoder.layer",
    # position_ids is a derived buffer; cls.* and classifier.* are task heads of BertForX models.
    dropped=(r"embeddings\.position_ids", r"cls\..*", r"classifier\..*"),
    model_prefix="bert.",
)

VIT = KeyMap(
    top={
        "embeddings.cls_token": "embeddings.cls_token",
        "embeddings.pos_embed": "embeddings.position_embeddings",
        **_weight_and_bias(
            {
                "embeddings.proj": "embeddings.patch_embeddings.projection",
                "encoder.norm": "layernorm",
                "pooler.dense": "pooler.dense",
            }
        ),
    },
    layer=_weight_and_bias(
        {
            "norm1": "layernorm_before",
            "attn.qkv": (
                "attention.attention.query",
                "attention.attention.key",
                "attention.attention.value",
            ),
            "attn.proj": "attention.output.dense",
            "norm2": "layernorm_after",
            "ff.fc1": "intermediate.dense",
            "ff.fc2": "output.dense",
        }
    ),
    layer_prefix="encoder.layer",
    # mask_token serves masked-image pre-training only; classifier.* is ViTForImageClassification's.
    dropped=(r"embeddings\.mask_token", r"classifier\..*"),
    model_prefix="vit.",
)

# Hugging Face activation names <-> ours.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}
OUR_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_pytorch_tanh"}


class PretrainedError(ValueError):
    """A checkpoint that cannot be loaded as it is: missing or corrupt files, or disagreement."""


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
    if model_type == "bert":
        keymap: KeyMap = BERT
    elif model_type == "vit":
        keymap = VIT
    else:
        raise PretrainedError(
            f"{directory / CONFIG}: model_type must be 'bert' or 'vit', got {model_type!r}"
        )
    weights = open_weights(directory, keymap.model_prefix, allow_pickle=allow_pickle)
    config = config_from_hf(hf, has_pooler="pooler.dense.weight" in weights.specs)
    check_layer_count(weights.specs, keymap, config.n_layers, source)
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated for what the config asks
            skeleton = _build(config)
    except RuntimeError as e:  # sizes whose product overflows int64, say
        raise PretrainedError(f"{source}: config.json asks sizes no tensor can have ({e})") from e
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    ours = map_state(weights, keymap, expected, config.n_layers, source)
    model = _build(config)  # every shape now agrees with the file: memory follows the file
    model.load_state_dict(ours, strict=True)
    return model.eval()


def _build(config: TextConfig | VisionConfig) -> TextEncoder | VisionEncoder:
    return TextEncoder(config) if isinstance(config, TextConfig) else VisionEncoder(config)


def save_pretrained(model: TextEncoder | VisionEncoder, path: str | Path) -> Path:
    """Write ``model`` as a Hugging Face-format directory (``model.safetensors`` then
    ``config.json``, each atomically) that ``transformers`` and :func:`load_pretrained` read."""
    if isinstance(model, TextEncoder):
        keymap, hf = BERT, config_to_hf(model.config)
    elif isinstance(model, VisionEncoder):
        keymap, hf = VIT, config_to_hf(model.config)
    else:
        raise TypeError(f"expected a TextEncoder or VisionEncoder, got {type(model).__name__}")
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


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PretrainedError(f"expected {path.name} in {path.parent}, found none")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PretrainedError(f"{path}: not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{path}: not valid JSON ({e})") from e
    except OSError as e:
        raise PretrainedError(f"{path}: could not be read ({e})") from e
    if not isinstance(hf, dict):
        raise PretrainedError(f"{path}: expected a JSON object, got {type(hf).__name__}")
    return hf


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


def _is_floating(dtype: torch.dtype | str) -> bool:
    return isinstance(dtype, torch.dtype) and dtype.is_floating_point


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
            f"{source}: config.json asks num_hidden_layers={n_layers}, but the weights hold "
            f"{len(present)} layers{held}"
        )


def map_state(
    weights: Weights,
    keymap: KeyMap,
    expected: dict[str, tuple[int, ...]],
    n_layers: int,
    source: str,
) -> dict[str, torch.Tensor]:
    """Build our state dict from theirs, or raise one error naming every offending key.

    Every source tensor's shape and dtype is checked against ``expected`` (our shapes, from
    the config) before any data is read or concatenated: of n sources concatenated on dim 0,
    each must be our shape with dim 0 divided by n. Data is read only for the tensors whose
    shapes fit, so what is read never exceeds what the file holds.
    """
    problems: list[str] = []
    plan: dict[str, tuple[str, ...]] = {}
    used: set[str] = set()
    for our_key, sources in keymap.expand(n_layers).items():
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
    dropped = {
        k
        for k in weights.specs
        if k not in used and any(re.fullmatch(p, k) for p in keymap.dropped)
    }
    unused = sorted(set(weights.specs) - used - dropped)
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
    if dropped:
        log.info(
            "%s: dropped %d keys used by no encoder part: %s",
            source,
            len(dropped),
            ", ".join(sorted(dropped)),
        )
    return {
        our_key: torch.cat([tensors[s] for s in sources], dim=0)
        if len(sources) > 1
        else tensors[sources[0]]
        for our_key, sources in plan.items()
    }


_REQUIRED: Any = object()


def _int_field(hf: dict[str, Any], key: str, default: Any = _REQUIRED, minimum: int = 1) -> int:
    """An int from config.json, checked here so that the error names config.json's field."""
    if key not in hf:
        if default is _REQUIRED:
            raise PretrainedError(f"config.json lacks {key!r}, which the architecture needs")
        return int(default)
    value = hf[key]
    if isinstance(value, (list, tuple)) and key in ("image_size", "patch_size"):
        if len(value) != 2 or value[0] != value[1]:
            raise PretrainedError(f"config.json: {key} must be square, got {value!r}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise PretrainedError(f"config.json: {key} must be {kind}, got {value!r}")
    return value


def _float_field(hf: dict[str, Any], key: str, default: float, *, probability: bool) -> float:
    """A finite float from config.json: a dropout rate in [0, 1), or a positive epsilon."""
    value = hf.get(key, default)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if probability and not (ok and 0 <= value < 1):
        raise PretrainedError(f"config.json: {key} must be a float in [0, 1), got {value!r}")
    if not probability and not (ok and value > 0):
        raise PretrainedError(f"config.json: {key} must be a finite float > 0, got {value!r}")
    return float(value)


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> TextConfig | VisionConfig:
    """Our config from a Hugging Face config.json, with Hugging Face's defaults for absent keys.

    Each value is type- and range-checked here, so that the error names config.json's field;
    whether the sizes agree with the weights is :func:`map_state`'s to check.
    """
    act = hf.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in HF_ACTIVATIONS:
        raise PretrainedError(
            f"config.json: hidden_act must be one of {sorted(HF_ACTIVATIONS)}, got {act!r}"
        )
    bert = hf["model_type"] == "bert"
    common: dict[str, Any] = {
        "d_model": _int_field(hf, "hidden_size"),
        "n_heads": _int_field(hf, "num_attention_heads"),
        "d_ff": _int_field(hf, "intermediate_size"),
        "n_layers": _int_field(hf, "num_hidden_layers"),
        "activation": HF_ACTIVATIONS[act],
        "layer_norm_eps": _float_field(hf, "layer_norm_eps", 1e-12, probability=False),
        "dropout": _float_field(hf, "hidden_dropout_prob", 0.1 if bert else 0.0, probability=True),
        "attention_dropout": _float_field(
            hf, "attention_probs_dropout_prob", 0.1 if bert else 0.0, probability=True
        ),
        "pooler": has_pooler,
    }
    try:
        if bert:
            if hf.get("position_embedding_type", "absolute") != "absolute":
                raise PretrainedError(
                    f"config.json: position_embedding_type must be 'absolute', got "
                    f"{hf['position_embedding_type']!r}"
                )
            # Hugging Face writes "pad_token_id": null for models without one; ours is then 0.
            pad = 0 if hf.get("pad_token_id") is None else _int_field(hf, "pad_token_id", 0, 0)
            return TextConfig(
                **common,
                norm_first=False,
                vocab_size=_int_field(hf, "vocab_size"),
                max_positions=_int_field(hf, "max_position_embeddings", 512),
                type_vocab_size=_int_field(hf, "type_vocab_size", 2, 0),
                pad_token_id=pad,
            )
        qkv_bias = hf.get("qkv_bias", True)
        if not isinstance(qkv_bias, bool):
            raise PretrainedError(f"config.json: qkv_bias must be a bool, got {qkv_bias!r}")
        if not qkv_bias:
            raise PretrainedError(
                "config.json: qkv_bias=false ViTs are not supported: our qkv has a bias"
            )
        return VisionConfig(
            **common,
            norm_first=True,
            image_size=_int_field(hf, "image_size", 224),
            patch_size=_int_field(hf, "patch_size", 16),
            num_channels=_int_field(hf, "num_channels", 3),
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, PretrainedError):
            raise
        raise PretrainedError(f"config.json does not describe a valid model: {e}") from e


def config_to_hf(config: TextConfig | VisionConfig) -> dict[str, Any]:
    """The Hugging Face config.json of our config; refuses what BERT / ViT cannot express."""
    kind = "BERT" if isinstance(config, TextConfig) else "ViT"
    wanted_norm_first = kind == "ViT"
    reasons = []
    if config.norm_first != wanted_norm_first:
        reasons.append(f"norm_first must be {wanted_norm_first}")
    if not config.bias:
        reasons.append("bias must be True")
    if config.activation not in OUR_ACTIVATIONS:
        reasons.append(f"activation must be one of {sorted(OUR_ACTIVATIONS)}")
    if isinstance(config, TextConfig) and config.position_encoding != "learned":
        reasons.append("position_encoding must be 'learned'")
    if isinstance(config, TextConfig) and config.type_vocab_size == 0:
        reasons.append("type_vocab_size must be at least 1")
    if reasons:
        raise ValueError(
            f"this model cannot be written as a {kind} checkpoint: " + "; ".join(reasons)
        )
    hf: dict[str, Any] = {
        "hidden_size": config.d_model,
        "num_attention_heads": config.n_heads,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "hidden_act": OUR_ACTIVATIONS[config.activation],
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": 0.02,
    }
    if isinstance(config, TextConfig):
        return hf | {
            "model_type": "bert",
            "architectures": ["BertModel"],
            "vocab_size": config.vocab_size,
            "max_position_embeddings": config.max_positions,
            "type_vocab_size": config.type_vocab_size,
            "pad_token_id": config.pad_token_id,
            "position_embedding_type": "absolute",
        }
    return hf | {
        "model_type": "vit",
        "architectures": ["ViTModel"],
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
        "qkv_bias": True,
    }
