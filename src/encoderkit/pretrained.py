"""Pretrained weights in and out, in the Hugging Face layout (``config.json`` +
``model.safetensors``), for the BERT family (``model_type`` "bert", MiniLM included) and ViT.

Import is a declarative key map, ours <- theirs, with one transform: a tuple of source keys is
concatenated along dim 0, which fuses separate W^Q, W^K, W^V into our one ``qkv``. Loading is
strict: every source tensor is used or deliberately dropped, every parameter of ours is filled,
shapes and dtypes are checked and values must be finite, and any disagreement raises one error
that lists the offending keys before the model is touched. Export runs the same map backwards.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from encoderkit.config import TextConfig, VisionConfig
from encoderkit.files import atomic_write, atomic_write_text
from encoderkit.models import TextEncoder, VisionEncoder

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
    hf = read_config(directory / CONFIG)
    state = read_weights(directory, allow_pickle=allow_pickle)
    model_type = hf.get("model_type")
    if model_type == "bert":
        keymap: KeyMap = BERT
    elif model_type == "vit":
        keymap = VIT
    else:
        raise PretrainedError(
            f"{directory / CONFIG}: model_type must be 'bert' or 'vit', got {model_type!r}"
        )
    state = _strip_prefix(state, keymap.model_prefix)
    config = config_from_hf(hf, has_pooler="pooler.dense.weight" in state)
    model: TextEncoder | VisionEncoder = (
        TextEncoder(config) if isinstance(config, TextConfig) else VisionEncoder(config)
    )
    ours = map_state(state, keymap, model.state_dict(), config.n_layers, source=str(directory))
    model.load_state_dict(ours, strict=True)
    return model.eval()


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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretrainedError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise PretrainedError(f"{path}: expected a JSON object, got {type(hf).__name__}")
    return hf


def read_weights(directory: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
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
        return state
    raise PretrainedError(f"expected {WEIGHTS} in {directory}, found none")


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Task models (BertForSequenceClassification, ...) keep the encoder under ``bert.``."""
    if any(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def map_state(
    state: dict[str, torch.Tensor],
    keymap: KeyMap,
    expected: dict[str, torch.Tensor],
    n_layers: int,
    source: str,
) -> dict[str, torch.Tensor]:
    """Build our state dict from theirs, or raise one error naming every offending key."""
    problems: list[str] = []
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for our_key, sources in keymap.expand(n_layers).items():
        if our_key not in expected:
            continue  # an optional part we did not build (the pooler)
        used.update(s for s in sources if s in state)
        absent = [s for s in sources if s not in state]
        if absent:
            problems.append(f"missing {', '.join(absent)} (for {our_key})")
            continue
        tensor = (
            torch.cat([state[s] for s in sources], dim=0) if len(sources) > 1 else state[sources[0]]
        )
        want = expected[our_key]
        if tuple(tensor.shape) != tuple(want.shape):
            problems.append(
                f"shape of {' + '.join(sources)}: expected {tuple(want.shape)} for {our_key}, "
                f"got {tuple(tensor.shape)}"
            )
        elif not tensor.is_floating_point():
            problems.append(
                f"dtype of {' + '.join(sources)}: expected floating, got {tensor.dtype}"
            )
        elif not torch.isfinite(tensor).all():
            problems.append(f"values of {' + '.join(sources)}: not all finite")
        ours[our_key] = tensor
    dropped = {
        k for k in state if k not in used and any(re.fullmatch(p, k) for p in keymap.dropped)
    }
    unused = sorted(set(state) - used - dropped)
    if unused:
        problems.append(f"unexpected keys, used by nothing: {', '.join(unused)}")
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
    return ours


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> TextConfig | VisionConfig:
    """Our config from a Hugging Face config.json, with Hugging Face's defaults for absent keys."""

    def need(key: str) -> Any:
        if key not in hf:
            raise PretrainedError(f"config.json lacks {key!r}, which the architecture needs")
        return hf[key]

    act = hf.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise PretrainedError(f"hidden_act must be one of {sorted(HF_ACTIVATIONS)}, got {act!r}")
    common: dict[str, Any] = {
        "d_model": need("hidden_size"),
        "n_heads": need("num_attention_heads"),
        "d_ff": need("intermediate_size"),
        "n_layers": need("num_hidden_layers"),
        "activation": HF_ACTIVATIONS[act],
        "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
        "pooler": has_pooler,
    }
    try:
        if hf["model_type"] == "bert":
            if hf.get("position_embedding_type", "absolute") != "absolute":
                raise PretrainedError(
                    f"position_embedding_type must be 'absolute', got "
                    f"{hf['position_embedding_type']!r}"
                )
            return TextConfig(
                **common,
                norm_first=False,
                dropout=hf.get("hidden_dropout_prob", 0.1),
                attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                vocab_size=need("vocab_size"),
                max_positions=hf.get("max_position_embeddings", 512),
                type_vocab_size=hf.get("type_vocab_size", 2),
                pad_token_id=hf.get("pad_token_id", 0) or 0,
            )
        if not hf.get("qkv_bias", True):
            raise PretrainedError("qkv_bias=false ViTs are not supported: our qkv has a bias")
        return VisionConfig(
            **common,
            norm_first=True,
            dropout=hf.get("hidden_dropout_prob", 0.0),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.0),
            image_size=_square(hf.get("image_size", 224), "image_size"),
            patch_size=_square(hf.get("patch_size", 16), "patch_size"),
            num_channels=hf.get("num_channels", 3),
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, PretrainedError):
            raise
        raise PretrainedError(f"config.json does not describe a valid model: {e}") from e


def _square(value: Any, name: str) -> Any:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise PretrainedError(f"{name} must be square, got {value!r}")
        return value[0]
    return value


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
