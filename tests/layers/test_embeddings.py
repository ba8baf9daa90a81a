"""Embeddings: the sinusoidal table equals the paper's formula, TokenEmbedding equals transformers'
BertEmbeddings and PatchEmbedding equals ViTEmbeddings with copied weights, bad input is refused."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from encoderkit.layers.embeddings import PatchEmbedding, TokenEmbedding
from encoderkit.layers.positions import SinusoidalPositionalEncoding

V, D, T_MAX = 50, 32, 16
ATOL = 1e-6


def paper_table(max_positions, d_model):
    """Vaswani et al. 3.5 written out position by position in float64."""
    table = torch.zeros(max_positions, d_model, dtype=torch.float64)
    for pos in range(max_positions):
        for j in range(d_model):
            i = j // 2  # columns 2i and 2i + 1 share the frequency 1 / 10000^(2i / d)
            angle = pos / 10000 ** (2 * i / d_model)
            table[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table


def perturb(module, std=0.3):
    """Move every parameter off its init (LayerNorm 1 / 0 included), so a copying mix-up shows."""
    torch.manual_seed(123)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


def token_ids(batch=3, seq_len=7, vocab=V, seed=1):
    torch.manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq_len))


# SinusoidalPositionalEncoding


@pytest.mark.parametrize("d_model", [16, 7, 1])
def test_sinusoidal_equals_the_papers_formula(d_model):
    pe = SinusoidalPositionalEncoding(d_model, 64)
    assert pe.table.dtype == torch.float32
    torch.testing.assert_close(pe(64).double(), paper_table(64, d_model), atol=ATOL, rtol=0)
    torch.testing.assert_close(pe(5), pe.table[:5], atol=0, rtol=0)


def test_sinusoidal_table_is_a_buffer_outside_the_state_dict():
    pe = SinusoidalPositionalEncoding(8, 10)
    assert dict(pe.named_buffers()).keys() == {"table"}
    assert pe.state_dict() == {} and list(pe.parameters()) == []
    emb = TokenEmbedding(V, D, T_MAX, position_encoding="sinusoidal")
    assert not any("positions" in k for k in emb.state_dict())
    assert pe.double().table.dtype == torch.float64  # still moves with the module


@pytest.mark.parametrize("k", [1, 5, 17])
def test_sinusoidal_shift_by_k_is_a_rotation_per_frequency_pair(k):
    d, n = 16, 64
    table = SinusoidalPositionalEncoding(d, n + k)(n + k).double()
    for i in range(d // 2):
        b = k / 10000 ** (2 * i / d)  # the shift's angle at this pair's frequency
        rotation = torch.tensor(
            [[math.cos(b), math.sin(b)], [-math.sin(b), math.cos(b)]], dtype=torch.float64
        )
        pair = table[:, 2 * i : 2 * i + 2]  # (n + k, 2): (sin, cos) of pos * w_i
        shifted = pair[:n] @ rotation.T  # the same matrix for every position
        torch.testing.assert_close(shifted, pair[k:], atol=1e-5, rtol=0)


# TokenEmbedding vs transformers' BertEmbeddings


def bert_embeddings(type_vocab_size=2, pad_token_id=0):
    modeling_bert = pytest.importorskip("transformers.models.bert.modeling_bert")
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=V,
        hidden_size=D,
        max_position_embeddings=T_MAX,
        type_vocab_size=type_vocab_size,
        pad_token_id=pad_token_id,
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
    )
    torch.manual_seed(0)
    theirs = modeling_bert.BertEmbeddings(config)
    perturb(theirs)
    ours = TokenEmbedding(V, D, T_MAX, type_vocab_size, "learned", 1e-12, 0.1, pad_token_id)
    ours.load_state_dict({
        "tokens.weight": theirs.word_embeddings.weight,
        "positions.weight": theirs.position_embeddings.weight,
        "segments.weight": theirs.token_type_embeddings.weight,
        "norm.weight": theirs.LayerNorm.weight,
        "norm.bias": theirs.LayerNorm.bias,
    })  # fmt: skip
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("with_types", [False, True])
@pytest.mark.parametrize("seq_len", [1, 7, T_MAX])
def test_token_embedding_equals_bert_embeddings(with_types, seq_len):
    ours, theirs = bert_embeddings()
    ids = token_ids(seq_len=seq_len)
    types = torch.randint(0, 2, ids.shape) if with_types else None
    with torch.no_grad():
        expected = theirs(input_ids=ids, token_type_ids=types)
        out = ours(ids, types)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_token_embedding_accepts_int32_ids_like_int64():
    ours, _ = bert_embeddings()
    ids = token_ids()
    types = torch.randint(0, 2, ids.shape)
    assert torch.equal(ours(ids.int(), types.int()), ours(ids, types))


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8])
def test_token_embedding_refuses_ids_that_embedding_tables_cannot_index(dtype):
    ours = TokenEmbedding(V, D, T_MAX, dropout=0.0).eval()
    with pytest.raises(TypeError, match=f"int64 or int32 tensor, got dtype {dtype}"):
        ours(token_ids().to(dtype))


def test_learned_positions_with_an_offset_equal_roberta_embeddings():
    """RoBERTa's token t reads position row pad_token_id + 1 + t; the table keeps its
    max_positions rows, so max_positions - offset tokens fit."""
    modeling_roberta = pytest.importorskip("transformers.models.roberta.modeling_roberta")
    from transformers import RobertaConfig

    pad = 1
    config = RobertaConfig(
        vocab_size=V, hidden_size=D, max_position_embeddings=T_MAX, type_vocab_size=1,
        pad_token_id=pad, layer_norm_eps=1e-5,
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = modeling_roberta.RobertaEmbeddings(config)
    perturb(theirs)
    ours = TokenEmbedding(V, D, T_MAX, 1, "learned", 1e-5, 0.1, pad, position_offset=pad + 1)
    ours.load_state_dict({
        "tokens.weight": theirs.word_embeddings.weight,
        "positions.weight": theirs.position_embeddings.weight,
        "segments.weight": theirs.token_type_embeddings.weight,
        "norm.weight": theirs.LayerNorm.weight,
        "norm.bias": theirs.LayerNorm.bias,
    })  # fmt: skip
    ours.eval(), theirs.eval()
    fits = T_MAX - pad - 1
    ids = torch.randint(pad + 1, V, (3, fits))  # no padding token: HF's positions are 2 .. 15
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(input_ids=ids), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=f"{fits + 1} tokens, more than the model's max_positions "
                       f"{T_MAX} less its position_offset 2; truncate"):  # fmt: skip
        ours(torch.randint(pad + 1, V, (1, fits + 1)))


@pytest.mark.parametrize("position_encoding", ["rotary", "alibi", "none"])
def test_positions_inside_attention_add_no_table_and_take_any_length(position_encoding):
    torch.manual_seed(0)
    ours = TokenEmbedding(V, D, T_MAX, position_encoding=position_encoding).eval()
    perturb(ours)
    assert ours.positions is None
    assert set(ours.state_dict()) == {"tokens.weight", "segments.weight", "norm.weight",
                                      "norm.bias"}  # fmt: skip
    ids = token_ids(seq_len=3 * T_MAX)  # past max_positions: advisory only
    x = ours.tokens.weight[ids] + ours.segments.weight[0]
    expected = F.layer_norm(x, (D,), ours.norm.weight, ours.norm.bias, eps=1e-12)
    torch.testing.assert_close(ours(ids), expected, atol=ATOL, rtol=0)


def test_sinusoidal_token_embedding_is_layer_norm_of_tokens_segment0_and_pe():
    torch.manual_seed(0)
    ours = TokenEmbedding(V, D, T_MAX, position_encoding="sinusoidal", dropout=0.1).eval()
    perturb(ours)
    ids = token_ids()
    pe = paper_table(T_MAX, D)[: ids.shape[1]].float()
    x = ours.tokens.weight[ids] + ours.segments.weight[0] + pe
    expected = F.layer_norm(x, (D,), ours.norm.weight, ours.norm.bias, eps=1e-12)
    torch.testing.assert_close(ours(ids), expected, atol=ATOL, rtol=0)


def test_token_embedding_without_segments():
    torch.manual_seed(0)
    ours = TokenEmbedding(V, D, T_MAX, type_vocab_size=0, dropout=0.0)
    perturb(ours)
    assert ours.segments is None
    ids = token_ids()
    x = ours.tokens.weight[ids] + ours.positions.weight[: ids.shape[1]]
    expected = F.layer_norm(x, (D,), ours.norm.weight, ours.norm.bias, eps=1e-12)
    torch.testing.assert_close(ours(ids), expected, atol=ATOL, rtol=0)


# PatchEmbedding vs transformers' ViTEmbeddings

IMAGE, PATCH, CHANNELS = 32, 8, 3


def vit_embeddings():
    modeling_vit = pytest.importorskip("transformers.models.vit.modeling_vit")
    from transformers import ViTConfig

    config = ViTConfig(
        image_size=IMAGE, patch_size=PATCH, num_channels=CHANNELS, hidden_size=D,
        hidden_dropout_prob=0.1,
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = modeling_vit.ViTEmbeddings(config)
    perturb(theirs)
    ours = PatchEmbedding(IMAGE, PATCH, CHANNELS, D, dropout=0.1)
    ours.load_state_dict({
        "cls_token": theirs.cls_token,
        "pos_embed": theirs.position_embeddings,
        "proj.weight": theirs.patch_embeddings.projection.weight,
        "proj.bias": theirs.patch_embeddings.projection.bias,
    })  # fmt: skip
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize(
    "height, width",
    [(32, 32), (48, 48), (16, 16), (48, 40), (40, 48), (64, 16), (8, 24)],
)
def test_patch_embedding_equals_vit_embeddings(height, width):
    ours, theirs = vit_embeddings()
    torch.manual_seed(2)
    pixels = torch.randn(2, CHANNELS, height, width)
    resized = (height, width) != (IMAGE, IMAGE)
    with torch.no_grad():
        expected = theirs(pixels, interpolate_pos_encoding=resized)
        out = ours(pixels)
    n = (height // PATCH) * (width // PATCH)
    assert out.shape == (2, 1 + n, D)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_patch_embedding_layout_is_row_major_patches_after_the_class_token():
    torch.manual_seed(0)
    ours = PatchEmbedding(IMAGE, PATCH, CHANNELS, D).eval()
    perturb(ours)
    pixels = torch.randn(1, CHANNELS, 48, 40)
    out = ours(pixels)
    pos = ours.position_embeddings(6, 5)
    torch.testing.assert_close(out[0, 0], ours.cls_token[0, 0] + pos[0, 0], atol=ATOL, rtol=0)
    w, b = ours.proj.weight.reshape(D, -1), ours.proj.bias
    for r, c in [(0, 0), (0, 4), (5, 0), (3, 2)]:
        patch = pixels[0, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH]
        expected = w @ patch.reshape(-1) + b + pos[0, 1 + r * 5 + c]
        torch.testing.assert_close(out[0, 1 + r * 5 + c], expected, atol=1e-5, rtol=0)


# Bad input

BAD_TEXT_INPUT = [
    (lambda e: e([[1, 2]]), TypeError, "input_ids must be a torch.Tensor, got list"),
    (
        lambda e: e(torch.ones(1, 3)),
        TypeError,
        "input_ids must be an int64 or int32 tensor, got dtype",
    ),
    (lambda e: e(torch.ones(3, dtype=torch.long)), ValueError, r"2-D \(B, T\), got shape \(3,\)"),
    (
        lambda e: e(torch.ones(1, 2, 3, dtype=torch.long)),
        ValueError,
        r"2-D \(B, T\), got shape \(1, 2, 3\)",
    ),
    (lambda e: e(torch.tensor([[1, V]])), ValueError, rf"\[0, {V}\), got values from 1 to {V}"),
    (lambda e: e(torch.tensor([[-1, 3]])), ValueError, rf"\[0, {V}\), got values from -1 to 3"),
    (
        lambda e: e(torch.ones(2, T_MAX + 1, dtype=torch.long)),
        ValueError,
        f"{T_MAX + 1} tokens, more than the model's max_positions {T_MAX}",
    ),
    (
        lambda e: e(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)),
        ValueError,
        r"token_type_ids must have the shape of input_ids \(2, 3\), got \(2, 4\)",
    ),
    (
        lambda e: e(torch.ones(2, 3, dtype=torch.long), torch.full((2, 3), 2)),
        ValueError,
        r"token_type_ids must lie in \[0, 2\), got values from 2 to 2",
    ),
    (
        lambda e: e(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3)),
        TypeError,
        "token_type_ids must be an int64 or int32 tensor",
    ),
]


@pytest.mark.parametrize("call, error, message", BAD_TEXT_INPUT)
def test_token_embedding_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(TokenEmbedding(V, D, T_MAX))


def test_token_embedding_bad_construction_and_missing_segments():
    no_segments = TokenEmbedding(V, D, T_MAX, type_vocab_size=0)
    ids = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="token_type_ids given, but this model has no segment"):
        no_segments(ids, torch.zeros_like(ids))
    with pytest.raises(ValueError, match=r"position_encoding must be one of .*, got 'rope'"):
        TokenEmbedding(V, D, T_MAX, position_encoding="rope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"position_offset must lie in \[0, max_positions=16\)"):
        TokenEmbedding(V, D, T_MAX, position_offset=T_MAX)
    with pytest.raises(ValueError, match="'rotary' has none, so it must be 0, got 2"):
        TokenEmbedding(V, D, T_MAX, position_encoding="rotary", position_offset=2)
    with pytest.raises(TypeError, match="position_offset must be an int, got True"):
        TokenEmbedding(V, D, T_MAX, position_offset=True)
    with pytest.raises(ValueError, match="vocab_size must be a positive int, got 0"):
        TokenEmbedding(0, D, T_MAX)
    with pytest.raises(ValueError, match="max_positions must be a positive int, got 0"):
        TokenEmbedding(V, D, 0)
    with pytest.raises(ValueError, match=r"dropout must be a float in \[0, 1\), got 1.0"):
        TokenEmbedding(V, D, T_MAX, dropout=1.0)
    with pytest.raises(ValueError, match="d_model must be a positive int, got 0"):
        SinusoidalPositionalEncoding(0, 4)


BAD_PIXELS = [
    ([[0.0]], TypeError, "pixels must be a torch.Tensor, got list"),
    (
        torch.ones(1, 3, 32, 32, dtype=torch.uint8),
        TypeError,
        "floating point, got dtype torch.uint8",
    ),
    (torch.ones(3, 32, 32), ValueError, r"4-D \(B, C, H, W\), got shape \(3, 32, 32\)"),
    (
        torch.ones(1, 1, 32, 32),
        ValueError,
        r"must have 3 channels, got 1 \(shape \(1, 1, 32, 32\)\)",
    ),
    (torch.ones(1, 3, 30, 32), ValueError, "divisible by the patch size 8, got 30 x 32"),
    (torch.ones(1, 3, 32, 36), ValueError, "divisible by the patch size 8, got 32 x 36"),
    (torch.ones(2, 3, 0, 0), ValueError, "at least the patch size 8, got 0 x 0"),
    (torch.ones(0, 3, 0, 0), ValueError, "at least the patch size 8, got 0 x 0"),
    (torch.ones(1, 3, 0, 32), ValueError, "at least the patch size 8, got 0 x 32"),
    (torch.ones(1, 3, 32, 4), ValueError, "at least the patch size 8, got 32 x 4"),
    (
        torch.ones(1, 3, 32, 32, dtype=torch.float64),
        TypeError,
        r"pixels must have the module's parameter dtype torch.float32, got torch.float64; "
        r"convert the input with pixels.to\(torch.float32\) or the module with "
        r"module.to\(torch.float64\)",
    ),
    (
        torch.ones(1, 3, 32, 32, dtype=torch.float16),
        TypeError,
        r"parameter dtype torch.float32, got torch.float16; convert the input with "
        r"pixels.to\(torch.float32\)",
    ),
]


@pytest.mark.parametrize("pixels, error, message", BAD_PIXELS)
def test_patch_embedding_bad_input(pixels, error, message):
    with pytest.raises(error, match=message):
        PatchEmbedding(IMAGE, PATCH, CHANNELS, D)(pixels)


def test_patch_embedding_of_an_empty_batch_is_an_empty_batch_of_tokens():
    emb = PatchEmbedding(IMAGE, PATCH, CHANNELS, D)
    for height, width in ((IMAGE, IMAGE), (16, 24)):
        out = emb(torch.ones(0, CHANNELS, height, width))
        assert out.shape == (0, 1 + (height // PATCH) * (width // PATCH), D)
        assert out.dtype == torch.float32


def test_patch_embedding_in_float64_and_under_autocast_takes_those_dtypes():
    torch.manual_seed(0)
    emb = PatchEmbedding(IMAGE, PATCH, CHANNELS, D).eval()
    pixels = torch.randn(2, CHANNELS, IMAGE, IMAGE)
    expected = emb(pixels)
    torch.testing.assert_close(emb.double()(pixels.double()), expected.double(), atol=1e-6, rtol=0)
    emb.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = emb(pixels.bfloat16())
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


def test_patch_embedding_bad_construction():
    with pytest.raises(
        ValueError, match="image_size must be divisible by patch_size, got 30 and 8"
    ):
        PatchEmbedding(30, 8, 3, D)
    with pytest.raises(ValueError, match="patch_size must be a positive int, got 0"):
        PatchEmbedding(32, 0, 3, D)
    with pytest.raises(ValueError, match="num_channels must be a positive int, got -1"):
        PatchEmbedding(32, 8, -1, D)


# Dropout


def assert_dropout_of(train_out, eval_out, p):
    """Every train-mode output is 0 or the eval output scaled by 1 / (1 - p), and both happen."""
    dropped = train_out == 0
    assert 0 < dropped.float().mean() < 1
    kept = eval_out / (1 - p)
    torch.testing.assert_close(train_out[~dropped], kept[~dropped], atol=1e-5, rtol=0)


def test_token_embedding_dropout_inactive_in_eval_active_in_train():
    torch.manual_seed(0)
    emb = TokenEmbedding(V, D, T_MAX, dropout=0.5)
    ids = token_ids()
    emb.eval()
    eval_out = emb(ids)
    assert torch.equal(eval_out, emb(ids))
    x = emb.tokens(ids) + emb.segments.weight[0] + emb.positions.weight[: ids.shape[1]]
    torch.testing.assert_close(eval_out, emb.norm(x), atol=0, rtol=0)
    emb.train()
    first, second = emb(ids), emb(ids)
    assert not torch.equal(first, second)
    assert_dropout_of(first, eval_out, 0.5)


def test_patch_embedding_dropout_inactive_in_eval_active_in_train():
    torch.manual_seed(0)
    emb = PatchEmbedding(IMAGE, PATCH, CHANNELS, D, dropout=0.5)
    pixels = torch.randn(2, CHANNELS, IMAGE, IMAGE)
    emb.eval()
    eval_out = emb(pixels)
    assert torch.equal(eval_out, emb(pixels))
    emb.train()
    first, second = emb(pixels), emb(pixels)
    assert not torch.equal(first, second)
    assert_dropout_of(first, eval_out, 0.5)
