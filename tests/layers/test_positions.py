"""Positions inside attention: rotary (RoPE) equals a float64 pair rotation and transformers'
ModernBERT, ALiBi equals the paper's slopes and formula, both restart in each sequence (padded,
packed, left-padded or with holes) and run past max_positions."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference import (
    padding_mask,
    perturb_norms_and_biases,
    reference_alibi_slopes,
    reference_rotary,
    reference_sequence_attention,
)

from encoderkit import Encoder, EncoderConfig, TextConfig, TextEncoder
from encoderkit.layers.alibi import alibi_bias, alibi_slopes
from encoderkit.layers.packing import Packing
from encoderkit.layers.rotary import apply_rotary, rotary_cos_sin
from encoderkit.layers.self_attention import MultiHeadSelfAttention
from encoderkit.layers.varlen import varlen_attention

ATOL = 1e-5


def holes_mask():
    """Right padding, left padding, holes, an empty row and a full row."""
    return torch.tensor(
        [
            [1, 1, 1, 1, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 1],
            [1, 1, 0, 0, 1, 0, 1],
            [0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )


# ---- rotary ---------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [10000.0, 160000.0, 10.0])
def test_rotary_equals_a_float64_rotation_of_dimension_pairs(base):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 8)  # (B, H, T, K)
    positions = torch.arange(40)
    cos, sin = rotary_cos_sin(positions, 8, base)
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (40, 8)
    expected = reference_rotary(x, positions.tolist(), base)
    # A float32 angle m * theta is off by up to m * 2^-24 rad: 2.4e-6 at m = 40 (seen: 2.9e-6)
    torch.testing.assert_close(apply_rotary(x, cos, sin).double(), expected, atol=1e-5, rtol=0)
    cos64, sin64 = rotary_cos_sin(positions, 8, base, torch.float64)
    torch.testing.assert_close(apply_rotary(x.double(), cos64, sin64), expected, atol=1e-12,
                               rtol=0)  # fmt: skip


@pytest.mark.parametrize("layer_type", ["full_attention", "sliding_attention"])
def test_rotary_equals_transformers_modernbert(layer_type):
    """The same q, k through ModernBertRotaryEmbedding + apply_rotary_pos_emb: global and local
    layers have their own theta (global_rope_theta, local_rope_theta)."""
    modeling = pytest.importorskip("transformers.models.modernbert.modeling_modernbert")
    from transformers import ModernBertConfig

    config = ModernBertConfig(
        hidden_size=32, num_attention_heads=4, global_rope_theta=160000.0,
        local_rope_theta=10000.0, max_position_embeddings=64,
    )  # fmt: skip
    base = 160000.0 if layer_type == "full_attention" else 10000.0
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 50, 8), torch.randn(2, 4, 50, 8)  # past max_position_embeddings
    position_ids = torch.arange(50)[None]
    cos, sin = modeling.ModernBertRotaryEmbedding(config)(q, position_ids, layer_type)
    theirs = modeling.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
    cos, sin = rotary_cos_sin(torch.arange(50), 8, base)
    ours = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_rotary_scores_depend_only_on_the_distance():
    torch.manual_seed(0)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    cos, sin = rotary_cos_sin(torch.arange(60), 8, 10000.0, torch.float64)
    rq, rk = apply_rotary(q.expand(60, 8), cos, sin), apply_rotary(k.expand(60, 8), cos, sin)
    for shift in (0, 1, 7):
        torch.testing.assert_close(rq[shift + 3] @ rk[shift], rq[3] @ rk[0], atol=1e-12, rtol=0)


# ---- ALiBi --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_heads", [1, 2, 8, 12, 16, 20])
def test_alibi_slopes_are_the_papers_and_blooms(n_heads):
    torch.testing.assert_close(
        torch.tensor(alibi_slopes(n_heads)), torch.tensor(reference_alibi_slopes(n_heads))
    )
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    ones = torch.ones(1, 2, dtype=torch.long)
    # BLOOM's tensor is slope_h * position; at position 1 it is the slope itself
    theirs = bloom.build_alibi_tensor(ones, n_heads, torch.float32)[:, 0, 1]
    torch.testing.assert_close(torch.tensor(alibi_slopes(n_heads)), theirs, atol=0, rtol=1e-6)


def test_alibi_slopes_for_eight_heads_halve_from_one_half():
    assert alibi_slopes(8) == tuple(2.0 ** -(h + 1) for h in range(8))


def test_alibi_bias_is_minus_slope_times_distance():
    slopes = torch.tensor([0.5, 0.25], dtype=torch.float64)
    positions = torch.tensor([[0, 1, 2, 3]])
    bias = alibi_bias(positions, positions, slopes)  # (1, 2, 4, 4)
    for h, m in enumerate(slopes.tolist()):
        for i in range(4):
            for j in range(4):
                assert bias[0, h, i, j].item() == -m * abs(i - j)


# ---- attention with positions against the float64 reference --------------------------------


def attention(position_encoding, window=None, backend="auto", heads=2, width=8):
    torch.manual_seed(0)
    layer = MultiHeadSelfAttention(
        width * heads, heads, backend=backend, position_encoding=position_encoding,
        rope_base=100.0, window=window,
    )  # fmt: skip
    perturb_norms_and_biases(layer)
    return layer.eval()


def reference_layer(layer, x, real, position_encoding, window):
    """The layer's q, k, v per sequence through :func:`reference_sequence_attention`."""
    D, H = layer.d_model, layer.n_heads
    out = torch.zeros(*x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        tokens = x[b][real[b]].double()  # (s, D): the real tokens only, positions 0 .. s - 1
        if tokens.shape[0] == 0:
            continue
        qkv = tokens @ layer.qkv.weight.double().T + layer.qkv.bias.double()
        q, k, v = qkv.view(-1, 3, H, D // H).permute(1, 2, 0, 3)  # -> 3 x (H, s, K)
        heads = reference_sequence_attention(
            q, k, v, window,
            alibi_slopes(H) if position_encoding == "alibi" else None,
            100.0 if position_encoding == "rotary" else None,
        )  # fmt: skip
        concat = heads.permute(1, 0, 2).reshape(-1, D)  # (H, s, K) -> (s, D)
        out[b][real[b]] = concat @ layer.proj.weight.double().T + layer.proj.bias.double()
    return out


@pytest.mark.parametrize("position_encoding", ["rotary", "alibi"])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("backend", ["fused", "math"])
def test_attention_with_positions_equals_the_float64_reference_padded_and_packed(
    position_encoding, window, backend
):
    layer = attention(position_encoding, window, backend)
    real = holes_mask()
    x = torch.randn(*real.shape, 16)
    expected = reference_layer(layer, x, real, position_encoding, window)
    with torch.no_grad():
        padded = layer(x, real)
        packing = Packing.from_mask(real)
        packed = packing.unpack(layer(packing.pack(x), packing=packing))
    torch.testing.assert_close(padded[real].double(), expected[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(packed.double(), expected, atol=ATOL, rtol=0)


def test_packed_positions_count_real_tokens_from_zero_in_each_sequence():
    packing = Packing.from_mask(holes_mask())
    lengths = [4, 5, 4, 0, 7]
    assert packing.positions.tolist() == [p for n in lengths for p in range(n)]


# ---- the encoder: padded, packed, alone, long ---------------------------------------------------


def encoders(**changes):
    """Padding-free, padded and padded math encoders with the same weights."""
    config = dataclasses.replace(EncoderConfig.tiny(), n_layers=3, norm_first=True, **changes)
    torch.manual_seed(0)
    free = Encoder(config)
    perturb_norms_and_biases(free)
    others = []
    for extra in ({"padding_free": False}, {"padding_free": False, "attention_backend": "math"}):
        model = Encoder(dataclasses.replace(config, **extra))
        model.load_state_dict(free.state_dict())
        others.append(model)
    return free, *others


POSITIONAL = [
    {"position_encoding": "rotary"},
    {"position_encoding": "alibi"},
    {"position_encoding": "none", "window": 3},
    {"position_encoding": "rotary", "window": 4, "global_every": 3, "local_rope_base": 50.0},
    {"position_encoding": "alibi", "window": 2},
]


@pytest.mark.parametrize("changes", POSITIONAL, ids=lambda c: "-".join(map(str, c.values())))
def test_padding_free_equals_padded_and_math_forward_and_backward(changes):
    """Right padding, left padding, holes and an empty row: positions and windows count real
    tokens, so all three paths agree, outputs and gradients."""
    real = holes_mask()
    torch.manual_seed(1)
    x = torch.randn(*real.shape, 32)
    weight = torch.randn(*real.shape, 32)
    results = []
    for model in encoders(**changes):
        xi = x.clone().requires_grad_()
        out = model(xi, real)
        (out * weight).sum().backward()
        results.append((out, xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    (out, dx, dp), others = results[0], results[1:]
    for out_b, dx_b, dp_b in others:
        torch.testing.assert_close(out, out_b, atol=ATOL, rtol=0)
        torch.testing.assert_close(dx, dx_b, atol=ATOL, rtol=0)
        for name in dp:
            torch.testing.assert_close(dp[name], dp_b[name], atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("position_encoding", ["rotary", "alibi"])
def test_a_sequence_alone_equals_itself_inside_a_packed_batch(position_encoding):
    """Positions restart at 0 in each sequence: a sequence gives the same output alone and
    second in a batch, right- or left-padded."""
    free, _, _ = encoders(position_encoding=position_encoding, window=4)
    free.eval()
    torch.manual_seed(2)
    alone = torch.randn(1, 5, 32)
    others = torch.randn(3, 9, 32)
    with torch.no_grad():
        expected = free(alone)[0]
        for left in (False, True):
            batch = others.clone()
            real = padding_mask([9, 5, 3], 9)
            real = real.flip(-1) if left else real
            batch[1][real[1]] = alone[0]
            out = free(batch, real)
            torch.testing.assert_close(out[1][real[1]], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("position_encoding", ["rotary", "alibi"])
def test_text_encoder_runs_past_max_positions_with_positions_in_attention(position_encoding):
    config = TextConfig(
        vocab_size=50, d_model=32, n_heads=4, d_ff=64, n_layers=2, max_positions=16,
        dropout=0.0, attention_dropout=0.0, position_encoding=position_encoding, window=8,
        global_every=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = TextEncoder(config).eval()
    math_model = TextEncoder(
        dataclasses.replace(config, attention_backend="math", padding_free=False)
    ).eval()
    math_model.load_state_dict(model.state_dict())
    ids = torch.randint(1, 50, (2, 3 * 16))  # three times max_positions
    mask = padding_mask([48, 30], 48)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), math_model(ids, mask), atol=ATOL, rtol=0)
    learned = TextEncoder(dataclasses.replace(config, position_encoding="learned"))
    with pytest.raises(ValueError, match="48 tokens, more than the model's max_positions 16"):
        learned(ids, mask)


# ---- errors -------------------------------------------------------------------------------------


def test_bad_position_arguments_are_refused():
    with pytest.raises(ValueError, match="head width d_model / n_heads must be even, got 3"):
        MultiHeadSelfAttention(12, 4, position_encoding="rotary")
    with pytest.raises(ValueError, match="rope_base must be a finite float > 1, got 1.0"):
        MultiHeadSelfAttention(16, 2, position_encoding="rotary", rope_base=1.0)
    with pytest.raises(TypeError, match="rope_base must be a float, got '10000'"):
        MultiHeadSelfAttention(16, 2, position_encoding="rotary", rope_base="10000")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"position_encoding must be one of .*, got 'rope'"):
        MultiHeadSelfAttention(16, 2, position_encoding="rope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_heads must be a positive int, got 0"):
        alibi_slopes(0)
    packing = Packing.from_mask(holes_mask())
    q = torch.randn(packing.num_tokens, 2, 4)
    with pytest.raises(ValueError, match=r"alibi_slopes must be floating \(H,\) with H = 2 heads"):
        varlen_attention(q, q, q, packing, alibi_slopes=torch.ones(3))
    with pytest.raises(ValueError, match="varlen kernel needs CUDA"):
        varlen_attention(q, q, q, packing, kernel="varlen", alibi_slopes=torch.ones(2))
