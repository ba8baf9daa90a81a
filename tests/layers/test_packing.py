"""Padding-free execution: packing, attention on packed tokens, and the encoder run padding-free,
all equal to the padded path and to the float64 reference, forward and backward."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import padding_mask, perturb_norms_and_biases, reference_attention

from encoderkit import Encoder, EncoderConfig, TextConfig, TextEncoder, record_attention
from encoderkit.layers.attention import scaled_dot_product_attention
from encoderkit.layers.packing import Packing
from encoderkit.layers.varlen import pick_varlen_kernel, varlen_attention

ATOL = 1e-5
KERNELS = ["loop", "repad"]


def holes_mask():
    """Right padding, left padding, a hole in the middle, an empty row and a full row."""
    return torch.tensor(
        [
            [1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1],
            [1, 1, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )


# ---- Packing ------------------------------------------------------------------------------------


def test_pack_keeps_real_tokens_in_order_and_unpack_puts_them_back():
    real = holes_mask()
    packing = Packing.from_mask(real)
    assert packing.lengths == (4, 4, 3, 0, 6)
    assert packing.cu_seqlens.tolist() == [0, 4, 8, 11, 11, 17]
    assert packing.cu_seqlens.dtype == torch.int32
    assert (packing.batch_size, packing.seq_len, packing.num_tokens, packing.max_len) == (
        5,
        6,
        17,
        6,
    )
    x = torch.randn(5, 6, 3)
    packed = packing.pack(x)
    assert torch.equal(packed, x[real])  # row-major order: sequence by sequence
    back = packing.unpack(packed)
    assert torch.equal(back[real], x[real])
    assert torch.equal(back[~real], torch.zeros_like(back[~real]))  # exact zeros at padding
    assert [t.shape[0] for t in packing.split(packed)] == [4, 4, 3, 0, 6]


def test_pack_and_unpack_pass_gradients_only_to_real_tokens():
    real = holes_mask()
    packing = Packing.from_mask(real)
    x = torch.randn(5, 6, 3, requires_grad=True)
    packing.unpack(packing.pack(x) * 2).sum().backward()
    assert torch.equal(x.grad, 2 * real[..., None].float().expand(5, 6, 3))


def test_packing_errors_name_what_was_expected():
    with pytest.raises(ValueError, match=r"\(B, T\) bool mask, got dtype torch.int64"):
        Packing.from_mask(torch.ones(2, 3, dtype=torch.long))
    packing = Packing.from_mask(holes_mask())
    with pytest.raises(
        ValueError, match=r"\(B, T, \.\.\.\) = \(5, 6, \.\.\.\), got shape \(5, 7, 3\)"
    ):
        packing.pack(torch.randn(5, 7, 3))
    with pytest.raises(ValueError, match="expected 17 packed tokens in dim 0, got shape"):
        packing.unpack(torch.randn(16, 3))


# ---- Attention on packed tokens ---------------------------------------------------------------


def packed_and_padded_qkv(real, heads=3, width=4, dtype=torch.float32):
    """Random padded q, k, v (B, H, T, K) and the same real tokens packed as (N, H, K)."""
    torch.manual_seed(0)
    B, T = real.shape
    padded = [torch.randn(B, heads, T, width, dtype=dtype) for _ in range(3)]
    packing = Packing.from_mask(real)
    packed = [packing.pack(t.transpose(1, 2)) for t in padded]  # (B, H, T, K) -> (N, H, K)
    return padded, packed, packing


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("backend", ["fused", "math"])
def test_varlen_attention_equals_padded_attention_and_float64(kernel, backend):
    real = holes_mask()
    padded, packed, packing = packed_and_padded_qkv(real)
    key_mask = real[:, None, None, :]  # (B, 1, 1, T)
    out = varlen_attention(*packed, packing, backend=backend, kernel=kernel)  # (N, H, K)
    expected = scaled_dot_product_attention(*padded, key_mask, backend="math")
    expected_f64, _ = reference_attention(*padded, key_mask)
    torch.testing.assert_close(out, packing.pack(expected.transpose(1, 2)), atol=ATOL, rtol=0)
    torch.testing.assert_close(
        out.double(), packing.pack(expected_f64.transpose(1, 2)), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("kernel", KERNELS)
def test_varlen_attention_gradients_equal_the_padded_path(kernel):
    real = holes_mask()
    padded, packed, packing = packed_and_padded_qkv(real)
    padded = [t.requires_grad_() for t in padded]
    packed = [t.detach().requires_grad_() for t in packed]
    weight = torch.randn(packing.num_tokens, 3, 4)
    (varlen_attention(*packed, packing, kernel=kernel) * weight).sum().backward()
    out = scaled_dot_product_attention(*padded, real[:, None, None, :], backend="math")
    (packing.pack(out.transpose(1, 2)) * weight).sum().backward()
    for ours, theirs in zip(packed, padded, strict=True):
        torch.testing.assert_close(
            ours.grad, packing.pack(theirs.grad.transpose(1, 2)), atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_varlen_attention_float64(kernel):
    real = holes_mask()[:, :4]
    _, packed, packing = packed_and_padded_qkv(real, heads=2, width=3, dtype=torch.float64)
    packed = [t.requires_grad_() for t in packed]
    assert torch.autograd.gradcheck(
        lambda q, k, v: varlen_attention(q, k, v, packing, kernel=kernel), tuple(packed)
    )


def test_varlen_attention_on_an_all_empty_batch_gives_no_rows():
    packing = Packing.from_mask(torch.zeros(2, 3, dtype=torch.bool))
    q = torch.randn(0, 2, 4)
    for kernel in KERNELS:
        assert varlen_attention(q, q, q, packing, kernel=kernel).shape == (0, 2, 4)


def test_auto_kernel_is_loop_on_cpu_and_varlen_is_refused_there():
    q = torch.randn(3, 2, 4)
    assert pick_varlen_kernel(q, 0.0) == "loop"
    packing = Packing.from_mask(torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="varlen kernel needs CUDA, float16 .*got device cpu"):
        varlen_attention(q, q, q, packing, kernel="varlen")


def test_varlen_attention_bad_input():
    packing = Packing.from_mask(holes_mask())
    q = torch.randn(17, 2, 4)
    with pytest.raises(
        ValueError, match=r"\(N, H, K\) with N = 17 packed tokens, got .* \(16, 2, 4\)"
    ):
        varlen_attention(q[:16], q[:16], q[:16], packing)
    with pytest.raises(TypeError, match="packing must be a Packing, got Tensor"):
        varlen_attention(q, q, q, q)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernel must be one of"):
        varlen_attention(q, q, q, packing, kernel="nested")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share shape and dtype"):
        varlen_attention(q, q, q.double(), packing)


# ---- The encoder, padding-free against padded ----------------------------------------------------


def encoder_pair(**changes):
    """Two encoders with the same weights: padding-free (the default) and padded."""
    config = dataclasses.replace(EncoderConfig.tiny(), **{"n_layers": 3, **changes})
    torch.manual_seed(0)
    free = Encoder(config)
    perturb_norms_and_biases(free)
    padded = Encoder(dataclasses.replace(config, padding_free=False))
    padded.load_state_dict(free.state_dict())
    return free, padded


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("backend", ["fused", "math"])
def test_padding_free_encoder_equals_padded_forward_and_backward(norm_first, train, backend):
    free, padded = encoder_pair(norm_first=norm_first, attention_backend=backend)
    free.train(train), padded.train(train)  # dropout is 0: train mode must change nothing
    real = holes_mask()
    torch.manual_seed(1)
    x = torch.randn(*real.shape, 32)
    weight = torch.randn(*real.shape, 32)
    grads = []
    for model in (free, padded):
        xi = x.clone().requires_grad_()
        out = model(xi, real)
        assert torch.equal(out[~real], torch.zeros_like(out[~real]))
        (out * weight).sum().backward()
        grads.append((out, xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    (out_a, dx_a, dp_a), (out_b, dx_b, dp_b) = grads
    torch.testing.assert_close(out_a, out_b, atol=ATOL, rtol=0)
    torch.testing.assert_close(dx_a, dx_b, atol=ATOL, rtol=0)
    for name in dp_a:
        torch.testing.assert_close(dp_a[name], dp_b[name], atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("norm_first", [False, True])
def test_padding_free_encoder_equals_float64_math_reference(norm_first):
    free, _ = encoder_pair(norm_first=norm_first)
    free.eval()
    reference = Encoder(
        dataclasses.replace(free.config, attention_backend="math", padding_free=False)
    )
    reference.load_state_dict(free.state_dict())
    reference = copy.deepcopy(reference).double().eval()
    real = holes_mask()
    x = torch.randn(*real.shape, 32)
    torch.testing.assert_close(
        free(x, real).double(), reference(x.double(), real), atol=ATOL, rtol=0
    )


def test_gradcheck_padding_free_encoder_float64():
    free, _ = encoder_pair(n_layers=2, norm_first=True)
    free = free.double()
    real = padding_mask([4, 2, 0], 4)
    x = torch.randn(3, 4, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: free(x, real), (x,))


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5), left=st.booleans())
def test_property_padding_free_equals_padded_for_random_lengths(lengths, left):
    free, padded = encoder_pair()
    free.eval(), padded.eval()
    T = max(max(lengths), 1)
    real = padding_mask(lengths, T)
    real = real.flip(-1) if left else real
    x = torch.randn(len(lengths), T, 32)
    torch.testing.assert_close(free(x, real), padded(x, real), atol=ATOL, rtol=0)


def test_a_mask_with_no_padding_is_the_dense_path_exactly():
    free, _ = encoder_pair()
    free.eval()
    x = torch.randn(3, 6, 32)
    assert torch.equal(free(x, torch.ones(3, 6, dtype=torch.long)), free(x))


def test_a_pattern_mask_runs_the_padded_path():
    free, padded = encoder_pair()
    real = holes_mask()
    x = torch.randn(*real.shape, 32)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
    assert torch.equal(free(x, real, causal), padded(x, real, causal))


def test_dropout_on_packed_tokens_is_seeded_and_keeps_padding_zero():
    free, _ = encoder_pair(dropout=0.3, attention_dropout=0.3, ff_dropout=0.3)
    free.train()
    real = holes_mask()
    x = torch.randn(*real.shape, 32)
    torch.manual_seed(5)
    first = free(x, real)
    torch.manual_seed(5)
    assert torch.equal(free(x, real), first)
    assert not torch.allclose(free(x, real), first)
    assert torch.equal(first[~real], torch.zeros_like(first[~real]))


def test_record_attention_padding_free_matches_padded_maps_on_real_queries():
    free, padded = encoder_pair()
    free.eval(), padded.eval()
    real = holes_mask()
    x = torch.randn(*real.shape, 32)
    with record_attention(free) as maps_free, record_attention(padded) as maps_padded:
        out = free(x, real)
        padded(x, real)
    assert torch.equal(out, free(x, real))  # recording changed nothing
    queries = real[:, None, :, None].expand(5, 4, 6, 6)  # (B, H, T, T): rows of real queries
    for ours, theirs in zip(maps_free, maps_padded, strict=True):
        torch.testing.assert_close(ours[queries], theirs[queries], atol=1e-6, rtol=0)
        assert torch.equal(ours[~queries], torch.zeros_like(ours[~queries]))


def test_text_encoder_runs_padding_free_by_default_and_equals_padded():
    config = TextConfig(d_model=32, n_heads=4, d_ff=64, n_layers=2, vocab_size=50, max_positions=16)
    torch.manual_seed(0)
    free = TextEncoder(config).eval()
    padded = TextEncoder(dataclasses.replace(config, padding_free=False)).eval()
    padded.load_state_dict(free.state_dict())
    ids = torch.randint(1, 50, (3, 9))
    mask = padding_mask([9, 4, 1], 9)
    torch.testing.assert_close(free(ids, mask), padded(ids, mask), atol=ATOL, rtol=0)
