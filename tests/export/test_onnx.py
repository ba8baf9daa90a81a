"""ONNX export: ONNX Runtime equals the eager model within 1e-4 (fp32) on batch sizes, lengths
and padding the graph was not traced with; the mask is really read; the model is left as it was."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch
from tiny import TEXT, VISION, WORD_TEXT, perturb, word_tokenizer

from encoderkit import Encoder, EncoderConfig, SentenceEncoder
from encoderkit.export import check_onnx, example_inputs, export_onnx, graph_interface, run_onnx
from encoderkit.models.heads import ImageClassifier, MaskedLM, SequenceClassifier, TokenClassifier
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder

onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx (encoderkit[export])")
pytest.importorskip("onnxruntime", reason="the parity checks run ONNX Runtime")

ORT_ATOL = 1e-4  # ONNX Runtime vs eager, fp32: its kernels sum in another order
# (batch, length) pairs other than the traced (2, 8): one token, longer, the longest allowed
SHAPES = [(1, 1), (3, 11), (5, 16)]


def tiny_sentence_encoder(normalize: bool = True) -> SentenceEncoder:
    model = perturb(TextEncoder(WORD_TEXT), seed=1)
    return SentenceEncoder(model, word_tokenizer(), max_seq_length=12, normalize=normalize)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    model = perturb(TextEncoder(TEXT))
    return model, export_onnx(model, tmp_path_factory.mktemp("text") / "model.onnx")


@pytest.fixture(scope="module", params=[True, False], ids=["normalized", "raw"])
def sentence(request, tmp_path_factory):
    model = tiny_sentence_encoder(normalize=request.param)
    return model, export_onnx(model, tmp_path_factory.mktemp("sentence") / "model.onnx")


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    model = perturb(VisionEncoder(VISION))
    return model, export_onnx(model, tmp_path_factory.mktemp("vision") / "model.onnx")


def worst(differences: dict[str, float]) -> float:
    return max(differences.values())


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize(("batch", "length"), SHAPES)
def test_text_graph_equals_eager_on_other_shapes(text, batch, length, padded):
    model, path = text
    inputs = example_inputs(model, batch, length, padded=padded, seed=batch)
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert worst(check_onnx(model, path, inputs)) <= ORT_ATOL


@pytest.mark.parametrize("positions", ["rotary", "alibi"])
def test_positions_inside_attention_and_local_layers_export(tmp_path, positions):
    # ModernBERT's layout: layer 0 global, layers 1 and 2 within a 4-token window; no length cap
    config = dataclasses.replace(
        TEXT, n_layers=3, norm_first=True, position_encoding=positions, window=4, global_every=3
    )
    model = perturb(TextEncoder(config))
    path = export_onnx(model, tmp_path / "model.onnx")
    for batch, length in [(1, 1), (3, 11), (2, 40)]:  # 40 > max_positions: rotary / ALiBi run on
        inputs = example_inputs(model, batch, length, seed=batch)
        assert worst(check_onnx(model, path, inputs)) <= ORT_ATOL


@pytest.mark.parametrize(("batch", "length"), SHAPES)
def test_sentence_graph_equals_eager_on_other_shapes(sentence, batch, length):
    model, path = sentence
    differences = check_onnx(model, path, example_inputs(model, batch, length, seed=batch))
    assert set(differences) == {"last_hidden_state", "sentence_embedding"}
    assert worst(differences) <= ORT_ATOL


def test_sentence_embedding_is_what_encode_computes(sentence):
    model, path = sentence
    texts = ["a man plays guitar", "the market", "a man plays the guitar the man plays", "a"]
    ids, mask = model.tokenize(texts)  # right-padded, bool mask
    out = run_onnx(path, {"input_ids": ids, "attention_mask": mask})
    expected = model.encode(texts, convert_to_tensor=True)
    assert (out["sentence_embedding"] - expected).abs().max() <= ORT_ATOL
    norms = out["sentence_embedding"].norm(dim=-1)
    if model.normalize:
        assert torch.allclose(norms, torch.ones(len(texts)), atol=1e-5)
    else:
        assert not torch.allclose(norms, torch.ones(len(texts)), atol=1e-2)


@pytest.mark.parametrize("batch", [1, 3])
def test_vision_graph_equals_eager_on_other_batch_sizes(vision, batch):
    model, path = vision
    inputs = example_inputs(model, batch, seed=batch)
    assert inputs["pixel_values"].shape == (batch, 3, 8, 8)
    assert worst(check_onnx(model, path, inputs)) <= ORT_ATOL


@pytest.mark.parametrize("kind", ["sequence", "token", "masked-lm", "image"])
def test_task_models_export_their_logits(tmp_path, kind):
    build = {
        "sequence": lambda: SequenceClassifier(TEXT, num_classes=3, pooling="mean"),
        "token": lambda: TokenClassifier(TEXT, num_classes=5),
        "masked-lm": lambda: MaskedLM(TEXT),
        "image": lambda: ImageClassifier(VISION, num_classes=3),
    }
    model = perturb(build[kind]())
    path = export_onnx(model, tmp_path / "model.onnx")
    differences = check_onnx(model, path, example_inputs(model, 3, seed=3))
    assert list(differences) == ["logits"]
    assert differences["logits"] <= ORT_ATOL


def test_attention_mask_and_segments_are_read(text):
    model, path = text
    batch = example_inputs(model, 3, 10, seed=7)
    out = run_onnx(path, batch)["last_hidden_state"]
    real = batch["attention_mask"].bool()
    assert not real.all()
    assert out[~real].abs().max() == 0  # padded positions are exactly 0, as in eager

    # what padded ids hold changes nothing at the real tokens
    noisy = dict(batch, input_ids=batch["input_ids"].masked_fill(~real, 41))
    assert (run_onnx(path, noisy)["last_hidden_state"] - out).abs().max() <= 1e-6

    # unpadding row 2 changes its real tokens' outputs: they now attend to two more tokens
    unpadded = dict(batch, attention_mask=torch.ones_like(batch["attention_mask"]))
    changed = run_onnx(path, unpadded)["last_hidden_state"]
    assert (changed[2][real[2]] - out[2][real[2]]).abs().max() > 1e-2
    assert (changed[0] - out[0]).abs().max() <= 1e-6  # row 0 was not padded

    # token_type_ids is an input that counts
    segments = dict(batch, token_type_ids=1 - batch["token_type_ids"])
    assert (run_onnx(path, segments)["last_hidden_state"][real] - out[real]).abs().min() > 0


def test_batch_and_sequence_axes_are_dynamic_and_named(text, sentence, vision):
    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    graph = onnx.load(str(text[1])).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(dims(i) == ["batch", "sequence"] for i in graph.input)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)
    assert [(o.name, dims(o)) for o in graph.output] == [
        ("last_hidden_state", ["batch", "sequence", 32])
    ]
    graph = onnx.load(str(sentence[1])).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [(o.name, dims(o)) for o in graph.output] == [
        ("last_hidden_state", ["batch", "sequence", 32]),
        ("sentence_embedding", ["batch", 32]),
    ]
    graph = onnx.load(str(vision[1])).graph
    assert [(i.name, dims(i)) for i in graph.input] == [("pixel_values", ["batch", 3, 8, 8])]
    assert [(o.name, dims(o)) for o in graph.output] == [
        ("last_hidden_state", ["batch", 5, 32])  # 1 + (8 / 4)^2 tokens
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_export_leaves_the_model_as_it_was_and_writes_atomically(tmp_path, dtype):
    config = dataclasses.replace(TEXT, dropout=0.5, attention_dropout=0.5)
    model = TextEncoder(config).to(dtype).train()
    model.encoder.blocks[1].eval()  # a mixed state, to be kept as it is
    modes = [m.training for m in model.modules()]
    before = copy.deepcopy(model.state_dict())
    target = tmp_path / "model.onnx"
    target.write_bytes(b"an older file")
    path = export_onnx(model, target)
    assert path == target and os.listdir(tmp_path) == ["model.onnx"]  # no temporary left
    assert [m.training for m in model.modules()] == modes
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys()
    # the graph is the eval-mode forward: deterministic, dropout off
    inputs = example_inputs(model, 3, 5)
    assert worst(check_onnx(model, path, inputs)) <= ORT_ATOL
    first, second = run_onnx(path, inputs), run_onnx(path, inputs)
    assert torch.equal(first["last_hidden_state"], second["last_hidden_state"])


def test_unsupported_models_and_arguments_are_refused(tmp_path, text):
    model, path = text
    encoder = Encoder(EncoderConfig.tiny())
    with pytest.raises(TypeError, match="expected a TextEncoder, SequenceClassifier, "
                       "TokenClassifier, MaskedLM, SentenceEncoder, VisionEncoder or "
                       "ImageClassifier to export, got Encoder"):  # fmt: skip
        export_onnx(encoder, tmp_path / "model.onnx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"opset must be an int in \[18, \d+\].*got 17"):
        export_onnx(model, tmp_path / "model.onnx", opset=17)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        export_onnx(model, 3)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())  # refused before any work
    with pytest.raises(ValueError, match=r"batch must hold the inputs \['input_ids', 'attention"):
        run_onnx(path, {"input_ids": torch.zeros(1, 2, dtype=torch.long)})
    vision_model = VisionEncoder(VISION)
    with pytest.raises(ValueError, match=r"the inputs \['pixel_values'\] of a VisionEncoder, got"):
        check_onnx(vision_model, path, example_inputs(model))
    with pytest.raises(ValueError, match="returns .*, not the outputs .* of a SequenceClassifier"):
        check_onnx(SequenceClassifier(TEXT, num_classes=2), path, example_inputs(model))
    assert graph_interface(model).inputs == ("input_ids", "attention_mask", "token_type_ids")
