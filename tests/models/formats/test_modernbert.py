"""ModernBERT checkpoints made by transformers (random, every parameter perturbed), bare and with
each task head, in two configurations (transformers' defaults: no biases, GELU, [CLS]; and one
with every bias, SiLU, a ReLU head, mean pooling, no decoder bias and other RoPE bases): loaded
with outputs equal to transformers' on a right-padded batch and an unpadded one, padding-free and
padded, saved back to files the same transformers class loads key for key with the same outputs,
the tied decoder, the older config.json spelling, and errors that name the field or key.

Local layers matter here: a window of 6 (3 tokens each way) on sequences of up to 16 tokens, and
every second layer global, so a wrong window, pattern or RoPE base moves the outputs.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from models.formats.helpers import (
    assert_same_weights,
    edited_copy,
    encoder_of,
    loads_cleanly,
    max_difference_to,
    padded_ids,
    perturbed,
    read_config,
    saved_reference,
    tensor_names,
)
from safetensors.torch import load_file, save_file

from encoderkit import PretrainedError, TextConfig, TextEncoder, load_pretrained, save_pretrained
from encoderkit.models.formats import modernbert
from encoderkit.models.heads import HeadConfig, MaskedLM, SequenceClassifier, TokenClassifier

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")
logging.getLogger("transformers").setLevel(logging.ERROR)

ATOL = 1e-5
LABELS = ["negative", "neutral", "positive"]
CLASSES = {
    "ModernBertModel": TextEncoder,
    "ModernBertForMaskedLM": MaskedLM,
    "ModernBertForSequenceClassification": SequenceClassifier,
    "ModernBertForTokenClassification": TokenClassifier,
}
VARIANTS = {
    "plain": {},  # transformers' defaults: no biases, GELU, [CLS] pooling
    "mean": dict(classifier_pooling="mean", classifier_dropout=0.2),
    "variant": dict(
        attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True,
        hidden_activation="silu", classifier_activation="relu", decoder_bias=False,
        classifier_pooling="mean", global_attn_every_n_layers=3, local_attention=4,
        global_rope_theta=500.0, local_rope_theta=40.0, norm_eps=1e-6,
    ),
}  # fmt: skip
CASES = [(name, v) for name in CLASSES for v in ("plain", "variant")]
CASES.append(("ModernBertForSequenceClassification", "mean"))


def hf_config(**changes):
    """A 3-layer ModernBERT, layers 0 and 2 global, layer 1 local with a window of 6."""
    fields = dict(
        vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, global_attn_every_n_layers=2, local_attention=6, pad_token_id=0,
        max_position_embeddings=64, id2label=dict(enumerate(LABELS)),
        attn_implementation="eager",
    )  # fmt: skip
    return transformers.ModernBertConfig(**(fields | changes))


# By 0.2, not the 0.3 of the post-norm families: a pre-norm residual stream grows, and at 0.3 the
# logits reach 5 and fp32 rounding alone (ours in float32 against ours in float64) reaches 1e-5.
SCALE = 0.2


def batches():
    """A right-padded batch (lengths 16, 11, 3, padded with the pad id 0) and an unpadded one."""
    full = torch.randint(1, 60, (2, 13), generator=torch.Generator().manual_seed(3))
    return [padded_ids([16, 11, 3], 16, vocab=60), (full, None)]


def worst(theirs, ours):
    """The largest difference of their outputs and ours over both batches, over real tokens
    where per token (transformers leaves padded positions unspecified)."""
    return max(max_difference_to(theirs, ours, ids, mask) for ids, mask in batches())


def rebuilt(model, **changes):
    """``model`` with its encoder's config changed (padding_free, attention_backend), same
    weights."""
    config = dataclasses.replace(encoder_of(model).config, **changes)
    if isinstance(model, TextEncoder):
        new = TextEncoder(config)
    elif isinstance(model, MaskedLM):
        new = MaskedLM(config, head=model.head_config)
    elif isinstance(model, SequenceClassifier):
        n = model.head.fc.out_features
        new = SequenceClassifier(config, n, model.pooling, head=model.head_config)
    else:
        new = TokenClassifier(config, model.head.fc.out_features, head=model.head_config)
    new.load_state_dict(model.state_dict())
    return new.eval()


def save_theirs(name, variant, directory):
    config = hf_config(**VARIANTS[variant])
    return saved_reference(getattr(transformers, name), config, directory, scale=SCALE)


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{v}" for n, v in CASES])
def checkpoint(request, tmp_path_factory):
    """A perturbed transformers model of each class and variant, and the directory it saved
    itself to."""
    name, variant = request.param
    directory = tmp_path_factory.mktemp(f"{name}-{variant}")
    return save_theirs(name, variant, directory), directory


def test_loads_with_outputs_equal_to_transformers(checkpoint):
    theirs, directory = checkpoint
    ours = load_pretrained(directory)
    assert type(ours) is CLASSES[type(theirs).__name__]
    c, hf = encoder_of(ours).config, theirs.config
    assert (c.position_encoding, c.norm_first, c.first_attention_norm) == ("rotary", True, False)
    assert c.window == hf.local_attention and c.type_vocab_size == 0
    assert [c.is_local(i) for i in range(3)] == [t == "sliding_attention" for t in hf.layer_types]
    assert c.rope_base == hf.rope_parameters["full_attention"]["rope_theta"]
    assert c.local_rope_base == hf.rope_parameters["sliding_attention"]["rope_theta"]
    assert (
        c.bias == hf.norm_bias
        and c.activation == {"gelu": "geglu", "silu": "swiglu"}[hf.hidden_activation]
    )
    assert worst(theirs, ours) <= ATOL
    if isinstance(ours, SequenceClassifier):
        assert ours.pooling == hf.classifier_pooling and ours.labels == tuple(LABELS)
        assert ours.head_config.dropout == hf.classifier_dropout
    if not isinstance(ours, TextEncoder):
        assert ours.head_config.dense_bias == hf.classifier_bias
        assert ours.head_config.norm_bias == hf.norm_bias


def test_padded_and_math_paths_equal_transformers_too(checkpoint):
    theirs, directory = checkpoint
    ours = load_pretrained(directory)
    assert encoder_of(ours).config.padding_free  # the default, tested above
    assert worst(theirs, rebuilt(ours, padding_free=False)) <= ATOL
    # local layers written out as a band mask over the whole sequence
    assert worst(theirs, rebuilt(ours, padding_free=False, attention_backend="math")) <= ATOL


def test_padded_positions_of_the_encoder_are_zero(checkpoint):
    ours = load_pretrained(checkpoint[1], head=False)
    (ids, mask), _ = batches()
    with torch.no_grad():
        assert (ours(ids, mask)[~mask] == 0).all()


def test_saved_back_the_same_transformers_class_has_the_same_outputs(checkpoint, tmp_path):
    theirs, directory = checkpoint
    ours = load_pretrained(directory)
    save_pretrained(ours, tmp_path)  # ModernBERT by default: BERT refuses rotary positions
    written = read_config(tmp_path)
    assert (written["model_type"], written["architectures"]) == (
        "modernbert", [type(theirs).__name__],
    )  # fmt: skip
    # the same tensors under the same names as transformers' own file
    assert tensor_names(tmp_path) == tensor_names(directory)
    back = loads_cleanly(type(theirs), tmp_path)  # nothing missing, unexpected or mismatched
    assert back.config.layer_types == theirs.config.layer_types
    assert back.config.rope_parameters == theirs.config.rope_parameters
    keys = ["local_attention", "norm_bias", "hidden_activation", "norm_eps"]
    if not isinstance(ours, TextEncoder):  # the head's fields: written by task classes only
        keys += ["classifier_activation", "classifier_bias"]
    keys += {MaskedLM: ["decoder_bias"], SequenceClassifier: ["classifier_pooling"]}.get(
        type(ours), []
    )
    for key in keys:
        assert getattr(back.config, key) == getattr(theirs.config, key), key
    assert worst(back, ours) <= ATOL
    if isinstance(ours, (SequenceClassifier, TokenClassifier)):
        assert back.config.id2label == dict(enumerate(LABELS))
        assert back.config.classifier_dropout == theirs.config.classifier_dropout
    again = load_pretrained(tmp_path)  # and ours reads its own file back, tensor for tensor
    assert type(again) is type(ours) and encoder_of(again).config == encoder_of(ours).config
    assert_same_weights(ours, again)


def test_head_false_gives_the_encoder_of_any_checkpoint(checkpoint):
    theirs, directory = checkpoint
    ours = load_pretrained(directory, head=False)
    assert type(ours) is TextEncoder
    base = theirs.base_model if theirs.base_model is not theirs else theirs
    assert worst(base, ours) <= ATOL


@pytest.fixture(scope="module", params=["plain", "variant"])
def masked_lm(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"mlm-{request.param}")
    return save_theirs("ModernBertForMaskedLM", request.param, directory), directory


def test_masked_lm_decoder_is_the_embedding_table(masked_lm):
    theirs, directory = masked_lm
    ours = load_pretrained(directory)
    assert (ours.head.bias is not None) == theirs.config.decoder_bias
    # one parameter: as many as transformers counts with its ties, none for a decoder weight
    assert sum(p.numel() for p in ours.parameters()) == theirs.num_parameters()
    assert not any("decoder" in name for name, _ in ours.named_parameters())
    (ids, mask), _ = batches()
    table = ours.encoder.embeddings.tokens.weight
    with torch.no_grad():
        before = ours(ids, mask)
        table[5].add_(1.0)  # moving a token's embedding moves its logit at every position
        after = ours(ids, mask)
        table[5].sub_(1.0)
    assert (after[mask][:, 5] - before[mask][:, 5]).abs().min() > 0


@pytest.mark.parametrize("variant", ["plain", "variant"])
def test_sdpa_and_eager_transformers_agree_with_ours(variant, tmp_path):
    eager = save_theirs("ModernBertModel", variant, tmp_path)
    sdpa = transformers.ModernBertModel.from_pretrained(tmp_path, attn_implementation="sdpa")
    ours = load_pretrained(tmp_path)
    assert worst(eager, ours) <= ATOL and worst(sdpa.eval(), ours) <= ATOL


# ---- the local layers, RoPE bases and spellings matter -----------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    directory = tmp_path_factory.mktemp("modernbert-plain")
    return save_theirs("ModernBertModel", "plain", directory), directory


def test_without_the_window_or_with_one_base_the_outputs_differ(plain):
    theirs, directory = plain
    ours = load_pretrained(directory)
    assert worst(theirs, rebuilt(ours, window=None)) > 1e-2
    assert worst(theirs, rebuilt(ours, local_rope_base=None)) > 1e-2
    assert worst(theirs, rebuilt(ours, global_every=3)) > 1e-2


def test_the_older_spelling_of_the_pattern_and_bases_loads_alike(plain, tmp_path):
    """transformers 4's config.json: global_attn_every_n_layers, global_rope_theta and
    local_rope_theta, without layer_types and rope_parameters (and, as ModernBERT-base's,
    a stray position_embedding_type that nothing reads)."""
    _, directory = plain
    hf = read_config(directory)
    del hf["layer_types"], hf["rope_parameters"]
    hf |= {"global_attn_every_n_layers": 3, "global_rope_theta": 500.0,
           "local_rope_theta": 40.0, "position_embedding_type": "absolute"}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(hf))
    save_file(load_file(directory / "model.safetensors"), tmp_path / "model.safetensors")
    legacy = transformers.ModernBertModel.from_pretrained(tmp_path).eval()
    assert legacy.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    ours = load_pretrained(tmp_path)
    c = ours.config
    assert (c.global_every, c.rope_base, c.local_rope_base) == (3, 500.0, 40.0)
    assert worst(legacy, ours) <= ATOL


@pytest.mark.parametrize(
    ("changes", "local"),
    [
        (dict(window=4, global_every=0), [True, True, True]),  # every layer local
        (dict(window=None, global_every=0), [False, False, False]),  # none
        (dict(window=5, global_every=3, local_rope_base=None), [False, True, True]),
    ],
)
def test_our_own_models_save_to_files_transformers_computes_alike(tmp_path, changes, local):
    fields = dict(
        d_model=32, n_heads=4, d_ff=40, n_layers=3, vocab_size=60, max_positions=64,
        dropout=0.0, attention_dropout=0.0, activation="geglu", norm_first=True, bias=False,
        position_encoding="rotary", rope_base=300.0, local_rope_base=20.0,
        first_attention_norm=False, type_vocab_size=0,
    )  # fmt: skip
    config = TextConfig(**(fields | changes))
    assert [config.is_local(i) for i in range(3)] == local
    torch.manual_seed(0)
    ours = perturbed(TextEncoder(config), scale=SCALE)
    save_pretrained(ours, tmp_path)
    theirs = loads_cleanly(transformers.ModernBertModel, tmp_path)
    types = ["sliding_attention" if x else "full_attention" for x in local]
    assert theirs.config.layer_types == types
    assert worst(theirs, ours) <= ATOL
    assert modernbert.config_from_hf(
        read_config(tmp_path), has_pooler=False
    ) == dataclasses.replace(
        config,
        local_rope_base=None if config.local_rope_base == 300.0 else config.local_rope_base,
        window=config.window if any(local) else None,
    )


# ---- what is refused, and how it is named --------------------------------------------------


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("modernbert-classifier")
    save_theirs("ModernBertForSequenceClassification", "plain", directory)
    return directory


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"hidden_activation": "gelu_pytorch_tanh"},
            r"hidden_activation must be one of \['gelu', 'silu', 'swish'\], got "
            r"'gelu_pytorch_tanh'",
        ),
        (
            {"attention_bias": True},
            "attention_bias, mlp_bias and norm_bias must be equal .* got attention_bias=true, "
            "mlp_bias=false, norm_bias=false",
        ),
        (
            {"layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
            "layer_types must make layer l global",
        ),
        ({"layer_types": ["full_attention"]}, r"layer_types must list 3 \(num_hidden_layers\)"),
        (
            {"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0}}},
            r"rope_parameters\['full_attention'\] must be the default RoPE",
        ),
        ({"classifier_activation": "silu"}, r"classifier_activation must be one of \['gelu', "),
        ({"classifier_bias": "no"}, "classifier_bias must be true or false, got 'no'"),
        ({"classifier_pooling": "max"}, "classifier_pooling must be 'cls' or 'mean', got 'max'"),
        ({"local_attention": 0}, "local_attention must be a positive int, got 0"),
        ({"pad_token_id": 60}, r"pad_token_id must lie in \[0, vocab_size=60\), got 60"),
    ],
)
def test_config_values_it_cannot_read_name_the_field(classifier_dir, tmp_path, changes, message):
    edited_copy(classifier_dir, tmp_path, config=changes)
    with pytest.raises(PretrainedError, match=message):
        load_pretrained(tmp_path)


def test_an_untied_decoder_is_refused(masked_lm, tmp_path):
    edited_copy(masked_lm[1], tmp_path, config={"tie_word_embeddings": False})
    with pytest.raises(PretrainedError, match="tie_word_embeddings must be true"):
        load_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_named(classifier_dir, tmp_path):
    def edit(tensors):
        del tensors["model.layers.1.attn_norm.weight"]
        tensors["model.layers.0.attn_norm.weight"] = torch.ones(32)  # layer 0 has none
        return tensors

    edited_copy(classifier_dir, tmp_path, weights=edit)
    with pytest.raises(PretrainedError) as error:
        load_pretrained(tmp_path)
    message = str(error.value)
    assert "missing layers.1.attn_norm.weight (for encoder.encoder.blocks.1.norm1" in message
    assert "unexpected keys, used by nothing: layers.0.attn_norm.weight" in message


def test_save_refuses_what_modernbert_cannot_express(classifier_dir, tmp_path):
    config = load_pretrained(classifier_dir).encoder.config
    with pytest.raises(ValueError) as error:
        modernbert.config_to_hf(
            dataclasses.replace(
                config,
                position_encoding="learned",
                first_attention_norm=True,
                type_vocab_size=2,
                activation="gelu",
            )
        )
    assert str(error.value) == (
        "this model cannot be written in the ModernBERT format: first_attention_norm must be "
        "False (got True); position_encoding must be 'rotary' (got 'learned'); type_vocab_size "
        "must be 0 (got 2); activation must be one of ['geglu', 'swiglu'] (got 'gelu')"
    )
    # a head ModernBertForSequenceClassification does not have: BERT's plain linear one
    model = SequenceClassifier(config, 3, head=HeadConfig(dropout=0.0))
    with pytest.raises(ValueError, match="cannot be written as ModernBertForSequenceClassific"):
        save_pretrained(model, tmp_path)
    assert not any(tmp_path.iterdir())
