"""ModernBERT in the Hugging Face layout (``model_type`` "modernbert"): its key map, its
config.json, read into and written from our pre-norm :class:`TextEncoder` (Warner et al. 2024,
"Smarter, Better, Faster, Longer", section 2.1), and its task classes.

ModernBERT is a pre-norm encoder without biases: token embeddings (no position table, no
segments) through a LayerNorm; blocks whose attention rotates queries and keys (RoPE) and whose
feed-forward is a GeGLU (``mlp.Wi`` holds the activated half first, then the gate, as our
``ff.fc1`` does); the first block's attention reads the embeddings' LayerNorm unnormalised
(``attn_norm`` is an Identity in layer 0: our ``first_attention_norm=False``); a final LayerNorm.
Every ``global_attn_every_n_layers``-th layer, layer 0 first, attends globally with RoPE base
``global_rope_theta``; the others attend within ``local_attention`` // 2 tokens each way with base
``local_rope_theta`` (our ``window``, ``global_every``, ``rope_base``, ``local_rope_base``).
Transformers 5 writes the same as ``layer_types`` and ``rope_parameters``; both spellings are
read, and both are written so that transformers 4.48+ reads the file too.

One ``bias`` of ours stands for ``attention_bias``, ``mlp_bias`` and ``norm_bias``, so a
checkpoint in which they differ is refused. Dropout: ours drops each sublayer's output at
``dropout``; ModernBERT drops the embeddings at ``embedding_dropout``, the attention's output
(and its probabilities) at ``attention_dropout`` and the feed-forward's hidden activations at
``mlp_dropout``, not its output. Those map onto ``dropout``, ``attention_dropout`` and
``ff_dropout`` and back, which is exact when ``embedding_dropout`` = ``attention_dropout`` = 0
(every published checkpoint) and otherwise differs in training only (never in eval outputs).

Its heads share ``ModernBertPredictionHead``: a dense layer (bias ``classifier_bias``),
``classifier_activation`` and a LayerNorm (bias ``norm_bias``); the masked-LM head adds the tied
embeddings plus a bias (``decoder_bias``); the classifiers dropout (``classifier_dropout``) and a
linear layer. The sequence classifier pools [CLS] or the mean of the real tokens
(``classifier_pooling``).
"""

from __future__ import annotations

from typing import Any

from encoderkit.models.config import TextConfig
from encoderkit.models.formats.base import Format, Task
from encoderkit.models.formats.bert import classification_keys
from encoderkit.models.formats.checkpoint import PretrainedError
from encoderkit.models.formats.hf_config import (
    config_errors,
    float_field,
    int_field,
    refuse,
    tied_word_embeddings,
)
from encoderkit.models.formats.keymap import KeyMap, weight_and_bias
from encoderkit.models.heads import HeadActivation, HeadConfig
from encoderkit.models.text import TextEncoder

KEYMAP = KeyMap(
    top={
        "embeddings.tokens.weight": "embeddings.tok_embeddings.weight",
        **weight_and_bias({"embeddings.norm": "embeddings.norm", "encoder.norm": "final_norm"}),
    },
    # Without bias our .bias entries are not built, so they are neither expected nor written;
    # layer 0 has no norm1 (an Identity), so its attn_norm is neither.
    layer=weight_and_bias(
        {
            "norm1": "attn_norm",
            "attn.qkv": "attn.Wqkv",  # [W^Q; W^K; W^V], (3D, D), our order
            "attn.proj": "attn.Wo",
            "norm2": "mlp_norm",
            "ff.fc1": "mlp.Wi",  # [W (activated); V (gate)], (2F, D), our order
            "ff.fc2": "mlp.Wo",
        }
    ),
    layer_prefix="layers",
    dropped=(),
    model_prefix="model.",
)

# hidden_activation -> our gated activation: the activated half of mlp.Wi times the gate
GATED = {"gelu": "geglu", "silu": "swiglu", "swish": "swiglu"}
GATED_TO_HF = {"geglu": "gelu", "swiglu": "silu"}
# classifier_activation -> our head's activation, and back
HEAD_ACTIVATIONS: dict[str, HeadActivation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "tanh": "tanh",
}
HEAD_ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu",
                          "tanh": "tanh"}  # fmt: skip
GLOBAL, LOCAL = "full_attention", "sliding_attention"
# transformers' defaults: RoPE bases and the window (local_attention) of ModernBERT's config
THETA = {GLOBAL: 160_000.0, LOCAL: 10_000.0}
WINDOW = 128


def bool_field(hf: dict[str, Any], key: str, default: bool) -> bool:
    value = hf.get(key, default)
    if not isinstance(value, bool):
        raise PretrainedError(f"config.json: {key} must be true or false, got {value!r}")
    return value


def choice_field(hf: dict[str, Any], key: str, default: str, choices: dict[str, Any]) -> Any:
    """Our name for config.json's ``key`` (one of ``choices``' keys)."""
    value = hf.get(key, default)
    if not isinstance(value, str) or value not in choices:
        raise PretrainedError(f"config.json: {key} must be one of {sorted(choices)}, got {value!r}")
    return choices[value]


def shared_bias(hf: dict[str, Any]) -> bool:
    """The one ``bias`` of ours that attention_bias, mlp_bias and norm_bias must agree on."""
    flags = {k: bool_field(hf, k, False) for k in ("attention_bias", "mlp_bias", "norm_bias")}
    if len(set(flags.values())) > 1:
        said = ", ".join(f"{k}={str(v).lower()}" for k, v in flags.items())
        raise PretrainedError(
            f"config.json: attention_bias, mlp_bias and norm_bias must be equal (encoderkit has "
            f"one bias flag for every Linear and LayerNorm), got {said}"
        )
    return next(iter(flags.values()))


def layer_pattern(hf: dict[str, Any], n_layers: int) -> tuple[bool, int]:
    """(whether any layer is local, global_every) from ``layer_types`` (transformers 5), else
    from ``global_attn_every_n_layers`` (default 3). Ours makes layer l global when
    l % global_every == 0 (global_every 0: none), so other patterns are refused."""
    every = hf.get("global_attn_every_n_layers")
    if every is not None:
        every = int_field(hf, "global_attn_every_n_layers")
    types = hf.get("layer_types")
    if types is None:
        n = 3 if every is None else every
        return n > 1 and n_layers > 1, n
    if (
        not isinstance(types, list)
        or len(types) != n_layers
        or any(t not in (GLOBAL, LOCAL) for t in types)
    ):
        raise PretrainedError(
            f"config.json: layer_types must list {n_layers} (num_hidden_layers) of "
            f"{GLOBAL!r} and {LOCAL!r}, got {types!r}"
        )
    is_global = [t == GLOBAL for t in types]
    if not any(is_global):
        return True, 0
    # the declared period if it gives this pattern, else the smallest one that can
    first = next((i for i in range(1, n_layers) if is_global[i]), n_layers)
    for period in (every, first):
        if period is not None and is_global == [i % period == 0 for i in range(n_layers)]:
            return not all(is_global), period
    raise PretrainedError(
        f"config.json: layer_types must make layer l global ({GLOBAL!r}) exactly when "
        f"l % n == 0 for some n (every n-th layer, layer 0 first), or none global; got {types}"
    )


def rope_bases(hf: dict[str, Any]) -> dict[str, float]:
    """The RoPE base of global and of local layers: ``rope_parameters`` (transformers 5), else
    ``global_rope_theta`` / ``local_rope_theta``. Only the default RoPE is supported."""
    scaling = hf.get("rope_scaling")
    if scaling is not None and not (
        isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default"
    ):
        raise PretrainedError(
            f"config.json: rope_scaling must be null (plain RoPE; scaled variants are not "
            f"supported), got {scaling!r}"
        )
    legacy = {GLOBAL: "global_rope_theta", LOCAL: "local_rope_theta"}
    params = hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise PretrainedError(
            f"config.json: rope_parameters must be an object of {GLOBAL!r} and {LOCAL!r} "
            f"parameters, got {params!r}"
        )
    bases = {}
    for kind, key in legacy.items():
        entry = params.get(kind) or {}
        if not isinstance(entry, dict) or (
            entry.get("rope_type", "default"),
            entry.get("partial_rotary_factor", 1.0),
        ) != ("default", 1.0):
            raise PretrainedError(
                f"config.json: rope_parameters[{kind!r}] must be the default RoPE over whole "
                f"heads (rope_type 'default', partial_rotary_factor 1.0), got {entry!r}"
            )
        name = f"rope_parameters[{kind!r}]['rope_theta']"
        theta = entry.get("rope_theta", hf.get(key, THETA[kind]))
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 1:
            raise PretrainedError(f"config.json: {name} must be a float > 1, got {theta!r}")
        bases[kind] = float(theta)
    return bases


def config_from_hf(hf: dict[str, Any], *, has_pooler: bool) -> TextConfig:
    """Our config from a ModernBERT config.json, with transformers' defaults for absent keys.
    ModernBERT has no pooler: ``has_pooler`` is not read."""
    n_layers = int_field(hf, "num_hidden_layers", 22)
    local, every = layer_pattern(hf, n_layers)
    bases = rope_bases(hf)
    bias = shared_bias(hf)
    pad = hf.get("pad_token_id", 50283)
    with config_errors():
        return TextConfig(
            d_model=int_field(hf, "hidden_size", 768),
            n_heads=int_field(hf, "num_attention_heads", 12),
            d_ff=int_field(hf, "intermediate_size", 1152),
            n_layers=n_layers,
            activation=choice_field(hf, "hidden_activation", "gelu", GATED),
            layer_norm_eps=float_field(hf, "norm_eps", 1e-5, probability=False),
            dropout=float_field(hf, "embedding_dropout", 0.0, probability=True),
            attention_dropout=float_field(hf, "attention_dropout", 0.0, probability=True),
            ff_dropout=float_field(hf, "mlp_dropout", 0.0, probability=True),
            bias=bias,
            norm_first=True,
            first_attention_norm=False,
            position_encoding="rotary",
            rope_base=bases[GLOBAL],
            local_rope_base=None if bases[LOCAL] == bases[GLOBAL] else bases[LOCAL],
            window=int_field(hf, "local_attention", WINDOW) if local else None,
            global_every=every if local else 0,
            vocab_size=int_field(hf, "vocab_size", 50368),
            # null: no padding row; ours must name one, and 0 only stops its gradient
            pad_token_id=0 if pad is None else int_field(hf, "pad_token_id", 50283, 0),
            max_positions=int_field(hf, "max_position_embeddings", 8192),
            type_vocab_size=0,
            pooler=False,
        )


def config_to_hf(config: TextConfig) -> dict[str, Any]:
    """The ModernBERT config.json of our config; refuses what ModernBERT cannot express."""
    reasons = []
    fixed = {"norm_first": True, "first_attention_norm": False, "position_encoding": "rotary",
             "type_vocab_size": 0, "pooler": False, "position_offset": 0,
             "embedding_size": None}  # fmt: skip
    for name, value in fixed.items():
        if getattr(config, name) != value:
            reasons.append(f"{name} must be {value!r} (got {getattr(config, name)!r})")
    if config.activation not in GATED_TO_HF:
        reasons.append(
            f"activation must be one of {sorted(GATED_TO_HF)} (got {config.activation!r})"
        )
    if config.bias and not config.qkv_bias:
        reasons.append("qkv_bias must be True when bias is (attention_bias covers Wqkv too)")
    refuse("ModernBERT", reasons)
    n = config.n_layers
    types = [LOCAL if config.is_local(i) else GLOBAL for i in range(n)]
    local_base = config.rope_base if config.local_rope_base is None else config.local_rope_base
    # transformers 4's spelling of the pattern; all-local layers have none (5 reads layer_types)
    every = {} if config.window is not None and config.global_every == 0 else {
        "global_attn_every_n_layers": config.global_every if config.window is not None else 1
    }  # fmt: skip
    return {
        "model_type": "modernbert",
        "architectures": ["ModernBertModel"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": n,
        "num_attention_heads": config.n_heads,
        "hidden_activation": GATED_TO_HF[config.activation],
        "max_position_embeddings": config.max_positions,
        "norm_eps": config.layer_norm_eps,
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "norm_bias": config.bias,
        "embedding_dropout": config.dropout,
        "attention_dropout": config.attention_dropout,
        "mlp_dropout": config.ff_dropout,
        "pad_token_id": config.pad_token_id,
        "local_attention": WINDOW if config.window is None else config.window,
        "layer_types": types,
        **every,
        "rope_parameters": {
            GLOBAL: {"rope_type": "default", "rope_theta": config.rope_base},
            LOCAL: {"rope_type": "default", "rope_theta": local_base},
        },
        "global_rope_theta": config.rope_base,  # transformers 4's spelling
        "local_rope_theta": local_base,
        "initializer_range": 0.02,
    }


def prediction_head(hf: dict[str, Any]) -> dict[str, Any]:
    """ModernBertPredictionHead as HeadConfig fields: dense (bias classifier_bias), the
    classifier_activation, LayerNorm (bias norm_bias, eps norm_eps: the encoder's)."""
    return {
        "dense": True,
        "activation": choice_field(hf, "classifier_activation", "gelu", HEAD_ACTIVATIONS),
        "norm": True,
        "dense_bias": bool_field(hf, "classifier_bias", False),
        "norm_bias": bool_field(hf, "norm_bias", False),
    }


def prediction_head_to_hf(head: HeadConfig) -> dict[str, Any]:
    """The head's own fields (norm_bias is the encoder's, written with it; a head whose norm
    bias differs reads back otherwise and is refused)."""
    return {
        "classifier_activation": HEAD_ACTIVATIONS_TO_HF[head.activation],
        "classifier_bias": head.dense_bias,
    }


def classifier_head(hf: dict[str, Any]) -> HeadConfig:
    """The prediction head, dropout at classifier_dropout (default 0), then the classifier."""
    return HeadConfig(
        **prediction_head(hf),
        dropout=float_field(hf, "classifier_dropout", 0.0, probability=True),
    )


def classifier_head_to_hf(head: HeadConfig) -> dict[str, Any]:
    # config.json has no "the encoder's dropout": None is written as 0, and saving refuses the
    # head unless the encoder's dropout is 0 too
    dropout = 0.0 if head.dropout is None else head.dropout
    return prediction_head_to_hf(head) | {"classifier_dropout": dropout}


def masked_lm_head(hf: dict[str, Any]) -> HeadConfig:
    """The prediction head, then the tied embeddings plus a bias (decoder_bias)."""
    tied_word_embeddings(hf)
    return HeadConfig(**prediction_head(hf), output_bias=bool_field(hf, "decoder_bias", True))


def masked_lm_head_to_hf(head: HeadConfig) -> dict[str, Any]:
    return prediction_head_to_hf(head) | {"decoder_bias": head.output_bias}


HEAD_KEYS = weight_and_bias({"head.transform.dense": "head.dense",
                             "head.transform.norm": "head.norm"})  # fmt: skip

TASKS = (
    Task(
        "ModernBertForMaskedLM",
        "masked_lm",
        {**HEAD_KEYS, "head.bias": "decoder.bias"},
        masked_lm_head,
        masked_lm_head_to_hf,
        dropped=(r"decoder\.weight",),  # the tied embedding table
    ),
    Task(
        "ModernBertForSequenceClassification",
        "sequence_classification",
        {**HEAD_KEYS, **classification_keys("classifier")},
        classifier_head,
        classifier_head_to_hf,
        pooling_field="classifier_pooling",  # "cls" or "mean" of the real tokens
    ),
    Task(
        "ModernBertForTokenClassification",
        "token_classification",
        {**HEAD_KEYS, **classification_keys("classifier")},
        classifier_head,
        classifier_head_to_hf,
    ),
)

FORMAT = Format(
    model_type="modernbert",
    keymap=KEYMAP,
    config=TextConfig,
    model=TextEncoder,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    name="ModernBERT",
    base_architecture="ModernBertModel",
    tasks=TASKS,
)
