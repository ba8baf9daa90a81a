"""DistilBERT checkpoints made by transformers (random, every parameter perturbed), bare and with
each task head: loaded with outputs equal to transformers' on a right-padded batch, saved back to
files the same transformers class loads with the same outputs, and errors that name the field
or key."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from reference import padding_mask
from safetensors.torch import load_file, save_file

from encoderkit import PretrainedError, TextEncoder, load_pretrained, save_pretrained
from encoderkit.layers.positions import SinusoidalPositionalEncoding
from encoderkit.models.formats import distilbert
from encoderkit.models.heads import HeadConfig, MaskedLM, SequenceClassifier, TokenClassifier

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")
logging.getLogger("transformers").setLevel(logging.ERROR)

ATOL = 1e-5
LABELS = ["negative", "neutral", "positive"]
# transformers class -> ours; relu and seq_classif_dropout 0.3 so that neither is a default
CASES = {
    "DistilBertModel": TextEncoder,
    "DistilBertForSequenceClassification": SequenceClassifier,
    "DistilBertForTokenClassification": TokenClassifier,
    "DistilBertForMaskedLM": MaskedLM,
}


def hf_config(**changes):
    return transformers.DistilBertConfig(
        vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=24,
        activation="relu", seq_classif_dropout=0.3, id2label=dict(enumerate(LABELS)),
        attn_implementation="eager", **changes,
    )  # fmt: skip


def perturbed(model):
    """Every parameter off its init (LayerNorms 1 / 0, zero biases), so a swapped or missed
    tensor shows in the outputs; in eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def batch():
    """A right-padded batch, lengths 11, 7 and 2, padded with the pad id 0."""
    mask = padding_mask([11, 7, 2], 11)
    ids = torch.randint(1, 99, (3, 11), generator=torch.Generator().manual_seed(2))
    return ids.masked_fill(~mask, 0), mask


def worst(theirs, ours):
    """The largest difference of their output and ours, over real tokens where per token."""
    ids, mask = batch()
    with torch.no_grad():
        out = theirs(input_ids=ids, attention_mask=mask.long())
        ref = out.logits if hasattr(out, "logits") else out.last_hidden_state
        got = ours(ids, mask)
    assert got.shape == ref.shape
    if ref.dim() == 3:
        got, ref = got[mask], ref[mask]
    return (got - ref).abs().max().item()


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    """A perturbed transformers model of each class, and the directory it saved itself to."""
    torch.manual_seed(0)
    theirs = perturbed(getattr(transformers, request.param)(hf_config()))
    directory = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(directory)
    return theirs, directory


def test_loads_with_outputs_equal_to_transformers(checkpoint):
    theirs, directory = checkpoint
    ours = load_pretrained(directory)
    assert type(ours) is CASES[type(theirs).__name__]
    encoder = ours if isinstance(ours, TextEncoder) else ours.encoder
    c = encoder.config
    assert (c.d_model, c.n_heads, c.d_ff, c.n_layers, c.activation) == (32, 4, 37, 2, "relu")
    assert (c.type_vocab_size, c.layer_norm_eps, c.norm_first, encoder.pooler) == (
        0, 1e-12, False, None,
    )  # fmt: skip
    assert worst(theirs, ours) <= ATOL
    if isinstance(ours, SequenceClassifier):
        assert ours.head_config == HeadConfig(dense=True, activation="relu", dropout=0.3)
        assert ours.labels == tuple(LABELS)
    if isinstance(ours, MaskedLM):  # the vocab_transform takes the encoder's activation
        assert ours.head_config == HeadConfig(dense=True, activation="relu", norm=True)
        # tied: no decoder weight of its own, as many parameters as transformers counts
        assert sum(p.numel() for p in ours.parameters()) == theirs.num_parameters()


def test_padded_positions_of_the_encoder_are_zero(checkpoint):
    ours = load_pretrained(checkpoint[1], head=False)
    ids, mask = batch()
    with torch.no_grad():
        assert (ours(ids, mask)[~mask] == 0).all()


def test_saved_back_the_same_transformers_class_has_the_same_outputs(checkpoint, tmp_path):
    theirs, directory = checkpoint
    ours = load_pretrained(directory)
    save_pretrained(ours, tmp_path)  # DistilBERT by default: BERT refuses no segments
    written = json.loads((tmp_path / "config.json").read_text())
    assert (written["model_type"], written["architectures"]) == (
        "distilbert", [type(theirs).__name__],
    )  # fmt: skip
    back, info = type(theirs).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert worst(back.eval(), ours) <= ATOL
    if isinstance(ours, SequenceClassifier):
        assert back.config.seq_classif_dropout == 0.3
        assert back.config.id2label == dict(enumerate(LABELS))
    again = load_pretrained(tmp_path)  # and ours reads its own file back, tensor for tensor
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_sinusoidal_table_loads_as_the_learned_one_it_is_stored_as(tmp_path):
    torch.manual_seed(0)
    theirs = transformers.DistilBertModel(hf_config(sinusoidal_pos_embds=True)).eval()
    theirs.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.config.position_encoding == "learned"
    table = theirs.embeddings.position_embeddings.weight
    assert torch.equal(ours.embeddings.positions.weight, table)
    # Vaswani et al.'s table (interleaved sin / cos), held as weights
    assert torch.equal(table, SinusoidalPositionalEncoding(32, 24).table)
    assert worst(theirs, ours) <= ATOL
    save_pretrained(ours, tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text())["sinusoidal_pos_embds"] is (
        False  # the same table, now stored as learned: transformers reads it as it is
    )
    assert worst(transformers.DistilBertModel.from_pretrained(tmp_path / "back").eval(), ours) <= (
        ATOL
    )


# ---- what is refused, and how it is named --------------------------------------------------


@pytest.fixture(scope="module")
def distil_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("distilbert_plain")
    perturbed(transformers.DistilBertModel(hf_config())).save_pretrained(directory)
    return directory


def edited_copy(source, target, config=None, weights=None):
    """``source``'s checkpoint in ``target``, config.json updated by ``config`` and the tensors
    passed through ``weights``."""
    hf = json.loads((source / "config.json").read_text()) | (config or {})
    (target / "config.json").write_text(json.dumps(hf))
    tensors = load_file(source / "model.safetensors")
    save_file(weights(tensors) if weights else tensors, target / "model.safetensors")
    return target


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("activation", "silu", r"activation must be one of \['gelu', .*got 'silu'"),
        ("sinusoidal_pos_embds", "yes", "sinusoidal_pos_embds must be a bool, got 'yes'"),
        ("dim", 0, "dim must be a positive int, got 0"),
        ("hidden_dim", "37", "hidden_dim must be a positive int, got '37'"),
        ("dropout", 1.5, r"dropout must be a float in \[0, 1\), got 1.5"),
        ("n_heads", 5, "d_model must be divisible by n_heads, got d_model=32 and n_heads=5"),
    ],
)
def test_config_values_it_cannot_read_name_the_field(distil_dir, tmp_path, key, value, message):
    edited_copy(distil_dir, tmp_path, config={key: value})
    with pytest.raises(PretrainedError, match=message):
        load_pretrained(tmp_path)


def test_a_head_config_value_it_cannot_read_names_the_field(distil_dir, tmp_path):
    config = {"architectures": ["DistilBertForMaskedLM"], "tie_word_embeddings": False}
    edited_copy(distil_dir, tmp_path, config=config)
    with pytest.raises(PretrainedError, match="tie_word_embeddings must be true"):
        load_pretrained(tmp_path)
    edited_copy(distil_dir, tmp_path, config={"architectures": ["DistilBertForQuestionAnswering"]})
    with pytest.raises(PretrainedError, match="'DistilBertForQuestionAnswering' is not supported"):
        load_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_named(distil_dir, tmp_path):
    def edit(tensors):
        del tensors["transformer.layer.1.attention.k_lin.weight"]
        tensors["embeddings.token_type_embeddings.weight"] = torch.zeros(2, 32)
        return tensors

    edited_copy(distil_dir, tmp_path, weights=edit)
    with pytest.raises(PretrainedError) as error:
        load_pretrained(tmp_path)
    message = str(error.value)
    assert "missing transformer.layer.1.attention.k_lin.weight (for encoder.blocks.1.attn" in (
        message
    )
    assert "unexpected keys, used by nothing: embeddings.token_type_embeddings.weight" in message


def test_save_refuses_what_distilbert_cannot_express(distil_dir, tmp_path):
    config = load_pretrained(distil_dir).config
    with pytest.raises(ValueError) as error:
        distilbert.config_to_hf(
            dataclasses.replace(config, layer_norm_eps=1e-6, norm_first=True, pooler=True)
        )
    assert str(error.value) == (
        "this model cannot be written in the DistilBERT format: norm_first must be False; "
        "layer_norm_eps must be 1e-12 (DistilBERT's, fixed; got 1e-06); pooler must be False "
        "(DistilBERT has none)"
    )
    # a head DistilBertForSequenceClassification does not have: ELECTRA's GELU one
    model = SequenceClassifier(config, 3, head=HeadConfig(dense=True, activation="gelu"))
    with pytest.raises(
        ValueError, match="cannot be written as DistilBertForSequenceClassification"
    ):
        save_pretrained(model, tmp_path, model_type="distilbert")
    assert not any(tmp_path.iterdir())
