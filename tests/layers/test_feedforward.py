"""The position-wise feed-forward layer against its formulas written out in float64."""

from __future__ import annotations

import math

import pytest
import torch

from encoderkit import FeedForward


def gelu_erf(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


FORMULAS = {
    "relu": lambda h: h.clamp_min(0),
    "gelu": gelu_erf,
    "gelu_tanh": gelu_tanh,
    # Shazeer 2020: act(x W) * (x V); W is the first half of fc1's output
    "swiglu": lambda h: (lambda a, b: a * torch.sigmoid(a) * b)(*h.chunk(2, -1)),
    "geglu": lambda h: (lambda a, b: gelu_erf(a) * b)(*h.chunk(2, -1)),
}


@pytest.mark.parametrize("activation", list(FORMULAS))
def test_matches_formula(activation):
    torch.manual_seed(0)
    ff = FeedForward(8, 12, activation)
    x = torch.randn(2, 5, 8)
    w1, b1 = ff.fc1.weight.double(), ff.fc1.bias.double()
    w2, b2 = ff.fc2.weight.double(), ff.fc2.bias.double()
    expected = FORMULAS[activation](x.double() @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(ff(x).double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("activation", "fc1_out"), [("gelu", 12), ("swiglu", 24)])
def test_gated_variants_double_fc1(activation, fc1_out):
    ff = FeedForward(8, 12, activation, bias=False)
    assert ff.fc1.weight.shape == (fc1_out, 8) and ff.fc2.weight.shape == (8, 12)
    assert ff.fc1.bias is None


def test_accepts_packed_tokens():
    ff = FeedForward(8, 12)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ff(x.view(10, 8)), ff(x).view(10, 8), atol=0, rtol=0)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    ff = FeedForward(8, 32, dropout=0.5)
    x = torch.randn(4, 5, 8)
    ff.eval()
    plain = ff.fc2(ff.act(ff.fc1(x)))
    torch.testing.assert_close(ff(x), plain, atol=0, rtol=0)
    ff.train()
    assert not torch.allclose(ff(x), plain)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((8, 12), {"activation": "silu"}, ValueError, r"activation must be one of .*got 'silu'"),
        ((8, 0), {}, ValueError, "d_ff must be a positive int, got 0"),
        ((8, 12), {"dropout": 1.5}, ValueError, r"dropout must be a float in \[0, 1\), got 1.5"),
    ],
)
def test_bad_arguments(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        FeedForward(*args, **kwargs)


def test_bad_input():
    ff = FeedForward(8, 12)
    with pytest.raises(ValueError, match=r"last dimension d_model=8, got shape \(2, 5, 7\)"):
        ff(torch.randn(2, 5, 7))
    with pytest.raises(TypeError, match="floating-point"):
        ff(torch.ones(2, 5, 8, dtype=torch.long))
