"""Encoder: equal to torch.nn.TransformerEncoder, to a float64 copy, and sane around padding."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    assert_padding_never_read,
    padding_mask,
    perturb_norms_and_biases,
    run_torch_fast_path,
)
from torch import nn

from encoderkit import Encoder, EncoderConfig, record_attention

D, H, FF, L = 16, 4, 32, 3
ATOL = 1e-5


def torch_encoder(norm_first, activation, dropout=0.0):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        D, H, FF, dropout=dropout, activation=activation, batch_first=True, norm_first=norm_first
    )
    norm = nn.LayerNorm(D) if norm_first else None
    encoder = nn.TransformerEncoder(layer, L, norm=norm, enable_nested_tensor=not norm_first)
    perturb_norms_and_biases(encoder)
    return encoder


def tiny(**changes):
    config = dataclasses.replace(EncoderConfig.tiny(), **changes)
    torch.manual_seed(0)
    return Encoder(config)


def batch(lengths=(7, 5, 2), seq_len=7, d=32):
    torch.manual_seed(1)
    return torch.randn(len(lengths), seq_len, d), padding_mask(list(lengths), seq_len)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("padded", [False, True])
def test_equals_torch_encoder_in_train_mode(norm_first, activation, padded):
    theirs = torch_encoder(norm_first, activation).train()
    ours = Encoder.from_torch(theirs).train()
    x, real = batch(d=D)
    expected = theirs(x, src_key_padding_mask=~real if padded else None)
    out = ours(x, real if padded else None)
    rows = real if padded else torch.ones_like(real)
    torch.testing.assert_close(out[rows], expected[rows], atol=ATOL, rtol=0)
    if padded:
        assert (out[~real] == 0).all()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("padded", [False, True])
def test_equals_torch_encoder_fast_path_in_eval(norm_first, activation, padded):
    theirs = torch_encoder(norm_first, activation, dropout=0.1).eval()
    ours = Encoder.from_torch(theirs).eval()
    x, real = batch(d=D)
    expected, fast_calls = run_torch_fast_path(theirs, x, ~real if padded else None)
    with torch.inference_mode():
        out = ours(x, real if padded else None)
    assert fast_calls == L  # every torch layer ran its fused fast path
    nested = padded and not norm_first  # torch then runs on nested tensors and pads with 0
    rows = real if padded and not nested else torch.ones_like(real)
    torch.testing.assert_close(out[rows], expected[rows], atol=ATOL, rtol=0)


@given(
    n_heads=st.integers(1, 4),
    head_dim=st.integers(1, 4),
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    norm_first=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_property_equals_torch_for_random_shapes_and_padding(
    n_heads, head_dim, lengths, norm_first, seed
):
    torch.manual_seed(seed)
    d = n_heads * head_dim
    layer = nn.TransformerEncoderLayer(
        d, n_heads, 2 * d, 0.0, batch_first=True, norm_first=norm_first
    )
    norm = nn.LayerNorm(d) if norm_first else None
    theirs = nn.TransformerEncoder(layer, 2, norm=norm, enable_nested_tensor=False).train()
    ours = Encoder.from_torch(theirs).train()
    t = max(max(lengths), 1)
    x, real = torch.randn(len(lengths), t, d), padding_mask(lengths, t)
    out = ours(x, real)
    assert not out.isnan().any() and (out[~real] == 0).all()
    # torch's own output is NaN for all-padding sequences (pytorch#41508): compare the others
    keep = real.any(-1)
    if not keep.any():
        return
    expected = theirs(x[keep], src_key_padding_mask=~real[keep])
    torch.testing.assert_close(out[keep][real[keep]], expected[real[keep]], atol=ATOL, rtol=0)


def test_from_torch_requires_final_norm_exactly_for_pre_norm():
    layer = nn.TransformerEncoderLayer(D, H, FF, batch_first=True, norm_first=True)
    with pytest.raises(ValueError, match="final norm exactly when the layers are pre-norm"):
        Encoder.from_torch(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
    layer = nn.TransformerEncoderLayer(D, H, FF, batch_first=True)
    with pytest.raises(ValueError, match="norm_first=False"):
        Encoder.from_torch(nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(D)))
    layer = nn.TransformerEncoderLayer(D, H, FF, batch_first=True, norm_first=True)
    for norm in (nn.LayerNorm(D, eps=1e-6), nn.LayerNorm(D, elementwise_affine=False)):
        with pytest.raises(ValueError, match="final norm to match the layers' norms"):
            Encoder.from_torch(nn.TransformerEncoder(layer, 2, norm, enable_nested_tensor=False))
    with pytest.raises(TypeError, match="expected nn.TransformerEncoder, got Linear"):
        Encoder.from_torch(nn.Linear(2, 2))


def test_from_torch_config():
    ours = Encoder.from_torch(torch_encoder(True, "gelu", dropout=0.2))
    c = ours.config
    assert (c.d_model, c.n_heads, c.d_ff, c.n_layers) == (D, H, FF, L)
    assert c.norm_first and c.activation == "gelu"
    assert c.dropout == c.attention_dropout == c.ff_dropout == 0.2  # torch drops the FFN hidden too


@pytest.mark.parametrize("norm_first", [False, True])
def test_math_and_fused_paths_match_float64(norm_first):
    fused = tiny(norm_first=norm_first).eval()
    math = Encoder(dataclasses.replace(fused.config, attention_backend="math")).eval()
    math.load_state_dict(fused.state_dict())
    f64 = copy.deepcopy(math).double()
    x, real = batch()
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    for pattern in (None, causal):
        expected = f64(x.double(), real, pattern)
        torch.testing.assert_close(fused(x, real, pattern).double(), expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(math(x, real, pattern).double(), expected, atol=ATOL, rtol=0)


def test_gradcheck_float64():
    model = tiny(n_layers=2, norm_first=True).double()
    x = torch.randn(2, 4, 32, dtype=torch.float64, requires_grad=True)
    real = padding_mask([4, 2], 4)
    assert torch.autograd.gradcheck(lambda x: model(x, real), (x,))


def test_padded_outputs_are_zero_and_all_padding_sequences_are_safe():
    model = tiny()
    x, real = batch(lengths=(7, 0, 3))
    x.requires_grad_()
    out = model(x, real)
    assert not out.isnan().any()
    assert torch.equal(out[~real], torch.zeros_like(out[~real]))
    out.pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))  # nothing flows from padding


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_sequence_alone_equals_it_inside_a_padded_batch(side):
    model = tiny().eval()
    x, _ = batch(lengths=(7, 7, 7))
    alone = [model(x[i : i + 1, :n]) for i, n in enumerate((7, 4, 2))]
    real = padding_mask([7, 4, 2], 7)
    if side == "left":
        real = real.flip(-1)
        x = torch.stack([x[0], x[1].roll(3, 0), x[2].roll(5, 0)])
    out = model(x, real)
    for i, expected in enumerate(alone):
        torch.testing.assert_close(out[i][real[i]], expected[0], atol=ATOL, rtol=0)


def test_padding_content_never_changes_real_outputs():
    model = tiny().eval()
    x, real = batch()
    noisy = x.masked_fill(~real[..., None], 1e4)
    assert torch.equal(model(x, real), model(noisy, real))


def test_causal_pattern_makes_each_position_see_only_its_prefix():
    model = tiny().eval()
    x, _ = batch(lengths=(7,))
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    full = model(x, attn_mask=causal)
    for t in (1, 4, 7):
        prefix = model(x[:, :t], attn_mask=causal[..., :t, :t])
        torch.testing.assert_close(full[:, :t], prefix, atol=ATOL, rtol=0)


def test_dropout_active_in_train_and_inactive_in_eval():
    model = tiny(dropout=0.2, attention_dropout=0.2)
    x, real = batch()
    model.eval()
    assert torch.equal(model(x, real), model(x, real))
    model.train()
    assert not torch.allclose(model(x, real), model(x, real))


def test_record_attention_on_the_encoder():
    model = tiny(n_layers=3).eval()
    x, real = batch(lengths=(7, 0, 3))
    plain = model(x, real)
    with record_attention(model) as maps:
        out = model(x, real)
    assert torch.equal(out, plain)
    assert [m.shape for m in maps] == [(3, 4, 7, 7)] * 3
    for m in maps:
        assert (m.masked_select(~real[:, None, None, :]) == 0).all()
        sums = m.sum(-1)[real[:, None, :].expand(3, 4, 7)]
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-6, rtol=0)


def test_initialisation_is_bert_style():
    model = Encoder(EncoderConfig.minilm_l6())
    w = model.blocks[0].ff.fc1.weight
    assert abs(w.std().item() - 0.0176) < 2e-3  # N(0, 0.02) truncated at 2 std has std 0.0176
    assert w.abs().max().item() <= 0.04
    assert (model.blocks[0].attn.qkv.bias == 0).all()


def test_bad_input():
    model = tiny()
    with pytest.raises(TypeError, match="config must be an EncoderConfig, got dict"):
        Encoder({"d_model": 32})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"last dimension d_model=32, got shape \(2, 5, 16\)"):
        model(torch.randn(2, 5, 16))
    with pytest.raises(TypeError, match="must be a torch.Tensor, got ndarray"):
        model(torch.randn(2, 5, 32).numpy())
    with pytest.raises(ValueError, match=r"\(B, T\) = \(2, 5\), got \(5,\)"):
        model(torch.randn(2, 5, 32), torch.ones(5, dtype=torch.bool))


# ---- what padding holds, half precision, input dtype ----------------------------------------


@pytest.mark.parametrize("padding_free", [True, False])
@pytest.mark.parametrize("with_pattern", [False, True])
@pytest.mark.parametrize("backend", ["fused", "math"])
@pytest.mark.parametrize("train", [False, True])
def test_nan_and_inf_in_padding_change_no_output_and_no_gradient(
    padding_free, with_pattern, backend, train
):
    model = tiny(
        padding_free=padding_free, attention_backend=backend, dropout=0.1, attention_dropout=0.1
    ).train(train)
    x, real = batch(lengths=(7, 0, 3))
    real[0, 4] = False  # a hole inside a sequence
    pattern = torch.ones(7, 7, dtype=torch.bool).tril()[None, None] if with_pattern else None
    base_out = assert_padding_never_read(model, x, real, pattern)
    assert torch.equal(base_out[~real], torch.zeros_like(base_out[~real]))


@pytest.mark.parametrize("padding_free", [True, False])
@pytest.mark.parametrize("backend", ["fused", "math"])
def test_fp16_encoder_with_large_activations_matches_float64(padding_free, backend):
    model = tiny(padding_free=padding_free, attention_backend=backend).eval().half()
    reference = copy.deepcopy(model).double()  # the same fp16-rounded weights, in float64
    x, real = batch(lengths=(7, 5, 2))
    x = (3000 * x).half()  # post-norm: the first attention sees scores of about 1e6
    out = model(x, real)
    expected = reference(x.double(), real)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_an_input_of_another_dtype_than_the_parameters_is_refused(dtype):
    model = tiny()
    x, real = batch()
    message = (
        rf"x must have the module's parameter dtype torch.float32, got {dtype}; convert the "
        rf"input with x.to\(torch.float32\) or the module with module.to\({dtype}\)"
    )
    for mask in (None, real):
        with pytest.raises(TypeError, match=message):
            model(x.to(dtype), mask)
    converted = copy.deepcopy(model).to(dtype)  # as the message says: then it works
    expected = model(x, real).to(dtype)
    torch.testing.assert_close(converted(x.to(dtype), real), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("padding_free", [True, False])
def test_autocast_bf16_on_cpu_takes_a_bf16_input_to_an_fp32_model(padding_free):
    model = tiny(padding_free=padding_free).eval()
    x, real = batch()
    expected = model(x, real)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_fp32_input = model(x, real)
        out = model(x.bfloat16(), real)
    for result in (out, out_fp32_input):
        torch.testing.assert_close(result.float(), expected, atol=5e-2, rtol=5e-2)


def test_qkv_bias_and_first_attention_norm_shape_the_state_dict():
    model = tiny(norm_first=True, qkv_bias=False, first_attention_norm=False)
    keys = set(model.state_dict())
    assert not any(k.endswith("attn.qkv.bias") for k in keys)
    assert {"blocks.0.attn.proj.bias", "blocks.1.norm1.weight", "blocks.1.norm1.bias"} <= keys
    assert not any(k.startswith("blocks.0.norm1.") for k in keys)
    with pytest.raises(ValueError, match="first_attention_norm=False .* needs norm_first=True"):
        tiny(first_attention_norm=False)
