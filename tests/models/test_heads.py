"""The task heads on their own: each head's layers against the formula written out, the tied
masked-LM output layer, labels, DeiT's distillation head, the state dict names old run checkpoints
hold, and bad arguments refused before anything is built."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import padding_mask
from tiny import TEXT, VISION, perturb

from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.heads import (
    ClassificationHead,
    HeadConfig,
    ImageClassifier,
    MaskedLM,
    SequenceClassifier,
    TokenClassifier,
)

ATOL = 1e-5


def test_a_head_without_dense_keeps_the_names_old_checkpoints_hold():
    model = SequenceClassifier(TEXT, 3)
    names = {k for k in model.state_dict() if not k.startswith("encoder.")}
    assert names == {"head.fc.weight", "head.fc.bias"}
    image = ImageClassifier(VISION, 4)
    assert {k for k in image.state_dict() if not k.startswith("encoder.")} == names


@pytest.mark.parametrize("norm", [False, True])
def test_the_dense_head_is_drop_dense_act_norm_drop_fc(norm):
    config = HeadConfig(dense=True, activation="gelu_tanh", norm=norm, width=24,
                        input_dropout=True)  # fmt: skip
    head = perturb(ClassificationHead(32, 5, 0.1, config, layer_norm_eps=1e-6))
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    with torch.no_grad():
        h = F.gelu(x @ head.transform.dense.weight.double().T + head.transform.dense.bias.double(),
                   approximate="tanh")  # fmt: skip
        if norm:
            n = head.transform.norm
            h = F.layer_norm(h, (24,), n.weight.double(), n.bias.double(), 1e-6)
        expected = h @ head.fc.weight.double().T + head.fc.bias.double()
        out = head(x.float())
    assert out.shape == (2, 7, 5)
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=0)
    assert (head.transform.norm is not None) == norm
    calls = []
    head.drop.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[-1]))
    head(x.float())
    assert calls == [32, 24]  # dropout on the input (D) with input_dropout, then before fc (W)
    calls.clear()
    plain = ClassificationHead(32, 5, 0.1, HeadConfig(dense=True, width=24))
    plain.drop.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[-1]))
    plain(x.float())
    assert calls == [24]


def test_token_classifier_logits_are_the_head_on_every_token():
    model = perturb(TokenClassifier(TEXT, 4, labels=["a", "b", "c", "d"]))
    ids = torch.randint(1, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = padding_mask([9, 5, 2], 9)
    with torch.no_grad():
        logits = model(ids, mask)
        hidden = model.encoder(ids, mask)
    assert logits.shape == (3, 9, 4) and model.labels == ("a", "b", "c", "d")
    torch.testing.assert_close(logits, hidden @ model.head.fc.weight.T + model.head.fc.bias)


@pytest.mark.parametrize("embedding_size", [None, 16])
def test_masked_lm_reads_its_logits_off_the_token_embedding_table(embedding_size):
    """logits = LN(act(h W + b)) E^T + b_out, E the token table, also at ELECTRA's narrower
    embedding width (the head's width follows the table)."""
    config = TextConfig(d_model=32, n_heads=4, d_ff=48, n_layers=2, vocab_size=50,
                        max_positions=16, embedding_size=embedding_size)  # fmt: skip
    model = perturb(MaskedLM(config))
    E = model.encoder.embeddings.tokens.weight
    assert model.head.transform.dense.weight.shape == (E.shape[1], 32)
    assert model.head.bias.shape == (50,)
    ids = torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = model.encoder(ids)
        t = model.head.transform
        h = t.norm(F.gelu(t.dense(hidden)))
        expected = h @ E.T + model.head.bias
        logits = model(ids)
    assert logits.shape == (2, 8, 50)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
    assert sum(p is E for p in model.parameters()) == 1  # the table, once: no decoder copy


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_image_mean_pooling_skips_the_class_and_distillation_tokens(pooling):
    config = VisionConfig(d_model=32, n_heads=4, d_ff=48, n_layers=2, image_size=8,
                          patch_size=4, norm_first=True, distillation_token=True)  # fmt: skip
    model = perturb(ImageClassifier(config, 3, pooling))
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden = model.encoder(pixels)  # (2, 2 + 4, 32)
        pooled = hidden[:, 0] if pooling == "cls" else hidden[:, 2:].mean(dim=1)
        torch.testing.assert_close(model(pixels), model.head(pooled), atol=ATOL, rtol=0)


def test_the_distillation_head_averages_both_tokens_heads():
    config = VisionConfig(d_model=32, n_heads=4, d_ff=48, n_layers=2, image_size=8,
                          patch_size=4, norm_first=True, distillation_token=True)  # fmt: skip
    model = perturb(ImageClassifier(config, 3, distillation_head=True))
    assert model.distillation_head and model.distill_head is not None
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        hidden = model.encoder(pixels)
        expected = (model.head(hidden[:, 0]) + model.distill_head(hidden[:, 1])) / 2
        torch.testing.assert_close(model(pixels), expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="distillation_head reads the distillation token"):
        ImageClassifier(VISION, 3, distillation_head=True)
    with pytest.raises(ValueError, match="distillation_head reads the distillation token"):
        ImageClassifier(config, 3, "mean", distillation_head=True)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"norm": True}, ValueError, "norm shape the dense layer, which this head has not"),
        ({"width": 8, "input_dropout": True}, ValueError, "width, input_dropout shape the dense"),
        ({"dense": True, "activation": "swish"}, ValueError, "activation must be one of"),
        ({"dense": True, "width": 0}, ValueError, "width must be a positive int, got 0"),
        ({"dense": True, "norm_eps": -1.0}, ValueError, "norm_eps must be a positive float"),
        ({"dropout": 1.0}, ValueError, r"dropout must be a float in \[0, 1\), got 1.0"),
        ({"dense": 1}, TypeError, "dense must be a bool, got 1"),
    ],
)
def test_head_config_refuses_what_it_cannot_build(changes, error, message):
    with pytest.raises(error, match=message):
        HeadConfig(**changes)


@pytest.mark.parametrize(
    ("labels", "error", "message"),
    [
        (["a", "b"], ValueError, "labels must name each of the 3 classes, got 2 labels"),
        (["a", "b", "a"], ValueError, r"labels must be distinct, got \['a'\] more than once"),
        (["a", "b", 3], TypeError, "labels must be str, got 3"),
        ("abc", TypeError, "labels must be a sequence of str, got str"),
    ],
)
def test_labels_name_each_class_once(labels, error, message):
    with pytest.raises(error, match=message):
        SequenceClassifier(TEXT, 3, labels=labels)


def test_task_model_arguments_are_checked():
    with pytest.raises(ValueError, match="problem_type must be one of"):
        SequenceClassifier(TEXT, 3, problem_type="ranking")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a masked-LM head's width must be its token embedding"):
        MaskedLM(TEXT, head=HeadConfig(dense=True, width=16))
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        TokenClassifier(TEXT, 0)
