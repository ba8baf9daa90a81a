"""BERT's task heads beyond the shared parity checks of test_text_heads: the pooler its sequence
classifier needs and its other classes drop, pre-training checkpoints (bert-base-*'s layout),
heads we build ourselves saved as BERT, labels and problem_type, and what is refused."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from models.formats.helpers import (
    TEXT_SIZE,
    edit_config,
    hf_output,
    padded_batch,
    perturbed,
    saved_reference,
)
from safetensors.torch import load_file, save_file

from encoderkit import PretrainedError, TextConfig, TextEncoder, load_pretrained, save_pretrained
from encoderkit.models.heads import HeadConfig, MaskedLM, SequenceClassifier, TokenClassifier

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")
logging.getLogger("transformers").setLevel(logging.ERROR)

ATOL = 1e-5
SIZE = TEXT_SIZE
CONFIG = TextConfig(d_model=32, n_heads=4, d_ff=37, n_layers=2, vocab_size=99, max_positions=24)


def test_a_pre_training_checkpoint_loads_as_masked_lm_dropping_the_nsp_head(tmp_path):
    """bert-base-uncased's file: BertForPreTraining's keys (pooler, next-sentence head) under
    architectures ["BertForMaskedLM"]; transformers' BertForMaskedLM ignores the extras."""
    saved_reference(transformers.BertForPreTraining, transformers.BertConfig(**SIZE), tmp_path)
    edit_config(tmp_path, architectures=["BertForMaskedLM"])
    theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    ours = load_pretrained(tmp_path)
    assert isinstance(ours, MaskedLM) and ours.encoder.pooler is None
    ids, mask, segments = padded_batch()
    with torch.no_grad():
        out = ours(ids, mask, segments)
    ref = hf_output(theirs, ids, mask, segments)
    torch.testing.assert_close(out[mask], ref[mask], atol=ATOL, rtol=0)
    encoder = load_pretrained(tmp_path, head=False)  # the encoder keeps the pooler it has
    assert isinstance(encoder, TextEncoder) and encoder.pooler is not None


def test_a_sequence_classifier_without_its_pooler_is_refused(tmp_path):
    torch.manual_seed(0)
    theirs = transformers.BertForSequenceClassification(transformers.BertConfig(**SIZE))
    theirs.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["bert.pooler.dense.weight"], state["bert.pooler.dense.bias"]
    save_file(state, tmp_path / "model.safetensors", {"format": "pt"})
    with pytest.raises(PretrainedError) as info:
        load_pretrained(tmp_path)
    assert "missing pooler.dense.weight (for encoder.pooler.dense.weight)" in str(info.value)


@pytest.mark.parametrize("kind", ["sequence", "token", "masked_lm"])
def test_heads_we_build_are_saved_as_bert_with_equal_logits(tmp_path, kind):
    labels = ("O", "B-PER", "I-PER")
    if kind == "sequence":
        config = TextConfig(**{**vars_of(CONFIG), "pooler": True})
        ours = SequenceClassifier(
            config, 3, labels=labels, problem_type="multi_label_classification",
            head=HeadConfig(dropout=0.25),
        )  # fmt: skip
        cls = transformers.BertForSequenceClassification
    elif kind == "token":
        ours = TokenClassifier(CONFIG, 3, labels=labels)
        cls = transformers.BertForTokenClassification
    else:
        ours = MaskedLM(CONFIG)
        cls = transformers.BertForMaskedLM
    save_pretrained(perturbed(ours), tmp_path)
    theirs, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values())  # nothing missing, unexpected or mismatched
    ids, mask, segments = padded_batch()
    with torch.no_grad():
        out = ours(ids, mask, segments)
    ref = hf_output(theirs.eval(), ids, mask, segments)
    rows = slice(None) if kind == "sequence" else mask
    torch.testing.assert_close(out[rows], ref[rows], atol=ATOL, rtol=0)
    back = load_pretrained(tmp_path)
    assert type(back) is type(ours) and back.head_config == ours.head_config
    if kind != "masked_lm":
        assert back.labels == labels and theirs.config.id2label == dict(enumerate(labels))
    if kind == "sequence":
        assert theirs.config.problem_type == back.problem_type == "multi_label_classification"
        assert theirs.config.classifier_dropout == 0.25


def vars_of(config):
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def test_heads_bert_cannot_express_are_refused_with_the_reason(tmp_path):
    def message(model):
        with pytest.raises(ValueError) as info:
            save_pretrained(model, tmp_path, model_type="bert")
        return str(info.value)

    assert message(SequenceClassifier(CONFIG, 2)) == (
        "this model cannot be written as BertForSequenceClassification: the encoder must have "
        "a pooler (pooler=True)"
    )
    pooled = TextConfig(**{**vars_of(CONFIG), "pooler": True})
    assert "pooling must be 'cls', got 'mean'" in message(SequenceClassifier(pooled, 2, "mean"))
    assert message(TokenClassifier(pooled, 2)).endswith("the encoder must not have a pooler "
                                                        "(pooler=False)")  # fmt: skip
    relu = MaskedLM(CONFIG, head=HeadConfig(dense=True, activation="relu", norm=True))
    assert message(relu).endswith("its head must have activation='gelu' (got 'relu')")
    with pytest.raises(ValueError, match="model_type must be one of"):
        save_pretrained(TokenClassifier(CONFIG, 2), tmp_path, model_type="vit")
    assert not any(tmp_path.iterdir())


@pytest.fixture
def classifier_dir(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(**SIZE, num_labels=3)
    transformers.BertForTokenClassification(config).save_pretrained(tmp_path)
    return tmp_path


def test_labels_read_from_id2label_or_num_labels(classifier_dir):
    ours = load_pretrained(classifier_dir)
    assert ours.labels is None and ours.head.fc.out_features == 3  # LABEL_0.. are no names
    config = json.loads((classifier_dir / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (classifier_dir / "config.json").write_text(json.dumps(config | {"num_labels": 5}))
    with pytest.raises(PretrainedError) as info:  # the file's classifier has 3 rows
        load_pretrained(classifier_dir)
    assert "shape of classifier.weight: expected (5, 32) for head.fc.weight, got (3, 32)" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id2label": {"0": "a", "2": "b"}}, r"id2label must name classes 0 to 1, got indices "
                                             r"\[0, 2\]"),
        ({"id2label": {"0": "a", "1": "a"}}, "id2label must name each class once"),
        ({"id2label": {"x": "a"}}, "id2label must map class indices to names, got 'x': 'a'"),
        ({"id2label": ["a", "b"]}, "id2label must be an object of class index -> name"),
        ({"num_labels": 4}, "num_labels must be the 3 classes of id2label, got 4"),
        ({"problem_type": "ranking", "architectures": ["BertForSequenceClassification"]},
         "problem_type must be one of .* got 'ranking'"),
        ({"classifier_dropout": 2.0}, r"classifier_dropout must be a float in \[0, 1\), got 2.0"),
        ({"architectures": ["BertForNextSentencePrediction"]},
         "architectures.0. 'BertForNextSentencePrediction' is not supported for model_type "
         "'bert'; supported: BertModel, BertForSequenceClassification, "
         "BertForTokenClassification, BertForMaskedLM. Pass head=False"),
        ({"architectures": []}, r"architectures must be a list of class names, got \[\]"),
    ],
)  # fmt: skip
def test_config_fields_refused_are_named(classifier_dir, changes, message):
    edit_config(classifier_dir, **changes)
    with pytest.raises(PretrainedError, match=message):
        load_pretrained(classifier_dir)


def test_relative_positions_are_refused_naming_the_field(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(**SIZE, position_embedding_type="relative_key")
    transformers.BertModel(config).save_pretrained(tmp_path)
    with pytest.raises(PretrainedError) as info:
        load_pretrained(tmp_path)
    assert str(info.value) == (
        "config.json: position_embedding_type must be 'absolute' (learned absolute positions; "
        "relative_key and relative_key_query are not supported), got 'relative_key'"
    )
