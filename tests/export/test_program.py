"""torch.export programs: equal to the eager model within 1e-5 (fp32) on batch sizes, lengths and
padding other than the traced ones, padding-free and masked configs alike, through save and load."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch
from tiny import TEXT, VISION, perturb

from encoderkit import SentenceEncoder
from encoderkit.export import check_program, example_inputs, export_program, graph_interface
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder

ATOL = 1e-5  # fp32, the same kernels as eager
SHAPES = [(1, 1), (3, 11), (5, 16)]  # the program was traced at (2, 8)


@pytest.fixture(scope="module", params=[True, False], ids=["padding-free", "masked"])
def text(request, tmp_path_factory):
    """A program saved and loaded back, beside the model it came from."""
    model = perturb(TextEncoder(dataclasses.replace(TEXT, padding_free=request.param)))
    path = tmp_path_factory.mktemp("program") / "model.pt2"
    program = export_program(model, path)
    return model, program, torch.export.load(path)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize(("batch", "length"), SHAPES)
def test_text_program_equals_eager_on_other_shapes(text, batch, length, padded):
    model, program, loaded = text
    inputs = example_inputs(model, batch, length, padded=padded, seed=batch)
    assert max(check_program(model, program, inputs).values()) <= ATOL
    assert max(check_program(model, loaded, inputs).values()) <= ATOL


def test_text_program_reads_the_mask(text):
    model, program, _ = text
    inputs = example_inputs(model, 3, 10, seed=7)
    real = inputs["attention_mask"].bool()
    args = [inputs[name] for name in graph_interface(model).inputs]
    with torch.inference_mode():
        out = program.module()(*args)
        noisy = program.module()(args[0].masked_fill(~real, 41), *args[1:])
    assert out[~real].abs().max() == 0
    assert (noisy - out).abs().max() <= ATOL  # what padding holds is never read


def test_sentence_and_vision_programs_equal_eager(tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="SentenceEncoder holds a tokenizer")
    from tokenizers import models

    vocab = {f"w{i}": i for i in range(TEXT.vocab_size)}
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="w1"))
    sentence = SentenceEncoder(perturb(TextEncoder(TEXT)), tokenizer, max_seq_length=16)
    program = export_program(sentence)
    for batch, length in SHAPES:
        differences = check_program(sentence, program, example_inputs(sentence, batch, length))
        assert list(differences) == ["last_hidden_state", "sentence_embedding"]
        assert max(differences.values()) <= ATOL

    vision = perturb(VisionEncoder(VISION))
    path = tmp_path / "vision.pt2"
    export_program(vision, path)
    loaded = torch.export.load(path)
    for batch in (1, 3):
        assert (
            check_program(vision, loaded, example_inputs(vision, batch))["last_hidden_state"]
            <= ATOL
        )


def test_the_sequence_axis_is_capped_at_max_positions(text):
    model, program, _ = text
    inputs = example_inputs(model, 2, 16)
    too_long = {k: torch.cat([v, v[:, :1]], dim=1) for k, v in inputs.items()}  # 17 tokens
    args = [too_long[name] for name in graph_interface(model).inputs]
    with pytest.raises(AssertionError, match=r"input_ids.size\(\)\[1\] <= 16"):
        program.module()(*args)


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = TextEncoder(dataclasses.replace(TEXT, dropout=0.5)).double().train()
    before = copy.deepcopy(model.state_dict())
    program = export_program(model, tmp_path / "model.pt2")
    assert os.listdir(tmp_path) == ["model.pt2"]  # no temporary file left
    assert model.training and all(p.dtype == torch.float64 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    inputs = example_inputs(model, 3, 5)
    assert max(check_program(model, program, inputs).values()) <= ATOL  # eval: no dropout


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    model = TextEncoder(TEXT)
    with pytest.raises(ValueError, match="path must name a .pt2 file .* got .*model.onnx"):
        export_program(model, tmp_path / "model.onnx")
    with pytest.raises(TypeError, match="expected a TextEncoder, .* to export, got Linear"):
        export_program(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"seq_len must be an int in \[1, 16\] \(the tokens"):
        example_inputs(model, 2, 17)
    assert not any(tmp_path.iterdir())
