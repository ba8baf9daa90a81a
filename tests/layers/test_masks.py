"""The one mask converter: conventions, merging, and the errors it raises."""

from __future__ import annotations

import pytest
import torch
from reference import padding_mask

from encoderkit import make_attention_mask


def make(attention_mask=None, attn_mask=None, b=2, t=4, h=3, dtype=torch.float32):
    return make_attention_mask(
        attention_mask, attn_mask, batch_size=b, seq_len=t, n_heads=h, dtype=dtype
    )


def test_no_masks_gives_none():
    assert make() is None


def test_padding_mask_becomes_key_mask_true_means_real_token():
    pad = padding_mask([4, 2], 4)
    mask = make(pad)
    assert mask.shape == (2, 1, 1, 4) and mask.dtype == torch.bool
    assert mask[1, 0, 0].tolist() == [True, True, False, False]


def test_integer_padding_mask_equals_bool():
    pad = padding_mask([4, 2], 4)
    assert torch.equal(make(pad.long()), make(pad))
    assert torch.equal(make(pad.int()), make(pad))


def test_bool_pattern_and_padding_are_and_ed():
    pad = padding_mask([4, 2], 4)
    causal = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    merged = make(pad, causal)
    assert merged.shape == (2, 1, 4, 4)
    assert torch.equal(merged, causal & pad[:, None, None, :])


def test_float_pattern_gets_minus_inf_on_padded_keys_and_input_dtype():
    pad = padding_mask([4, 2], 4)
    bias = torch.randn(1, 3, 4, 4)
    merged = make(pad, bias, dtype=torch.float64)
    assert merged.dtype == torch.float64 and merged.shape == (2, 3, 4, 4)
    assert torch.isneginf(merged[1, :, :, 2:]).all()
    torch.testing.assert_close(merged[0], bias[0].double(), atol=0, rtol=0)


def test_pattern_alone_is_checked_and_returned():
    pattern = torch.rand(2, 1, 1, 4) > 0.5  # a per-key pattern broadcast over queries
    assert torch.equal(make(attn_mask=pattern), pattern)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attention_mask": torch.ones(2, 5, dtype=torch.bool)}, ValueError,
         r"shape \(B, T\) = \(2, 4\), got \(2, 5\)"),
        ({"attention_mask": torch.ones(2, 4)}, TypeError,
         "bool or integer 0/1.*got dtype torch.float32"),
        ({"attention_mask": torch.full((2, 4), 2)}, ValueError, r"only 0 and 1.*\[2\]"),
        ({"attention_mask": [[1, 1, 1, 1]] * 2}, TypeError, "must be a torch.Tensor, got list"),
        ({"attn_mask": torch.ones(4, 4, dtype=torch.bool)}, ValueError,
         r"\(B or 1, H or 1, T or 1, T\) = \(2 or 1, 3 or 1, 4 or 1, 4\), got \(4, 4\)"),
        ({"attn_mask": torch.ones(2, 2, 4, 4, dtype=torch.bool)}, ValueError,
         r"got \(2, 2, 4, 4\)"),
        ({"attn_mask": torch.ones(1, 1, 4, 4, dtype=torch.long)}, TypeError,
         "bool .* or floating .*got dtype torch.int64"),
    ],
)  # fmt: skip
def test_bad_masks_raise_naming_expected_and_actual(kwargs, error, message):
    with pytest.raises(error, match=message):
        make(**kwargs)
