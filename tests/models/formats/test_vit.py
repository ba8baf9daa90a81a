"""ViT checkpoints with and without qkv bias: loaded with outputs equal to transformers' ViTModel,
saved back to files ViTModel loads with the same outputs, and refused with the field named."""

from __future__ import annotations

import logging

import pytest
import torch
from models.formats.helpers import (
    VISION_SIZE,
    assert_same_weights,
    edit_config,
    perturbed,
    pixels,
    read_config,
    saved_reference,
    tensor_names,
    vision_outputs,
)

from encoderkit import (
    PretrainedError,
    VisionConfig,
    VisionEncoder,
    load_pretrained,
    save_pretrained,
)
from encoderkit.models.pretrained import config_to_hf

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")
logging.getLogger("transformers").setLevel(logging.ERROR)

ATOL = 1e-5
SIZE = VISION_SIZE


@pytest.fixture(scope="module", params=[True, False], ids=["qkv_bias", "no_qkv_bias"])
def vit_dir(request, tmp_path_factory):
    """A ViTModel (with its pooler) saved by transformers, and that model."""
    config = transformers.ViTConfig(**SIZE, qkv_bias=request.param, layer_norm_eps=1e-6)
    directory = tmp_path_factory.mktemp("vit")
    return directory, saved_reference(transformers.ViTModel, config, directory)


@pytest.mark.parametrize("size", [(16, 16), (24, 20)], ids=["trained", "resized"])
def test_vit_loads_with_outputs_equal_to_transformers(vit_dir, size):
    directory, theirs = vit_dir
    ours = load_pretrained(directory)
    assert isinstance(ours, VisionEncoder)
    assert ours.config.qkv_bias == theirs.config.qkv_bias
    assert (ours.encoder.blocks[0].attn.qkv.bias is None) == (not theirs.config.qkv_bias)
    x = pixels(*size)
    out, pooled = vision_outputs(ours, x)
    ref, ref_pooled = vision_outputs(theirs, x, resized=size != (16, 16))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, ref_pooled, atol=ATOL, rtol=0)


def test_vit_saved_back_loads_in_transformers_with_the_same_outputs(vit_dir, tmp_path):
    directory, theirs = vit_dir
    save_pretrained(load_pretrained(directory), tmp_path)
    # the q/k/v biases written exactly when they exist
    assert tensor_names(tmp_path) == tensor_names(directory)
    back = transformers.ViTModel.from_pretrained(tmp_path).eval()
    assert back.config.qkv_bias == theirs.config.qkv_bias
    x = pixels()
    out, pooled = vision_outputs(back, x)
    ref, ref_pooled = vision_outputs(theirs, x)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, ref_pooled, atol=ATOL, rtol=0)


def test_our_vit_without_qkv_bias_round_trips(tmp_path):
    torch.manual_seed(0)
    config = VisionConfig(d_model=32, n_heads=4, d_ff=48, n_layers=2, image_size=16,
                          patch_size=4, norm_first=True, qkv_bias=False)  # fmt: skip
    ours = perturbed(VisionEncoder(config))
    save_pretrained(ours, tmp_path)
    assert read_config(tmp_path)["qkv_bias"] is False
    back = load_pretrained(tmp_path)
    assert back.config == config
    assert_same_weights(ours, back)


def test_qkv_bias_that_disagrees_with_the_weights_names_the_keys(vit_dir, tmp_path):
    _, theirs = vit_dir
    theirs.save_pretrained(tmp_path)
    edit_config(tmp_path, qkv_bias=not theirs.config.qkv_bias)
    with pytest.raises(PretrainedError) as info:
        load_pretrained(tmp_path)
    if theirs.config.qkv_bias:  # the file has biases the config says nothing of
        assert "unexpected keys, used by nothing: encoder.layer.0.attention.attention.key.bias" in (
            str(info.value)
        )
    else:
        assert (
            "missing encoder.layer.0.attention.attention.query.bias, "
            "encoder.layer.0.attention.attention.key.bias, "
            "encoder.layer.0.attention.attention.value.bias (for encoder.blocks.0.attn.qkv.bias)"
        ) in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_act": "swish"}, r"hidden_act must be one of \[.*\], got 'swish'"),
        ({"qkv_bias": 1}, "qkv_bias must be a bool, got 1"),
        ({"pooler_act": "relu"}, "pooler_act must be 'tanh' \\(our pooler's\\), got 'relu'"),
        ({"pooler_output_size": 16}, "pooler_output_size must be hidden_size=32 .*, got 16"),
        ({"patch_size": [4, 2]}, r"patch_size must be square, got \[4, 2\]"),
    ],
)
def test_unsupported_config_values_name_the_field(vit_dir, tmp_path, changes, message):
    vit_dir[1].save_pretrained(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(PretrainedError, match=f"^config.json: {message}"):
        load_pretrained(tmp_path)


def test_fields_only_masked_image_modelling_reads_are_ignored(vit_dir, tmp_path):
    vit_dir[1].save_pretrained(tmp_path)
    edit_config(tmp_path, encoder_stride=7)
    assert load_pretrained(tmp_path).config.image_size == 16


def test_save_refuses_what_vit_cannot_express():
    config = VisionConfig(d_model=32, n_heads=4, d_ff=48, n_layers=1, image_size=16, patch_size=4,
                          norm_first=False, window=3)  # fmt: skip
    with pytest.raises(ValueError, match=(
        "cannot be written in the ViT format: norm_first must be True; "
        "window must be None \\(ViT attends globally\\)"
    )):  # fmt: skip
        config_to_hf(config)
