"""PatchEmbedding with DeiT's distillation token equals transformers' DeiTEmbeddings with copied
weights, at the trained size and on a resized grid, and keeps both special tokens' positions."""

from __future__ import annotations

import pytest
import torch

from encoderkit.layers.embeddings import PatchEmbedding

IMAGE, PATCH, CHANNELS, D = 32, 8, 3, 32
ATOL = 1e-6


@pytest.fixture(scope="module")
def deit_embeddings():
    modeling_deit = pytest.importorskip("transformers.models.deit.modeling_deit")
    from transformers import DeiTConfig

    config = DeiTConfig(image_size=IMAGE, patch_size=PATCH, num_channels=CHANNELS, hidden_size=D)
    torch.manual_seed(0)
    theirs = modeling_deit.DeiTEmbeddings(config).eval()
    with torch.no_grad():  # DeiT initialises its tokens and positions to 0: make them count
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ours = PatchEmbedding(IMAGE, PATCH, CHANNELS, D, distillation_token=True).eval()
    ours.load_state_dict({
        "cls_token": theirs.cls_token,
        "dist_token": theirs.distillation_token,
        "pos_embed": theirs.position_embeddings,
        "proj.weight": theirs.patch_embeddings.projection.weight,
        "proj.bias": theirs.patch_embeddings.projection.bias,
    })  # fmt: skip
    return ours, theirs


@pytest.mark.parametrize("height, width", [(32, 32), (48, 48), (48, 40), (16, 24)])
def test_patch_embedding_with_distillation_token_equals_deit_embeddings(
    deit_embeddings, height, width
):
    ours, theirs = deit_embeddings
    pixels = torch.randn(2, CHANNELS, height, width, generator=torch.Generator().manual_seed(2))
    resized = (height, width) != (IMAGE, IMAGE)
    with torch.no_grad():
        expected = theirs(pixels, interpolate_pos_encoding=resized)
        out = ours(pixels)
    assert ours.prefix == 2
    assert out.shape == (2, 2 + (height // PATCH) * (width // PATCH), D)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_the_special_tokens_come_first_with_their_positions_never_resized(deit_embeddings):
    ours, _ = deit_embeddings
    pixels = torch.randn(1, CHANNELS, 48, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = ours(pixels)
        pos = ours.position_embeddings(6, 5)
    assert pos.shape == (1, 2 + 6 * 5, D)
    torch.testing.assert_close(pos[:, :2], ours.pos_embed[:, :2], atol=0, rtol=0)
    torch.testing.assert_close(out[0, 0], (ours.cls_token + ours.pos_embed[:, 0])[0, 0])
    torch.testing.assert_close(out[0, 1], (ours.dist_token + ours.pos_embed[:, 1])[0, 0])
    w, b = ours.proj.weight.reshape(D, -1), ours.proj.bias
    patch = pixels[0, :, 3 * PATCH : 4 * PATCH, 2 * PATCH : 3 * PATCH]  # row 3, column 2
    expected = w @ patch.reshape(-1) + b + pos[0, 2 + 3 * 5 + 2]
    torch.testing.assert_close(out[0, 2 + 3 * 5 + 2], expected, atol=1e-5, rtol=0)


def test_without_the_flag_there_is_no_distillation_token():
    emb = PatchEmbedding(IMAGE, PATCH, CHANNELS, D)
    assert emb.dist_token is None and emb.prefix == 1
    assert emb.pos_embed.shape == (1, 1 + 16, D)
    assert "dist_token" not in emb.state_dict()
    distilled = PatchEmbedding(IMAGE, PATCH, CHANNELS, D, distillation_token=True)
    assert distilled.pos_embed.shape == (1, 2 + 16, D)


def test_distillation_token_must_be_a_bool():
    with pytest.raises(TypeError, match="distillation_token must be a bool, got 1"):
        PatchEmbedding(IMAGE, PATCH, CHANNELS, D, distillation_token=1)  # type: ignore[arg-type]
