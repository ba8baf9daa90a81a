"""EncoderBlock: both norm placements equal torch.nn.TransformerEncoderLayer, and the formulas."""

from __future__ import annotations

import pytest
import torch
from reference import (
    assert_padding_never_read,
    padding_mask,
    perturb_norms_and_biases,
    run_torch_fast_path,
)
from torch import nn

from encoderkit import EncoderBlock
from encoderkit.layers.packing import Packing

D, H, FF = 16, 4, 32
ATOL = 1e-5


def torch_layer(norm_first, activation, dropout=0.0, bias=True):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        D, H, FF, dropout=dropout, activation=activation, batch_first=True,
        norm_first=norm_first, bias=bias,
    )  # fmt: skip
    perturb_norms_and_biases(layer)
    return layer


def inputs(lengths=(6, 4, 1)):
    torch.manual_seed(1)
    return torch.randn(len(lengths), 6, D), padding_mask(list(lengths), 6)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("padded", [False, True])
def test_equals_torch_layer_in_train_mode(norm_first, activation, padded):
    theirs = torch_layer(norm_first, activation)
    ours = EncoderBlock.from_torch(theirs)
    x, real = inputs()
    theirs.train(), ours.train()  # dropout 0: the slow path, which is deterministic
    kpm = ~real if padded else None
    # ours reads padded positions as 0, so torch gets the zeros. Attention reads its padded
    # queries as 0 too, where torch's pre-norm block gives them norm1(0): padded rows differ
    # there, and the real rows are compared.
    zeroed = x.masked_fill(~real[..., None], 0.0) if padded else x
    expected = theirs(zeroed, src_key_padding_mask=kpm)
    out = ours(x, real if padded else None)
    rows = real if padded else torch.ones_like(real)
    torch.testing.assert_close(out[rows], expected[rows], atol=ATOL, rtol=0)
    expected[rows].pow(2).sum().backward()
    out[rows].pow(2).sum().backward()
    torch.testing.assert_close(
        ours.attn.qkv.weight.grad, theirs.self_attn.in_proj_weight.grad, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        ours.ff.fc1.weight.grad, theirs.linear1.weight.grad, atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("padded", [False, True])
def test_equals_torch_layer_fast_path_in_eval(norm_first, activation, padded):
    theirs = torch_layer(norm_first, activation, dropout=0.1).eval()
    ours = EncoderBlock.from_torch(theirs).eval()
    x, real = inputs()
    expected, fast_calls = run_torch_fast_path(theirs, x, ~real if padded else None)
    with torch.inference_mode():
        out = ours(x, real if padded else None)
    assert fast_calls == 1  # torch really took its fused fast path
    # torch's fast path leaves padded rows undefined: compare real tokens
    rows = real if padded else torch.ones_like(real)
    torch.testing.assert_close(out[rows], expected[rows], atol=ATOL, rtol=0)


def test_from_torch_copies_bias_free_layers_and_float64():
    theirs = torch_layer(True, "gelu", bias=False).double()
    ours = EncoderBlock.from_torch(theirs)
    assert ours.attn.qkv.bias is None and ours.norm1.bias is None
    assert ours.attn.qkv.weight.dtype == torch.float64
    x, _ = inputs()
    torch.testing.assert_close(ours(x.double()), theirs(x.double()), atol=1e-12, rtol=0)


def test_from_torch_carries_dropout_rates_and_tanh_gelu():
    theirs = nn.TransformerEncoderLayer(D, H, FF, dropout=0.2, activation=nn.GELU("tanh"))
    ours = EncoderBlock.from_torch(theirs)
    assert ours.drop.p == 0.2 and ours.attn.dropout == 0.2 and ours.ff.drop.p == 0.2
    assert ours.ff.activation == "gelu_tanh"


def test_from_torch_rejects_other_activations_and_types():
    theirs = nn.TransformerEncoderLayer(D, H, FF, activation=torch.tanh)
    with pytest.raises(ValueError, match="expected a relu or gelu activation"):
        EncoderBlock.from_torch(theirs)
    with pytest.raises(TypeError, match="expected nn.TransformerEncoderLayer, got Linear"):
        EncoderBlock.from_torch(nn.Linear(2, 2))


@pytest.mark.parametrize("norm_first", [False, True])
def test_forward_is_the_paper_formula(norm_first):
    torch.manual_seed(0)
    block = EncoderBlock(D, H, FF, dropout=0.0, attention_dropout=0.0, norm_first=norm_first)
    x, real = inputs()
    a, f, n1, n2 = block.attn, block.ff, block.norm1, block.norm2
    block_out = block(x, real)
    x = x.masked_fill(~real[..., None], 0.0)  # the block reads padded positions as 0
    keys = real[:, None, None, :]  # (B, T) -> (B, 1, 1, T): padded keys are masked
    if norm_first:  # ViT / GPT: x + sublayer(norm(x))
        h = x + a(n1(x), attn_mask=keys)
        expected = h + f(n2(h))
    else:  # Vaswani / BERT: norm(x + sublayer(x))
        h = n1(x + a(x, attn_mask=keys))
        expected = n2(h + f(h))
    torch.testing.assert_close(block_out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_gradcheck_float64(norm_first):
    torch.manual_seed(0)
    block = EncoderBlock(8, 2, 12, 0.0, norm_first=norm_first, attention_dropout=0.0).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    real = padding_mask([4, 2], 4)
    assert torch.autograd.gradcheck(lambda x: block(x, real), (x,))


def test_dropout_active_in_train_inactive_in_eval():
    torch.manual_seed(0)
    block = EncoderBlock(D, H, FF, dropout=0.3)
    x, real = inputs()
    block.eval()
    assert torch.equal(block(x, real), block(x, real))
    no_dropout = EncoderBlock(D, H, FF, dropout=0.0, attention_dropout=0.0).eval()
    no_dropout.load_state_dict(block.state_dict())
    torch.testing.assert_close(block(x, real), no_dropout(x, real), atol=0, rtol=0)
    block.train()
    assert not torch.allclose(block(x, real), block(x, real))


def test_all_padding_sequence_gives_no_nan_and_finite_gradients():
    torch.manual_seed(0)
    block = EncoderBlock(D, H, FF, dropout=0.0, attention_dropout=0.0)
    x, real = inputs((6, 0, 3))
    x.requires_grad_()
    out = block(x, real)
    out[real].sum().backward()  # a loss over real tokens only
    assert not out.isnan().any()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())
    assert torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))


def test_bad_input():
    block = EncoderBlock(D, H, FF)
    with pytest.raises(ValueError, match=r"3-D \(B, T, D\), got 4-D"):
        block(torch.randn(1, 2, 6, D))
    with pytest.raises(ValueError, match="d_model=16 and n_heads=3"):
        EncoderBlock(D, 3, FF)
    with pytest.raises(ValueError, match=r"dropout must be a float in \[0, 1\), got 1"):
        EncoderBlock(D, H, FF, dropout=1)
    with pytest.raises(ValueError, match="activation must be one of"):
        EncoderBlock(D, H, FF, activation="swish")


def test_layer_norm_eps_is_used():
    block = EncoderBlock(D, H, FF, layer_norm_eps=1e-12)
    assert block.norm1.eps == block.norm2.eps == 1e-12


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("with_pattern", [False, True])
@pytest.mark.parametrize("backend", ["fused", "math"])
@pytest.mark.parametrize("train", [False, True])
def test_nan_and_inf_in_padding_change_no_output_and_no_gradient(
    norm_first, with_pattern, backend, train
):
    torch.manual_seed(0)
    block = EncoderBlock(
        D, H, FF, dropout=0.2, attention_dropout=0.2, norm_first=norm_first,
        attention_backend=backend,
    ).train(train)  # fmt: skip
    perturb_norms_and_biases(block)
    x, real = inputs((6, 0, 3))
    real[0, 1] = False  # a hole inside a sequence
    pattern = torch.ones(6, 6, dtype=torch.bool).tril()[None, None] if with_pattern else None
    assert_padding_never_read(block, x, real, pattern)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_an_input_of_another_dtype_than_the_parameters_is_refused(dtype):
    block = EncoderBlock(D, H, FF)
    message = (
        rf"x must have the module's parameter dtype torch.float32, got {dtype}; convert the "
        rf"input with x.to\(torch.float32\) or the module with module.to\({dtype}\)"
    )
    x, real = inputs()
    with pytest.raises(TypeError, match=message):
        block(x.to(dtype), real)
    packing = Packing.from_mask(real)
    with pytest.raises(TypeError, match=message):
        block(packing.pack(x).to(dtype), packing=packing)


def test_autocast_bf16_on_cpu_takes_a_bf16_input_to_an_fp32_block():
    torch.manual_seed(0)
    block = EncoderBlock(D, H, FF).eval()
    x, real = inputs()
    expected = block(x, real)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x.bfloat16(), real)
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


def test_without_attention_norm_attention_reads_the_residual_stream():
    """ModernBERT's first layer: x + attn(x), then x + ff(norm2(x)); no norm1 parameters."""
    torch.manual_seed(0)
    block = EncoderBlock(D, H, FF, 0.0, norm_first=True, attention_dropout=0.0,
                         attention_norm=False)  # fmt: skip
    assert isinstance(block.norm1, nn.Identity)
    assert not any(name.startswith("norm1") for name in block.state_dict())
    x, real = inputs()
    x = x.masked_fill(~real[..., None], 0.0)
    h = x + block.attn(x, attn_mask=real[:, None, None, :])
    torch.testing.assert_close(block(x, real), h + block.ff(block.norm2(h)), atol=0, rtol=0)
    with pytest.raises(ValueError, match="attention_norm=False .* needs norm_first=True"):
        EncoderBlock(D, H, FF, attention_norm=False)


def test_qkv_bias_false_drops_only_the_qkv_bias():
    block = EncoderBlock(D, H, FF, qkv_bias=False)
    assert block.attn.qkv.bias is None and block.attn.proj.bias is not None
    assert block.ff.fc1.bias is not None and block.norm1.bias is not None
    assert EncoderBlock(D, H, FF, bias=False, qkv_bias=True).attn.qkv.bias is None
