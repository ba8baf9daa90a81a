"""Scaled dot-product attention and multi-head self-attention against float64 references."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import padding_mask, reference_attention, reference_self_attention
from torch import nn

from encoderkit import (
    MultiHeadSelfAttention,
    attention_weights,
    make_attention_mask,
    record_attention,
    scaled_dot_product_attention,
)
from encoderkit.layers.packing import Packing

B, H, T, K = 3, 4, 7, 8
ATOL = 1e-5  # fp32 against float64, as torch's own SDPA tests


def qkv(dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(B, H, T, K, generator=g, dtype=dtype).requires_grad_(requires_grad)
        for _ in range(3)
    ]


def masks():
    """Every mask kind the attention accepts, each with at least one row that sees no key."""
    g = torch.Generator().manual_seed(1)
    pad = padding_mask([T, 4, 0], T)[:, None, None, :]  # sample 2 is all padding
    pattern = torch.rand(B, H, T, T, generator=g) > 0.4
    pattern[0, 1, 3] = False  # one query row of one head sees nothing
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    additive = torch.randn(B, 1, T, T, generator=g)
    additive[1, 0, 2] = float("-inf")  # a fully forbidden row in float form
    additive[2, 0, :, :3] = float("-inf")
    return {
        "none": None,
        "padding": pad,
        "pattern": pattern,
        "causal": causal,
        "additive": additive,
        "padding+pattern": pad & pattern,
        "padding+additive": additive.masked_fill(~pad, float("-inf")),
    }


MASKS = masks()


@pytest.mark.parametrize("backend", ["math", "fused", "auto"])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_fp32_paths_match_float64_reference(backend, mask_name):
    q, k, v = qkv()
    mask = MASKS[mask_name]
    expected, _ = reference_attention(q, k, v, mask)
    out = scaled_dot_product_attention(q, k, v, mask, backend=backend)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["math", "fused"])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_float64_paths_match_reference_exactly(backend, mask_name):
    q, k, v = qkv(torch.float64)
    expected, _ = reference_attention(q, k, v, MASKS[mask_name])
    out = scaled_dot_product_attention(q, k, v, MASKS[mask_name], backend=backend)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_fused_matches_math_forward_and_backward(mask_name):
    mask = MASKS[mask_name]
    grads = {}
    for backend in ("math", "fused"):
        q, k, v = qkv(requires_grad=True)
        out = scaled_dot_product_attention(q, k, v, mask, backend=backend)
        (out * torch.linspace(-1, 1, K)).sum().backward()
        grads[backend] = (out.detach(), q.grad, k.grad, v.grad)
    for a, b in zip(grads["math"], grads["fused"], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_attention_weights_match_reference():
    q, k, _ = qkv()
    for mask in MASKS.values():
        _, expected = reference_attention(q, k, k, mask)
        torch.testing.assert_close(
            attention_weights(q, k, mask).double(), expected, atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("backend", ["math", "fused"])
@pytest.mark.parametrize("form", ["bool", "float"])
def test_rows_with_nothing_to_attend_give_zero_output_and_gradient(backend, form):
    pad = padding_mask([T, 0, 3], T)[:, None, None, :]  # sample 1 has no real token
    pattern = pad.expand(B, H, T, T).clone()
    pattern[0, 2, 5] = False  # and one row of a real sequence is fully forbidden
    additive = torch.zeros(pattern.shape).masked_fill(~pattern, -torch.inf)
    mask = pattern if form == "bool" else additive
    q, k, v = qkv(requires_grad=True)
    out = scaled_dot_product_attention(q, k, v, mask, backend=backend)
    out.pow(2).sum().backward()
    assert not out.isnan().any()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(out[0, 2, 5], torch.zeros(K))
    for grad in (q.grad, k.grad, v.grad):
        assert torch.isfinite(grad).all()
    assert torch.equal(q.grad[1], torch.zeros_like(q.grad[1]))
    assert torch.equal(q.grad[0, 2, 5], torch.zeros(K))
    assert torch.equal(k.grad[1], torch.zeros_like(k.grad[1]))
    assert torch.equal(v.grad[1], torch.zeros_like(v.grad[1]))


def test_bool_mask_equals_float_mask_with_minus_inf():
    q, k, v = qkv()
    pattern = MASKS["pattern"]
    additive = torch.zeros(pattern.shape).masked_fill(~pattern, float("-inf"))
    for backend in ("math", "fused"):
        a = scaled_dot_product_attention(q, k, v, pattern, backend=backend)
        b = scaled_dot_product_attention(q, k, v, additive, backend=backend)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_all_true_mask_equals_no_mask():
    q, k, v = qkv()
    for backend in ("math", "fused"):
        full = torch.ones(1, 1, 1, T, dtype=torch.bool)
        a = scaled_dot_product_attention(q, k, v, full, backend=backend)
        b = scaled_dot_product_attention(q, k, v, None, backend=backend)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["math", "fused"])
def test_masked_keys_have_no_influence(backend):
    q, k, v = qkv()
    mask = padding_mask([T, 4, 2], T)[:, None, None, :]
    poisoned_k, poisoned_v = k.clone(), v.clone()
    hidden = ~mask[:, 0, 0]  # (B, T) padded keys
    poisoned_k[hidden.nonzero(as_tuple=True)[0], :, hidden.nonzero(as_tuple=True)[1]] = 1e4
    poisoned_v[hidden.nonzero(as_tuple=True)[0], :, hidden.nonzero(as_tuple=True)[1]] = -1e4
    a = scaled_dot_product_attention(q, k, v, mask, backend=backend)
    b = scaled_dot_product_attention(q, poisoned_k, poisoned_v, mask, backend=backend)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["math", "fused"])
def test_gradcheck_float64(backend):
    q, k, v = qkv(torch.float64, requires_grad=True)
    q, k, v = (t[:2, :2, :5, :4].detach().requires_grad_() for t in (q, k, v))
    mask = padding_mask([5, 3], 5)[:, None, None, :]

    def f(q, k, v):
        return scaled_dot_product_attention(q, k, v, mask, backend=backend)

    assert torch.autograd.gradcheck(f, (q, k, v))
    if backend == "math":  # the fused kernels' backward is not itself differentiable on CPU
        assert torch.autograd.gradgradcheck(f, (q, k, v))


def test_math_dropout_drops_probabilities_then_multiplies_v():
    q, k, v = qkv()
    mask = MASKS["padding"]
    torch.manual_seed(7)
    out = scaled_dot_product_attention(q, k, v, mask, dropout_p=0.5, backend="math")
    torch.manual_seed(7)
    expected = torch.nn.functional.dropout(attention_weights(q, k, mask), 0.5) @ v
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert not torch.allclose(out, scaled_dot_product_attention(q, k, v, mask, backend="math"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("backend", ["math", "fused"])
def test_output_dtype_follows_input(dtype, backend):
    q, k, v = qkv(dtype)
    out = scaled_dot_product_attention(q, k, v, MASKS["additive"], backend=backend)
    assert out.dtype == dtype
    expected, _ = reference_attention(q, k, v, MASKS["additive"].to(dtype))
    tol = 3e-2 if dtype == torch.bfloat16 else ATOL
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)


@given(
    b=st.integers(1, 3),
    h=st.integers(1, 4),
    t=st.integers(1, 9),
    k=st.integers(1, 8),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_property_paths_agree_and_never_nan(b, h, t, k, data):
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    q, kk, v = (torch.randn(b, h, t, k, generator=g) for _ in range(3))
    kind = data.draw(st.sampled_from(["padding", "pattern", "additive"]))
    lengths = data.draw(st.lists(st.integers(0, t), min_size=b, max_size=b))
    mask = padding_mask(lengths, t)[:, None, None, :]
    if kind == "pattern":
        mask = mask & (torch.rand(b, h, t, t, generator=g) > 0.5)
    elif kind == "additive":
        mask = torch.randn(b, 1, t, t, generator=g).masked_fill(~mask, float("-inf"))
    expected, probs = reference_attention(q, kk, v, mask)
    empty = probs.sum(-1) == 0  # (b, h, t) rows that see no key
    for backend in ("math", "fused"):
        out = scaled_dot_product_attention(q, kk, v, mask, backend=backend)
        assert not out.isnan().any()
        torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=0)
        assert (out[empty] == 0).all()


def test_attention_errors_name_expected_and_actual():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q must be 4-D \(B, H, T, K\), got shape \(3, 7, 8\)"):
        scaled_dot_product_attention(q[:, 0], k, v)
    with pytest.raises(TypeError, match="share a dtype"):
        scaled_dot_product_attention(q, k.double(), v)
    with pytest.raises(ValueError, match="backend must be one of"):
        scaled_dot_product_attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match=r"dropout_p must be a float in \[0, 1\), got 1.0"):
        scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError, match="k, v"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(TypeError, match="floating"):
        scaled_dot_product_attention(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match=r"mask must be 4-D, .* got shape \(2, 7\)"):
        scaled_dot_product_attention(q, k, v, torch.ones(2, T, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be bool or floating"):
        scaled_dot_product_attention(q, k, v, torch.ones(1, 1, 1, T, dtype=torch.long))


# ---- multi-head self-attention ------------------------------------------------------------


def mhsa(d_model=16, n_heads=4, **kw):
    torch.manual_seed(0)
    module = MultiHeadSelfAttention(d_model, n_heads, **kw)
    for p in module.parameters():  # non-zero biases so a bias mix-up shows
        nn.init.normal_(p, std=0.3)
    return module


@pytest.mark.parametrize("backend", ["math", "fused"])
@pytest.mark.parametrize("with_pattern", [False, True])
def test_mhsa_matches_head_by_head_reference(backend, with_pattern):
    module = mhsa(backend=backend)
    x = torch.randn(3, 6, 16)
    attention_mask = padding_mask([6, 3, 1], 6)
    pattern = torch.rand(1, 4, 6, 6) > 0.3 if with_pattern else None
    out = module(x, attention_mask, pattern)
    mask = make_attention_mask(
        attention_mask, pattern, batch_size=3, seq_len=6, n_heads=4, dtype=torch.float64
    )
    zeroed = x.masked_fill(~attention_mask[..., None], 0.0)  # padded positions are read as 0
    expected = reference_self_attention(
        zeroed, module.qkv.weight, module.qkv.bias, module.proj.weight, module.proj.bias, 4, mask
    )
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=0)


def test_mhsa_without_bias_matches_reference():
    module = mhsa(bias=False)
    x = torch.randn(2, 5, 16)
    expected = reference_self_attention(x, module.qkv.weight, None, module.proj.weight, None, 4)
    torch.testing.assert_close(module(x).double(), expected, atol=ATOL, rtol=0)


def test_mhsa_matches_torch_multihead_attention():
    module = mhsa()
    theirs = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(module.qkv.weight)
        theirs.in_proj_bias.copy_(module.qkv.bias)
        theirs.out_proj.weight.copy_(module.proj.weight)
        theirs.out_proj.bias.copy_(module.proj.bias)
    x = torch.randn(3, 6, 16)
    attention_mask = padding_mask([6, 4, 2], 6)
    zeroed = x.masked_fill(~attention_mask[..., None], 0.0)  # ours reads padded positions as 0
    expected, _ = theirs(zeroed, zeroed, zeroed, ~attention_mask, need_weights=False)
    torch.testing.assert_close(module(x, attention_mask), expected, atol=ATOL, rtol=0)


def test_mhsa_dropout_only_in_training():
    module = mhsa(dropout=0.5)
    reference = mhsa(dropout=0.0)
    x = torch.randn(2, 6, 16)
    module.eval()
    assert torch.equal(module(x), module(x))
    torch.testing.assert_close(module(x), reference(x), atol=0, rtol=0)
    module.train()
    torch.manual_seed(0)
    a = module(x)
    b = module(x)
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, reference(x))


def test_mhsa_errors_name_expected_and_actual():
    with pytest.raises(ValueError, match="d_model=10 and n_heads=4"):
        MultiHeadSelfAttention(10, 4)
    with pytest.raises(ValueError, match=r"dropout must be a float in \[0, 1\), got -0.1"):
        MultiHeadSelfAttention(16, 4, dropout=-0.1)
    module = mhsa()
    with pytest.raises(ValueError, match=r"3-D \(B, T, D\), got 2-D with shape \(6, 16\)"):
        module(torch.randn(6, 16))
    with pytest.raises(ValueError, match=r"last dimension d_model=16, got shape \(2, 6, 8\)"):
        module(torch.randn(2, 6, 8))
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        module(torch.ones(2, 6, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\) = \(2, 6\), got \(2, 5\)"):
        module(torch.randn(2, 6, 16), torch.ones(2, 5, dtype=torch.bool))


# ---- record_attention ---------------------------------------------------------------------


def test_record_attention_maps_are_probabilities_and_leave_output_unchanged():
    model = nn.Sequential(mhsa(), mhsa())
    model[0].eval(), model[1].eval()
    x = torch.randn(3, 6, 16)
    attention_mask = padding_mask([6, 3, 0], 6)

    def forward():
        h = model[0](x, attention_mask)
        return model[1](h, attention_mask), h

    plain, hidden = forward()
    with record_attention(model) as maps:
        recorded, _ = forward()
    assert torch.equal(plain, recorded)  # bit-identical
    assert len(maps) == 2 and all(m.shape == (3, 4, 6, 6) for m in maps)
    for m, inp, layer in zip(maps, (x, hidden), model, strict=True):
        key_real = attention_mask[:, None, None, :].expand_as(m)
        assert (m[~key_real] == 0).all()  # padded keys get nothing
        sums = m.sum(-1)
        torch.testing.assert_close(sums[:2], torch.ones_like(sums[:2]), atol=1e-6, rtol=0)
        assert (sums[2] == 0).all()  # all-padding sequence: nothing to attend to
        inp = inp.masked_fill(~attention_mask[..., None], 0.0)  # padded positions are read as 0
        q, k, _ = layer.qkv(inp).view(3, 6, 3, 4, 4).permute(2, 0, 3, 1, 4)
        _, expected = reference_attention(q, k, k, attention_mask[:, None, None, :])
        torch.testing.assert_close(m.double(), expected, atol=1e-6, rtol=0)
    assert not maps[0].requires_grad
    forward()
    assert len(maps) == 2  # recording stops when the block exits
    assert all(layer.recorded is None for layer in model)


def test_record_attention_errors():
    with pytest.raises(ValueError, match="no MultiHeadSelfAttention"):
        with record_attention(nn.Linear(2, 2)):
            pass
    module = mhsa()
    with record_attention(module):
        with pytest.raises(RuntimeError, match="already active"):
            with record_attention(module):
                pass


# ---- what padding holds, half precision, input dtype ----------------------------------------

POISONS = [float("nan"), float("inf"), float("-inf")]


def forward_and_backward(module, x, real, fill, pattern=None, seed=3):
    """Output, input gradient, parameter gradients and recorded maps for x with ``fill`` at
    padded positions; the same seed gives the same dropout masks."""
    module.zero_grad()
    xi = x.masked_fill(~real[..., None], fill).requires_grad_()
    torch.manual_seed(seed)
    with record_attention(module) as maps:
        out = module(xi, real, pattern)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out, xi.grad, [p.grad.clone() for p in module.parameters()], maps


@pytest.mark.parametrize("backend", ["math", "fused"])
@pytest.mark.parametrize("with_pattern", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_mhsa_nan_and_inf_in_padding_change_no_output_gradient_or_map(backend, with_pattern, train):
    module = mhsa(backend=backend, dropout=0.2).train(train)
    torch.manual_seed(1)
    x = torch.randn(3, 6, 16)
    real = padding_mask([6, 3, 0], 6)
    real[0, 2] = False  # a hole inside a sequence
    pattern = torch.rand(1, 4, 6, 6) > 0.3 if with_pattern else None
    base_out, base_dx, base_dp, base_maps = forward_and_backward(module, x, real, 0.0, pattern)
    assert torch.isfinite(base_out).all()
    for fill in POISONS:
        out, dx, dp, maps = forward_and_backward(module, x, real, fill, pattern)
        assert torch.equal(out, base_out), fill  # every row: padded ones are read as 0
        assert torch.isfinite(dx).all() and torch.equal(dx, base_dx), fill
        assert torch.equal(dx[~real], torch.zeros_like(dx[~real]))
        for a, b in zip(dp, base_dp, strict=True):
            assert torch.isfinite(a).all() and torch.equal(a, b), fill
        assert torch.equal(maps[0], base_maps[0]), fill


def half_qkv(dtype, regime="peaked"):
    """q, k, v whose scores q . k pass fp16's largest value, 65504.

    ``"peaked"``: entries of about 1e4, scores about 1e8 apart, so each softmax row is one-hot.
    ``"soft"``: keys near a common large vector, so scores of about 1e5 differ by units and the
    softmax spreads, which tests the precision of the scores, not only their range.
    """
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, K, generator=g) for _ in range(3))
    if regime == "soft":
        q, k = 30 + 30 * q, 300 + 0.5 * k
    else:
        q, k = 1e4 * q, 1e4 * k
    return [t.to(dtype) for t in (q, k, 1e4 * v)]


HALF_EPS = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # 2 units in the last place


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["math", "fused"])
@pytest.mark.parametrize("mask_name", ["none", "padding", "additive"])
@pytest.mark.parametrize("regime", ["peaked", "soft"])
def test_half_precision_scores_are_computed_in_float32(dtype, backend, mask_name, regime):
    q, k, v = half_qkv(dtype, regime)
    mask = MASKS[mask_name]
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)  # as the modules pass it: in the input's dtype
    expected, _ = reference_attention(q, k, v, mask)
    out = scaled_dot_product_attention(q, k, v, mask, backend=backend)
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = HALF_EPS[dtype] * float(v.abs().max())  # errors of probs (<= 1) times v
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_attention_weights_are_finite_probabilities(dtype):
    mask = MASKS["padding"]
    for regime in ("peaked", "soft"):
        q, k, _ = half_qkv(dtype, regime)
        _, expected = reference_attention(q, k, k, mask)
        probs = attention_weights(q, k, mask)
        assert probs.dtype == dtype and torch.isfinite(probs).all()
        torch.testing.assert_close(probs.double(), expected, atol=HALF_EPS[dtype], rtol=0)
        sums = probs.double().sum(-1)[:2]  # sample 2 is all padding: rows of 0
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=T * HALF_EPS[dtype], rtol=0)
        assert (probs[2] == 0).all()


@pytest.mark.parametrize("backend", ["math", "fused"])
def test_fp16_module_with_large_activations_matches_float64_and_records_finite_maps(backend):
    module = mhsa(backend=backend).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 6, 16) * 300  # q . k reach about 1e6 per head, past fp16's 65504
    real = padding_mask([6, 4], 6)
    half = module.half()
    with record_attention(half) as maps:
        out = half(x.half(), real)
    zeroed = x.half().masked_fill(~real[..., None], 0.0)
    weights = [p.detach() for p in (half.qkv.weight, half.qkv.bias, half.proj.weight)]
    expected = reference_self_attention(
        zeroed, *weights, half.proj.bias.detach(), 4, real[:, None, None, :]
    )
    assert torch.isfinite(out).all() and torch.isfinite(maps[0]).all()
    scale = float(expected.abs().max())
    torch.testing.assert_close(out.double(), expected, atol=4e-3 * scale, rtol=0)
    sums = maps[0].double().sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_mhsa_refuses_an_input_of_another_dtype_than_its_parameters(dtype):
    module = mhsa()
    message = (
        rf"x must have the module's parameter dtype torch.float32, got {dtype}; convert the "
        rf"input with x.to\(torch.float32\) or the module with module.to\({dtype}\)"
    )
    with pytest.raises(TypeError, match=message):
        module(torch.randn(2, 6, 16, dtype=dtype))
    with pytest.raises(TypeError, match=message):  # the packed path too
        module(torch.randn(5, 16, dtype=dtype), packing=Packing.from_mask(padding_mask([3, 2], 3)))


def test_mhsa_in_float64_and_under_autocast_takes_other_dtypes():
    module = mhsa().eval()
    x = torch.randn(2, 6, 16)
    real = padding_mask([6, 4], 6)
    expected = module(x, real)
    out64 = copy.deepcopy(module).double()(x.double(), real)
    torch.testing.assert_close(out64, expected.double(), atol=ATOL, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x.bfloat16(), real)  # bf16 input, fp32 weights: autocast casts
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)
