"""EncoderConfig: validation, presets, FLOP counting."""

from __future__ import annotations

import dataclasses

import pytest

from encoderkit import Encoder, EncoderConfig, TextConfig, VisionConfig


def test_presets_match_the_published_sizes():
    bert = EncoderConfig.bert_base()
    assert (bert.d_model, bert.n_heads, bert.d_ff, bert.n_layers) == (768, 12, 3072, 12)
    assert bert.layer_norm_eps == 1e-12 and not bert.norm_first and bert.activation == "gelu"
    vit = EncoderConfig.vit_base()
    assert vit.norm_first and vit.layer_norm_eps == 1e-6 and vit.dropout == 0.0
    minilm = EncoderConfig.minilm_l6()
    assert (minilm.d_model, minilm.n_heads, minilm.d_ff, minilm.n_layers) == (384, 12, 1536, 6)
    assert minilm.head_dim == 32
    assert EncoderConfig.tiny().head_dim == 8


def test_bert_base_parameter_count():
    # 12 layers x (4 d^2 + 4 d + 2 d f + d + f + 4 d) = 85,054,464 (BERT-base without embeddings)
    assert Encoder(EncoderConfig.bert_base()).num_parameters() == 85_054_464


def test_flops_per_token_matches_published_bert_base_figure():
    # perf-anchors: BERT-base at S=128 is 22.35 GFLOP per sequence forward
    per_sequence = EncoderConfig.bert_base().flops_per_token(128) * 128
    assert per_sequence == pytest.approx(22.35e9, rel=1e-3)


def test_flops_per_token_counts_gated_feed_forward_three_matmuls():
    plain = EncoderConfig(d_model=64, n_heads=4, d_ff=256, n_layers=1)
    gated = dataclasses.replace(plain, activation="swiglu")
    assert gated.flops_per_token(10) - plain.flops_per_token(10) == 2 * 64 * 256


def test_frozen_and_keyword_only():
    config = EncoderConfig.tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 64  # type: ignore[misc]
    with pytest.raises(TypeError):
        EncoderConfig(32, 4, 64, 2)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"n_heads": 5}, ValueError, "d_model=32 and n_heads=5"),
        ({"d_model": 0}, ValueError, "d_model must be a positive int, got 0"),
        ({"n_layers": 0}, ValueError, "n_layers must be a positive int, got 0"),
        ({"d_ff": 2.5}, ValueError, "d_ff must be a positive int, got 2.5"),
        ({"dropout": 1.0}, ValueError, r"dropout must be a float in \[0, 1\), got 1.0"),
        ({"attention_dropout": -0.1}, ValueError, r"attention_dropout .* got -0.1"),
        ({"activation": "tanh"}, ValueError, r"activation must be one of .*got 'tanh'"),
        ({"attention_backend": "flash"}, ValueError, "attention_backend must be one of"),
        ({"layer_norm_eps": 0}, ValueError, "layer_norm_eps must be a positive float, got 0"),
        ({"norm_first": "yes"}, TypeError, "norm_first must be a bool, got 'yes'"),
    ],
)
def test_invalid_values_raise_naming_expected_and_actual(change, error, message):
    fields = dataclasses.asdict(EncoderConfig.tiny()) | change
    with pytest.raises(error, match=message):
        EncoderConfig(**fields)


def test_flops_reject_bad_length():
    with pytest.raises(ValueError, match="seq_len must be a positive int, got 0"):
        EncoderConfig.tiny().flops_per_token(0)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"layer_norm_eps": float("inf")}, ValueError, "layer_norm_eps must be a finite .*inf"),
        ({"pad_token_id": 5.5}, TypeError, "pad_token_id must be an int, got 5.5"),
        ({"pad_token_id": True}, TypeError, "pad_token_id must be an int, got True"),
        ({"pad_token_id": "0"}, TypeError, "pad_token_id must be an int, got '0'"),
        ({"pooler": 1}, TypeError, "pooler must be a bool, got 1"),
        ({"activation": ["gelu"]}, TypeError, r"activation must be a str, got \['gelu'\]"),
    ],
)
def test_text_config_rejects_non_finite_floats_and_wrong_int_types(change, error, message):
    fields = {"d_model": 32, "n_heads": 4, "d_ff": 64, "n_layers": 2, "vocab_size": 50} | change
    with pytest.raises(error, match=message):
        TextConfig(**fields)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"layer_norm_eps": float("inf")}, ValueError, "layer_norm_eps must be a finite .*inf"),
        ({"pooler": "yes"}, TypeError, "pooler must be a bool, got 'yes'"),
    ],
)
def test_vision_config_rejects_non_finite_floats_and_wrong_types(change, error, message):
    fields = {"d_model": 32, "n_heads": 4, "d_ff": 64, "n_layers": 2, "image_size": 32} | change
    with pytest.raises(error, match=message):
        VisionConfig(**fields)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer_norm_eps": float("nan")}, "layer_norm_eps must be a positive float, got nan"),
        ({"layer_norm_eps": True}, "layer_norm_eps must be a positive float, got True"),
        ({"pad_token_id": 50}, r"pad_token_id must lie in \[0, vocab_size=50\)"),
        ({"vocab_size": True}, "vocab_size must be a positive int, got True"),
        ({"max_positions": 16.0}, "max_positions must be a positive int, got 16.0"),
        ({"type_vocab_size": False}, "type_vocab_size must be an int >= 0, got False"),
        ({"dropout": float("nan")}, r"dropout must be a float in \[0, 1\), got nan"),
    ],
)
def test_text_config_keeps_rejecting_nan_and_bools_as_numbers(change, message):
    """Guards: these were rejected before non-finite floats and bools were audited."""
    fields = {"d_model": 32, "n_heads": 4, "d_ff": 64, "n_layers": 2, "vocab_size": 50} | change
    with pytest.raises(ValueError, match=message):
        TextConfig(**fields)
