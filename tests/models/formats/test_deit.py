"""DeiT checkpoints (distillation token after [CLS]): loaded with outputs equal to transformers'
DeiTModel at the trained and a resized image size, saved back to files DeiTModel loads with the
same outputs, and refused with the field or key named."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
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
SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            image_size=16, patch_size=4)  # fmt: skip


def perturbed(model):
    """Every parameter off its init (DeiT's tokens and positions start at 0), in eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def pixels(height=16, width=16, seed=2):
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))


def keys(directory):
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def edit_config(directory, **changes):
    path = directory / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.fixture(scope="module")
def deit_dir(tmp_path_factory):
    """A DeiTModel (with its pooler) saved by transformers, and that model."""
    torch.manual_seed(0)
    theirs = perturbed(transformers.DeiTModel(transformers.DeiTConfig(**SIZE)))
    directory = tmp_path_factory.mktemp("deit")
    theirs.save_pretrained(directory)
    return directory, theirs


@pytest.mark.parametrize("size", [(16, 16), (24, 20)], ids=["trained", "resized"])
def test_deit_loads_with_outputs_equal_to_transformers(deit_dir, size):
    directory, theirs = deit_dir
    ours = load_pretrained(directory)
    assert isinstance(ours, VisionEncoder)
    assert ours.config.distillation_token and ours.prefix == 2
    assert ours.config.layer_norm_eps == 1e-12  # DeiT's default, as the file says
    x = pixels(*size)
    with torch.no_grad():
        ref = theirs(x, interpolate_pos_encoding=size != (16, 16))
        out = ours(x)
        pooled = ours.pool(out)
    assert out.shape == (2, 2 + (size[0] // 4) * (size[1] // 4), 32)
    torch.testing.assert_close(out, ref.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=ATOL, rtol=0)


def test_deit_saved_back_loads_in_transformers_with_the_same_outputs(deit_dir, tmp_path):
    directory, theirs = deit_dir
    save_pretrained(load_pretrained(directory), tmp_path)
    assert keys(tmp_path) == keys(directory)
    written = json.loads((tmp_path / "config.json").read_text())
    assert (written["model_type"], written["architectures"]) == ("deit", ["DeiTModel"])
    back = transformers.DeiTModel.from_pretrained(tmp_path).eval()
    x = pixels()
    with torch.no_grad():
        ref, out = theirs(x), back(x)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=ATOL, rtol=0)


def test_our_deit_round_trips_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    config = VisionConfig(d_model=32, n_heads=4, d_ff=48, n_layers=2, image_size=16, patch_size=4,
                          norm_first=True, distillation_token=True)  # fmt: skip
    ours = perturbed(VisionEncoder(config))
    save_pretrained(ours, tmp_path)
    back = load_pretrained(tmp_path)
    assert back.config == config
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
