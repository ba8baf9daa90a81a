"""DistilBERT checkpoints made by transformers (random, every parameter perturbed), bare and with
each task head: loaded with outputs equal to transformers' on a right-padded batch, saved back to
files the same transformers class loads with the same outputs, and errors that name the field
or key."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from models.formats.helpers import (
    assert_same_weights,
    edited_copy,
    encoder_of,
    loads_cleanly,
    max_difference_to,
    padded_batch,
    read_config,
    saved_reference,
)

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


def worst(theirs, ours):
    """The largest difference of their output and ours on the right-padded batch (lengths 11, 7
    and 2), over real tokens where per token; DistilBERT reads no segments."""
    ids, mask, _ = padded_batch()
    return max_difference_to(theirs, ours, ids, mask)


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    """A perturbed transformers model of each class, and the directory it saved itself to."""
    directory = tmp_path_factory.mktemp(request.param)
    return saved_reference(getattr(transformers, request.param), hf_config(), directory), directory


def test_loads_with_outputs_equal_to_transformers(checkpoint):
    theirs, directory = checkpoint
    ours = load_pretrained(directory)
    assert type(ours) is CASES[type(theirs).__name__]
    encoder = encoder_of(ours)
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
    ids, mask, _ = padded_batch()
    with torch.no_grad():
        assert (ours(ids, mask)[~mask] == 0).all()


def test_saved_back_the_same_transformers_class_has_the_same_outputs(checkpoint, tmp_path):
    theirs, directory = checkpoint
    ours = load_pretrained(directory)
    save_pretrained(ours, tmp_path)  # DistilBERT by default: BERT refuses no segments
    written = read_config(tmp_path)
    assert (written["model_type"], written["architectures"]) == (
        "distilbert", [type(theirs).__name__],
    )  # fmt: skip
    back = loads_cleanly(type(theirs), tmp_path)  # nothing missing, unexpected or mismatched
    assert worst(back, ours) <= ATOL
    if isinstance(ours, SequenceClassifier):
        assert back.config.seq_classif_dropout == 0.3
        assert back.config.id2label == dict(enumerate(LABELS))
    assert_same_weights(ours, load_pretrained(tmp_path))  # ours reads its own file back


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
    # the same table, now stored as learned: transformers reads it as it is
    assert read_config(tmp_path / "back")["sinusoidal_pos_embds"] is False
    assert worst(transformers.DistilBertModel.from_pretrained(tmp_path / "back").eval(), ours) <= (
        ATOL
    )


# ---- what is refused, and how it is named --------------------------------------------------


@pytest.fixture(scope="module")
def distil_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("distilbert_plain")
    saved_reference(transformers.DistilBertModel, hf_config(), directory)
    return directory


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
