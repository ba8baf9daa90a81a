"""DeiT checkpoints (distillation token after [CLS]): loaded with outputs equal to transformers'
DeiTModel at the trained and a resized image size, saved back to files DeiTModel loads with the
same outputs, and refused with the field or key named."""

from __future__ import annotations

import dataclasses
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
from safetensors import safe_open
from safetensors.torch import save_file

from encoderkit import (
    PretrainedError,
    VisionConfig,
    VisionEncoder,
    load_pretrained,
    save_pretrained,
)
from encoderkit.models.formats import deit
from encoderkit.models.pretrained import config_to_hf

transformers = pytest.importorskip("transformers", reason="transformers is the reference here")
logging.getLogger("transformers").setLevel(logging.ERROR)

ATOL = 1e-5
SIZE = VISION_SIZE


@pytest.fixture(scope="module")
def deit_dir(tmp_path_factory):
    """A DeiTModel (with its pooler) saved by transformers, and that model."""
    directory = tmp_path_factory.mktemp("deit")
    config = transformers.DeiTConfig(**SIZE)  # its tokens and positions start at 0: perturbed
    return directory, saved_reference(transformers.DeiTModel, config, directory)


@pytest.mark.parametrize("size", [(16, 16), (24, 20)], ids=["trained", "resized"])
def test_deit_loads_with_outputs_equal_to_transformers(deit_dir, size):
    directory, theirs = deit_dir
    ours = load_pretrained(directory)
    assert isinstance(ours, VisionEncoder)
    assert ours.config.distillation_token and ours.prefix == 2
    assert ours.config.layer_norm_eps == 1e-12  # DeiT's default, as the file says
    x = pixels(*size)
    out, pooled = vision_outputs(ours, x)
    ref, ref_pooled = vision_outputs(theirs, x, resized=size != (16, 16))
    assert out.shape == (2, 2 + (size[0] // 4) * (size[1] // 4), 32)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, ref_pooled, atol=ATOL, rtol=0)


def test_deit_saved_back_loads_in_transformers_with_the_same_outputs(deit_dir, tmp_path):
    directory, theirs = deit_dir
    save_pretrained(load_pretrained(directory), tmp_path)
    assert tensor_names(tmp_path) == tensor_names(directory)
    written = read_config(tmp_path)
    assert (written["model_type"], written["architectures"]) == ("deit", ["DeiTModel"])
    back = transformers.DeiTModel.from_pretrained(tmp_path).eval()
    x = pixels()
    out, pooled = vision_outputs(back, x)
    ref, ref_pooled = vision_outputs(theirs, x)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, ref_pooled, atol=ATOL, rtol=0)


def test_our_deit_round_trips_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    config = VisionConfig(d_model=32, n_heads=4, d_ff=48, n_layers=2, image_size=16, patch_size=4,
                          norm_first=True, distillation_token=True)  # fmt: skip
    ours = perturbed(VisionEncoder(config))
    save_pretrained(ours, tmp_path)
    back = load_pretrained(tmp_path)
    assert back.config == config
    assert_same_weights(ours, back)


def test_a_deit_without_its_distillation_token_names_the_key(deit_dir, tmp_path):
    _, theirs = deit_dir
    theirs.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if k != "embeddings.distillation_token"}
    save_file(state, str(tmp_path / "model.safetensors"), {"format": "pt"})
    with pytest.raises(
        PretrainedError,
        match="missing embeddings.distillation_token \\(for embeddings.dist_token\\)",
    ):
        load_pretrained(tmp_path)


def test_a_vit_file_read_as_deit_names_what_differs(tmp_path):
    """A ViT checkpoint relabelled DeiT: the token and the position table's extra row are named."""
    torch.manual_seed(0)
    transformers.ViTModel(transformers.ViTConfig(**SIZE)).save_pretrained(tmp_path)
    edit_config(tmp_path, model_type="deit", architectures=["DeiTModel"])
    with pytest.raises(PretrainedError) as info:
        load_pretrained(tmp_path)
    message = str(info.value)
    assert "missing embeddings.distillation_token (for embeddings.dist_token)" in message
    assert (
        "shape of embeddings.position_embeddings: expected (1, 18, 32) for embeddings.pos_embed, "
        "got (1, 17, 32)"
    ) in message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_act": "silu"}, r"hidden_act must be one of \[.*\], got 'silu'"),
        ({"pooler_act": "gelu"}, "pooler_act must be 'tanh' \\(our pooler's\\), got 'gelu'"),
        ({"image_size": [16, 8]}, r"image_size must be square, got \[16, 8\]"),
    ],
)
def test_unsupported_config_values_name_the_field(deit_dir, tmp_path, changes, message):
    deit_dir[1].save_pretrained(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(PretrainedError, match=f"^config.json: {message}"):
        load_pretrained(tmp_path)


def test_save_refuses_what_deit_and_vit_cannot_express():
    plain = VisionConfig(d_model=32, n_heads=4, d_ff=48, n_layers=1, image_size=16, patch_size=4,
                         norm_first=True)  # fmt: skip
    with pytest.raises(ValueError, match="in the DeiT format: distillation_token must be True"):
        deit.config_to_hf(plain)
    distilled = dataclasses.replace(plain, distillation_token=True)
    assert config_to_hf(distilled)["model_type"] == "deit"
