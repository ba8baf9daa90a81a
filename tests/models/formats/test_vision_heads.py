"""Image classifiers of ViT and DeiT: ViTForImageClassification, DeiTForImageClassification and
DeiTForImageClassificationWithTeacher load as our ImageClassifier with logits equal to
transformers', keep their labels, save back to the same class with the same logits, and what the
classes cannot express is refused by name."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from models.formats.helpers import (
    VISION_SIZE,
    assert_same_weights,
    perturbed,
    pixels,
    read_config,
    saved_reference,
    tensor_names,
)
from safetensors import safe_open
from safetensors.torch import save_file

from encoderkit import (
    PretrainedError,
    VisionConfig,
    VisionEncoder,
    load_pretrained,
    save_pretrained,
)
from encoderkit.models.heads import HeadConfig, ImageClassifier

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")
logging.getLogger("transformers").setLevel(logging.ERROR)

ATOL = 1e-5
LABELS = ("cat", "dog", "bird")
SIZE = VISION_SIZE | dict(hidden_dropout_prob=0.1, id2label=dict(enumerate(LABELS)),
                         label2id={n: i for i, n in enumerate(LABELS)})  # fmt: skip
CLASSES = {
    "ViTForImageClassification": ("ViTConfig", "vit"),
    "ViTForImageClassification-no_qkv_bias": ("ViTConfig", "vit"),
    "DeiTForImageClassification": ("DeiTConfig", "deit"),
    "DeiTForImageClassificationWithTeacher": ("DeiTConfig", "deit"),
}


def logits(model, x, resized=False):
    with torch.no_grad():
        if isinstance(model, ImageClassifier):
            return model(x)
        return model(x, interpolate_pos_encoding=resized).logits


@pytest.fixture(scope="module", params=list(CLASSES))
def task_dir(request, tmp_path_factory):
    """A task model saved by transformers (every parameter off its init), and that model."""
    name = request.param
    config_class, _ = CLASSES[name]
    changes = {"qkv_bias": False} if name.endswith("no_qkv_bias") else {}
    config = getattr(transformers, config_class)(**SIZE, **changes)
    directory = tmp_path_factory.mktemp(name)
    return directory, saved_reference(getattr(transformers, name.split("-")[0]), config, directory)


@pytest.mark.parametrize("size", [(16, 16), (24, 20)], ids=["trained", "resized"])
def test_classifier_loads_with_logits_equal_to_transformers(task_dir, size):
    directory, theirs = task_dir
    ours = load_pretrained(directory)
    assert isinstance(ours, ImageClassifier)
    assert ours.labels == LABELS and ours.head.fc.out_features == 3
    assert ours.distillation_head == (type(theirs).__name__.endswith("WithTeacher"))
    assert ours.encoder.pooler is None  # the task classes have none
    x = pixels(*size)
    torch.testing.assert_close(
        logits(ours, x), logits(theirs, x, resized=size != (16, 16)), atol=ATOL, rtol=0
    )


def test_classifier_saved_back_loads_in_transformers_with_the_same_logits(task_dir, tmp_path):
    directory, theirs = task_dir
    save_pretrained(load_pretrained(directory), tmp_path)
    assert tensor_names(tmp_path) == tensor_names(directory)
    written, original = read_config(tmp_path), read_config(directory)
    for field in ("architectures", "model_type", "id2label", "label2id", "qkv_bias"):
        assert written[field] == original[field], field
    back = getattr(transformers, original["architectures"][0]).from_pretrained(tmp_path).eval()
    x = pixels(seed=3)
    torch.testing.assert_close(logits(back, x), logits(theirs, x), atol=ATOL, rtol=0)


def test_head_false_loads_the_encoder_alone(task_dir):
    directory, theirs = task_dir
    ours = load_pretrained(directory, head=False)
    assert isinstance(ours, VisionEncoder)
    base = theirs.vit if hasattr(theirs, "vit") else theirs.deit
    x = pixels()
    with torch.no_grad():
        ref, out = base(x).last_hidden_state, ours(x)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_a_missing_head_key_is_named(task_dir, tmp_path):
    directory, _ = task_dir
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    gone = max(k for k in state if k.endswith("classifier.bias"))  # the teacher's: its 2nd
    del state[gone]
    save_file(state, str(tmp_path / "model.safetensors"), {"format": "pt"})
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(PretrainedError, match=f"missing {gone} \\(for (head|distill_head).fc.bias"):
        load_pretrained(tmp_path)


def test_an_unsupported_vision_class_is_named_with_the_supported_ones(task_dir, tmp_path):
    directory, _ = task_dir
    hf = read_config(directory)
    family = hf["model_type"]
    prefix = "ViT" if family == "vit" else "DeiT"
    hf["architectures"] = [f"{prefix}ForMaskedImageModeling"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    (tmp_path / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(PretrainedError, match=(
        f"architectures\\[0\\] '{prefix}ForMaskedImageModeling' is not supported for model_type "
        f"'{family}'; supported: {prefix}Model, {prefix}ForImageClassification"
    )):  # fmt: skip
        load_pretrained(tmp_path)


# Our classifiers, written as the Hugging Face classes

VISION = VisionConfig(d_model=32, n_heads=4, d_ff=48, n_layers=2, image_size=16, patch_size=4,
                      norm_first=True, dropout=0.1, attention_dropout=0.0)  # fmt: skip
BARE = HeadConfig(dropout=0.0)  # ViT's and DeiT's classifiers: a linear layer, no dropout


@pytest.mark.parametrize(
    ("distillation", "architecture"),
    [
        (None, "ViTForImageClassification"),
        (False, "DeiTForImageClassification"),
        (True, "DeiTForImageClassificationWithTeacher"),
    ],
)
def test_our_classifier_is_written_as_the_class_that_computes_it(
    tmp_path, distillation, architecture
):
    config = dataclasses.replace(VISION, distillation_token=distillation is not None)
    torch.manual_seed(0)
    ours = ImageClassifier(config, 4, head=BARE, distillation_head=bool(distillation))
    perturbed(ours, seed=None)  # on from the draws that initialised it
    save_pretrained(ours, tmp_path)
    hf = read_config(tmp_path)
    assert hf["architectures"] == [architecture]
    assert hf["id2label"] == {str(i): f"LABEL_{i}" for i in range(4)}
    theirs = getattr(transformers, architecture).from_pretrained(tmp_path).eval()
    x = pixels(seed=4)
    torch.testing.assert_close(logits(theirs, x), logits(ours, x), atol=ATOL, rtol=0)
    back = load_pretrained(tmp_path)
    assert back.labels is None and back.head_config == BARE
    assert_same_weights(ours, back)


def test_a_head_the_classes_cannot_express_is_refused_by_name(tmp_path):
    with_dropout = ImageClassifier(VISION, 3)  # the encoder's dropout before the classifier
    with pytest.raises(ValueError, match=(
        r"cannot be written as ViTForImageClassification: its head must have dropout=0.0 "
        r"\(got 0.1\)"
    )):  # fmt: skip
        save_pretrained(with_dropout, tmp_path)
    mean = ImageClassifier(VISION, 3, "mean", head=BARE)
    with pytest.raises(ValueError, match="pooling must be 'cls', got 'mean'"):
        save_pretrained(mean, tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_the_default_head_saves_when_the_encoder_drops_nothing(tmp_path):
    # The default head drops at the encoder's rate: 0 here, which is what ViT's classifier does
    model = ImageClassifier(dataclasses.replace(VISION, dropout=0.0), 3)
    save_pretrained(model, tmp_path)
    assert read_config(tmp_path)["architectures"] == ["ViTForImageClassification"]


def test_mean_pooling_skips_the_distillation_token():
    config = dataclasses.replace(VISION, distillation_token=True)
    torch.manual_seed(0)
    ours = ImageClassifier(config, 3, "mean", head=BARE).eval()
    x = pixels()
    with torch.no_grad():
        hidden = ours.encoder(x)  # (B, 2 + N, D)
        expected = ours.head.fc(hidden[:, 2:].mean(1))
        torch.testing.assert_close(ours(x), expected, atol=ATOL, rtol=0)
