"""ELECTRA checkpoints made by transformers (random, every parameter perturbed), bare and with
each task head, with an embedding projection (embedding_size 16 < hidden_size 32) and without:
loaded with outputs equal to transformers' on a right-padded batch, saved back to files the same
transformers class loads with the same outputs, the discriminator's encoder, and errors that
name the field or key."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from models.formats.helpers import (
    TEXT_SIZE,
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
from encoderkit.models.formats import electra
from encoderkit.models.heads import HeadConfig, MaskedLM, SequenceClassifier, TokenClassifier

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")
logging.getLogger("transformers").setLevel(logging.ERROR)

ATOL = 1e-5
LABELS = ["negative", "neutral", "positive"]
CLASSES = {
    "ElectraModel": TextEncoder,
    "ElectraForSequenceClassification": SequenceClassifier,
    "ElectraForTokenClassification": TokenClassifier,
    "ElectraForMaskedLM": MaskedLM,
}
CASES = [(name, width) for name in CLASSES for width in (16, 32)]


def hf_config(embedding_size=16, **changes):
    return transformers.ElectraConfig(
        vocab_size=99, embedding_size=embedding_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=37, max_position_embeddings=24,
        hidden_act="gelu_new", classifier_dropout=0.2, id2label=dict(enumerate(LABELS)),
        attn_implementation="eager", **changes,
    )  # fmt: skip


def worst(theirs, ours):
    """The largest difference of their output and ours on the right-padded batch (lengths 11, 7
    and 2, two segments), over real tokens where per token."""
    return max_difference_to(theirs, ours, *padded_batch())


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{w}" for n, w in CASES])
def checkpoint(request, tmp_path_factory):
    """A perturbed transformers model of each class and embedding size, and the directory it
    saved itself to."""
    name, width = request.param
    directory = tmp_path_factory.mktemp(name)
    return saved_reference(getattr(transformers, name), hf_config(width), directory), directory


def test_loads_with_outputs_equal_to_transformers(checkpoint):
    theirs, directory = checkpoint
    ours = load_pretrained(directory)
    assert type(ours) is CLASSES[type(theirs).__name__]
    encoder = encoder_of(ours)
    width = theirs.config.embedding_size
    assert encoder.config.embedding_size == width and encoder.pooler is None
    assert (encoder.embed_proj is None) == (width == 32)
    assert encoder.config.activation == "gelu_tanh"
    assert worst(theirs, ours) <= ATOL
    if isinstance(ours, SequenceClassifier):
        head = HeadConfig(dense=True, activation="gelu", input_dropout=True, dropout=0.2)
        assert ours.head_config == head and ours.labels == tuple(LABELS)
    if isinstance(ours, MaskedLM):  # the generator's head: exact GELU whatever hidden_act says
        assert ours.head_config == HeadConfig(dense=True, activation="gelu", norm=True)
        assert ours.head.transform.dense.out_features == width
        # tied: no decoder weight of its own, as many parameters as transformers counts
        assert sum(p.numel() for p in ours.parameters()) == theirs.num_parameters()


def test_padded_positions_of_the_encoder_are_zero(checkpoint):
    ours = load_pretrained(checkpoint[1], head=False)
    ids, mask, segments = padded_batch()
    with torch.no_grad():
        assert (ours(ids, mask, segments)[~mask] == 0).all()


def test_saved_back_the_same_transformers_class_has_the_same_outputs(checkpoint, tmp_path):
    theirs, directory = checkpoint
    ours = load_pretrained(directory)
    save_pretrained(ours, tmp_path)  # ELECTRA by default: BERT refuses an embedding_size
    written = read_config(tmp_path)
    assert (written["model_type"], written["architectures"]) == (
        "electra", [type(theirs).__name__],
    )  # fmt: skip
    assert written["embedding_size"] == theirs.config.embedding_size
    back = loads_cleanly(type(theirs), tmp_path)  # nothing missing, unexpected or mismatched
    assert worst(back, ours) <= ATOL
    if isinstance(ours, SequenceClassifier):
        assert back.config.classifier_dropout == 0.2
        assert back.config.id2label == dict(enumerate(LABELS))
    assert_same_weights(ours, load_pretrained(tmp_path))  # ours reads its own file back


def test_the_discriminator_loads_its_encoder_with_head_false(tmp_path):
    theirs = saved_reference(transformers.ElectraForPreTraining, hf_config(), tmp_path)
    with pytest.raises(PretrainedError) as error:
        load_pretrained(tmp_path)
    assert "architectures[0] 'ElectraForPreTraining' is not supported for model_type " in (
        str(error.value)
    )
    assert "supported: ElectraModel, ElectraForSequenceClassification, " in str(error.value)
    assert str(error.value).endswith("Pass head=False to load the encoder alone, without the head")
    ours = load_pretrained(tmp_path, head=False)  # discriminator_predictions.* dropped
    assert worst(theirs.electra, ours) <= ATOL


def test_a_plain_encoder_can_be_written_as_electra_on_request(tmp_path):
    config = transformers.BertConfig(**TEXT_SIZE, hidden_act="gelu_new")
    saved_reference(transformers.BertModel, config, tmp_path, add_pooling_layer=False)
    ours = load_pretrained(tmp_path)
    assert ours.config.embedding_size is None
    save_pretrained(ours, tmp_path / "electra", model_type="electra")
    back = transformers.ElectraModel.from_pretrained(tmp_path / "electra").eval()
    assert worst(back, ours) <= ATOL
    assert load_pretrained(tmp_path / "electra").config.embedding_size == 32


# ---- what is refused, and how it is named --------------------------------------------------


@pytest.fixture(scope="module")
def electra_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("electra_plain")
    saved_reference(transformers.ElectraModel, hf_config(), directory)
    return directory


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hidden_act", "silu", r"hidden_act must be one of \['gelu', .*got 'silu'"),
        ("embedding_size", 0, "embedding_size must be a positive int, got 0"),
        ("position_embedding_type", "relative_key", "position_embedding_type must be 'absolute'"),
        ("is_decoder", True, "is_decoder must be false .* got True"),
        ("classifier_dropout", 2.0, r"classifier_dropout must be a float in \[0, 1\), got 2.0"),
    ],
)
def test_config_values_it_cannot_read_name_the_field(electra_dir, tmp_path, key, value, message):
    config = {key: value, "architectures": ["ElectraForSequenceClassification"]}
    edited_copy(electra_dir, tmp_path, config=config)
    with pytest.raises(PretrainedError, match=message):
        load_pretrained(tmp_path)


def test_an_embedding_size_the_weights_do_not_have_names_the_keys(electra_dir, tmp_path):
    edited_copy(electra_dir, tmp_path, config={"embedding_size": 32})
    with pytest.raises(PretrainedError) as error:
        load_pretrained(tmp_path)
    message = str(error.value)
    assert "shape of embeddings.word_embeddings.weight: expected (99, 32)" in message
    assert (
        "unexpected keys, used by nothing: embeddings_project.bias, embeddings_project.weight"
        in (message)
    )


def test_a_missing_projection_is_named(electra_dir, tmp_path):
    def edit(tensors):
        del tensors["embeddings_project.weight"]
        return tensors

    edited_copy(electra_dir, tmp_path, weights=edit)
    with pytest.raises(
        PretrainedError, match=r"missing embeddings_project.weight \(for embed_proj"
    ):
        load_pretrained(tmp_path)


def test_save_refuses_what_electra_cannot_express(electra_dir, tmp_path):
    config = load_pretrained(electra_dir).config
    with pytest.raises(ValueError) as error:
        electra.config_to_hf(dataclasses.replace(config, type_vocab_size=0, pooler=True))
    assert str(error.value) == (
        "this model cannot be written in the ELECTRA format: type_vocab_size must be at least "
        "1; pooler must be False (ELECTRA has none)"
    )
    # a head ElectraForSequenceClassification does not have: DistilBERT's ReLU one
    model = SequenceClassifier(config, 3, head=HeadConfig(dense=True, activation="relu"))
    with pytest.raises(ValueError, match="cannot be written as ElectraForSequenceClassification"):
        save_pretrained(model, tmp_path)
    assert not any(tmp_path.iterdir())
