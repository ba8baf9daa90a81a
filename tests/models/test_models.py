"""Models: the text and vision encoders equal their parts composed by hand and transformers'
BertModel / ViTModel with the same weights; pooling and classifier heads equal their formulas."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from reference import padding_mask

from encoderkit import Encoder, EncoderConfig
from encoderkit.layers.embeddings import PatchEmbedding, TokenEmbedding
from encoderkit.models.config import TextConfig, VisionConfig
from encoderkit.models.heads import ImageClassifier, SequenceClassifier
from encoderkit.models.pooling import pool_tokens
from encoderkit.models.text import TextEncoder
from encoderkit.models.vision import VisionEncoder

ATOL = 1e-5
TEXT = TextConfig(
    d_model=32, n_heads=4, d_ff=64, n_layers=2, vocab_size=50, max_positions=16,
    dropout=0.0, attention_dropout=0.0,
)  # fmt: skip
VISION = VisionConfig(
    d_model=32, n_heads=4, d_ff=64, n_layers=2, image_size=16, patch_size=4,
    dropout=0.0, attention_dropout=0.0, norm_first=True,
)  # fmt: skip
LENGTHS = (7, 4, 1)


def perturb(module, std=0.3):
    """Move every parameter off its init (LayerNorm 1 / 0 and zero biases included)."""
    torch.manual_seed(123)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


def text_model(cls=TextEncoder, *args, **changes):
    torch.manual_seed(0)
    model = cls(dataclasses.replace(TEXT, **changes), *args)
    perturb(model)
    return model.eval()


def vision_model(cls=VisionEncoder, *args, **changes):
    torch.manual_seed(0)
    model = cls(dataclasses.replace(VISION, **changes), *args)
    perturb(model)
    return model.eval()


def text_batch(lengths=LENGTHS, seq_len=7, vocab=50):
    """Random ids with pad id 0 after each sequence's length, segment ids, the padding mask."""
    torch.manual_seed(1)
    real = padding_mask(list(lengths), seq_len)
    ids = torch.randint(1, vocab, (len(lengths), seq_len)).masked_fill(~real, 0)
    types = torch.randint(0, 2, ids.shape).masked_fill(~real, 0)
    return ids, types, real


def pixels(batch=2, size=16):
    torch.manual_seed(2)
    return torch.randn(batch, 3, size, size)


# TextEncoder


@pytest.mark.parametrize("with_types", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
def test_text_encoder_equals_embeddings_then_encoder_by_hand(with_types, norm_first):
    model = text_model(norm_first=norm_first)
    c = model.config
    embeddings = TokenEmbedding(
        c.vocab_size, c.d_model, c.max_positions, c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps, dropout=0.0,
    )  # fmt: skip
    embeddings.load_state_dict(model.embeddings.state_dict())
    encoder = Encoder(dataclasses.replace(EncoderConfig.tiny(), norm_first=norm_first))
    encoder.load_state_dict(model.encoder.state_dict())
    ids, types, real = text_batch()
    types = types if with_types else None
    expected = encoder(embeddings(ids, types), real)
    out = model(ids, real, types)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert torch.equal(out[~real], torch.zeros_like(out[~real]))
    assert (out[real].abs().sum(-1) > 0).all()


def test_text_encoder_sequence_alone_equals_it_inside_a_padded_batch():
    model = text_model()
    ids, types, real = text_batch()
    out = model(ids, real, types)
    for i, n in enumerate(LENGTHS):
        alone = model(ids[i : i + 1, :n], None, types[i : i + 1, :n])
        torch.testing.assert_close(out[i, :n], alone[0], atol=ATOL, rtol=0)


def test_text_encoder_ignores_what_the_padding_holds():
    model = text_model()
    ids, types, real = text_batch()
    torch.manual_seed(3)
    noisy_ids = torch.where(real, ids, torch.randint(0, 50, ids.shape))
    noisy_types = torch.where(real, types, torch.randint(0, 2, ids.shape))
    torch.testing.assert_close(
        model(noisy_ids, real, noisy_types), model(ids, real, types), atol=0, rtol=0
    )


def load_through_pretrained(hf_model, tmp_path):
    from encoderkit.models.pretrained import load_pretrained

    hf_model.save_pretrained(tmp_path)
    return load_pretrained(tmp_path)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_text_encoder_equals_transformers_bert_model(attn_implementation, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=16, attn_implementation=attn_implementation,
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = transformers.BertModel(config).eval()
    assert theirs.config._attn_implementation == attn_implementation
    perturb(theirs)
    ours = load_through_pretrained(theirs, tmp_path)
    assert isinstance(ours, TextEncoder) and ours.pooler is not None
    ids, types, real = text_batch(lengths=(9, 6, 2), seq_len=9, vocab=99)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=real.long(), token_type_ids=types)
        out = ours(ids, real.long(), types)
        pooled = ours.pool(out)
    torch.testing.assert_close(out[real], expected.last_hidden_state[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, expected.pooler_output, atol=ATOL, rtol=0)


# VisionEncoder


def test_vision_encoder_equals_patches_then_blocks_then_final_norm_by_hand():
    model = vision_model()
    assert isinstance(model.encoder.norm, torch.nn.LayerNorm)
    x = pixels()
    embeddings = PatchEmbedding(16, 4, 3, 32)
    embeddings.load_state_dict(model.embeddings.state_dict())
    h = embeddings(x)
    for block in model.encoder.blocks:
        h = block(h)
    norm = model.encoder.norm
    expected = F.layer_norm(h, (32,), norm.weight, norm.bias, eps=VISION.layer_norm_eps)
    out = model(x)
    assert out.shape == (2, 1 + VISION.num_patches, 32)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_vision_encoder_ends_in_layer_norm_for_pre_norm_only():
    model = vision_model(layer_norm_eps=1e-12)
    out = model(pixels())
    norm = model.encoder.norm
    standardised = (out - norm.bias) / norm.weight  # undo the affine: rows are then (0, 1)
    mean, var = standardised.mean(-1), standardised.var(-1, unbiased=False)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-4, rtol=0)
    assert isinstance(vision_model(norm_first=False).encoder.norm, torch.nn.Identity)


@pytest.mark.parametrize("size", [16, 24])
def test_vision_encoder_equals_transformers_vit_model(size, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=37,
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = transformers.ViTModel(config).eval()
    perturb(theirs)
    ours = load_through_pretrained(theirs, tmp_path)
    assert isinstance(ours, VisionEncoder) and ours.pooler is not None
    x = pixels(size=size)
    with torch.no_grad():
        expected = theirs(pixel_values=x, interpolate_pos_encoding=size != 16)
        out = ours(x)
        pooled = ours.pool(out)
    assert out.shape == (2, 1 + (size // 4) ** 2, 32)
    torch.testing.assert_close(out, expected.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, expected.pooler_output, atol=ATOL, rtol=0)


# pool_tokens


def hand_mean(hidden, real):
    rows = []
    for h, r in zip(hidden, real, strict=True):
        picked = [h[t] for t in range(len(r)) if r[t]]
        rows.append(torch.stack(picked).mean(0) if picked else torch.zeros(h.shape[-1]))
    return torch.stack(rows)


def test_pool_tokens():
    torch.manual_seed(0)
    hidden = torch.randn(4, 6, 8)  # padded rows hold noise, which must not count
    real = padding_mask([6, 3, 1, 0], 6)
    assert torch.equal(pool_tokens(hidden, "cls"), hidden[:, 0])
    # With a mask, "cls" takes the first real token; a row with none pools 0, as "mean" does.
    cls = pool_tokens(hidden, "cls", real)
    assert torch.equal(cls[:3], hidden[:3, 0]) and torch.equal(cls[3], torch.zeros(8))
    mean = pool_tokens(hidden, "mean", real)
    torch.testing.assert_close(mean, hand_mean(hidden, real), atol=1e-6, rtol=0)
    assert torch.equal(mean[3], torch.zeros(8))  # all padding: 0, not NaN
    assert torch.equal(pool_tokens(hidden, "mean", real.long()), mean)
    torch.testing.assert_close(pool_tokens(hidden, "mean"), hidden.mean(1), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"pooling must be one of \['cls', 'mean'\], got 'max'"):
        pool_tokens(hidden, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, T\) = \(4, 6\), got \(4, 5\)"):
        pool_tokens(hidden, "mean", real[:, :5])


def test_pool_tokens_cls_takes_the_first_real_token_of_left_padded_rows():
    torch.manual_seed(0)
    hidden = torch.randn(4, 6, 8)  # padded positions hold noise, which must not be pooled
    real = padding_mask([6, 3, 1, 0], 6).flip(1)  # left-padded: real tokens at the end
    expected = torch.stack([hidden[0, 0], hidden[1, 3], hidden[2, 5], torch.zeros(8)])
    assert torch.equal(pool_tokens(hidden, "cls", real), expected)
    assert torch.equal(pool_tokens(hidden, "cls", real.long()), expected)
    with pytest.raises(ValueError, match=r"\(B, T\) = \(4, 6\), got \(4, 5\)"):
        pool_tokens(hidden, "cls", real[:, :5])


def left_padded(ids, types, real):
    """The same sequences with their padding moved to the front."""
    lengths = real.sum(1).tolist()
    shift = [real.shape[1] - n for n in lengths]
    return tuple(
        torch.stack([row.roll(s) for row, s in zip(t, shift, strict=True)])
        for t in (ids, types, real)
    )


@pytest.mark.parametrize("padding_free", [True, False])
@pytest.mark.parametrize("pooler", [False, True])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_classifier_left_and_right_padding_give_the_same_logits(
    pooling, pooler, padding_free
):
    model = text_model(SequenceClassifier, 3, pooling, pooler=pooler, padding_free=padding_free)
    with torch.no_grad():  # positions are absolute: without them, only the padding side differs
        model.encoder.embeddings.positions.weight.zero_()
    ids, types, real = text_batch(lengths=(7, 4, 1, 0))  # an all-padding row included
    left_ids, left_types, left_real = left_padded(ids, types, real)
    assert not left_real[:, 0][1:].any()  # rows 1.. really start with padding
    right = model(ids, real, types)
    left = model(left_ids, left_real, left_types)
    torch.testing.assert_close(left, right, atol=1e-6, rtol=0)
    # The all-padding row pools 0, through the pooler when there is one: finite, defined.
    zero = torch.zeros(1, 32)
    if pooler and pooling == "cls":
        zero = model.encoder.pooler(zero)
    torch.testing.assert_close(right[3:], model.head(zero), atol=1e-6, rtol=0)
    assert torch.isfinite(right).all()


def test_text_encoder_pool_uses_the_first_real_token_with_a_mask():
    model = text_model(pooler=True)
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 32)
    real = padding_mask([5, 2], 5).flip(1)  # row 1: real tokens at positions 3 and 4
    dense = model.pooler.dense
    expected = torch.tanh(torch.stack([hidden[0, 0], hidden[1, 3]]) @ dense.weight.T + dense.bias)
    torch.testing.assert_close(model.pool(hidden, real), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.pool(hidden), model.pooler(hidden[:, 0]), atol=0, rtol=0)


# Classifiers


@pytest.mark.parametrize("pooler", [False, True])
def test_sequence_classifier_cls_is_head_of_pooled_cls(pooler):
    model = text_model(SequenceClassifier, 3, "cls", pooler=pooler, dropout=0.1)
    ids, types, real = text_batch()
    logits = model(ids, real, types)
    assert logits.shape == (3, 3)
    hidden = model.encoder(ids, real, types)
    first = hidden[:, 0]
    if pooler:
        dense = model.encoder.pooler.dense
        first = torch.tanh(first @ dense.weight.T + dense.bias)
    expected = first @ model.head.fc.weight.T + model.head.fc.bias
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_sequence_classifier_mean_is_head_of_mean_over_real_tokens():
    model = text_model(SequenceClassifier, 5, "mean")
    ids, types, real = text_batch()
    logits = model(ids, real, types)
    assert logits.shape == (3, 5)
    pooled = hand_mean(model.encoder(ids, real, types), real)
    torch.testing.assert_close(logits, model.head(pooled), atol=ATOL, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_image_classifier_pools_class_token_or_mean_of_patches(pooling):
    model = vision_model(ImageClassifier, 4, pooling)
    x = pixels()
    logits = model(x)
    assert logits.shape == (2, 4)
    hidden = model.encoder(x)
    pooled = hidden[:, 0] if pooling == "cls" else hidden[:, 1:].sum(1) / VISION.num_patches
    torch.testing.assert_close(logits, model.head(pooled), atol=ATOL, rtol=0)


def test_classifier_bad_arguments():
    for num_classes in (0, -2):
        with pytest.raises(
            ValueError, match=f"num_classes must be a positive int, got {num_classes}"
        ):
            SequenceClassifier(TEXT, num_classes)
        with pytest.raises(
            ValueError, match=f"num_classes must be a positive int, got {num_classes}"
        ):
            ImageClassifier(VISION, num_classes)
    with pytest.raises(ValueError, match="pooling must be one of"):
        SequenceClassifier(TEXT, 2, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pooling must be one of"):
        ImageClassifier(VISION, 2, "max")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be a TextConfig, got EncoderConfig"):
        TextEncoder(EncoderConfig.tiny())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be a TextConfig, got VisionConfig"):
        SequenceClassifier(VISION, 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be a VisionConfig, got TextConfig"):
        ImageClassifier(TEXT, 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be a VisionConfig, got EncoderConfig"):
        VisionEncoder(EncoderConfig.tiny())  # type: ignore[arg-type]


def test_classifier_dropout_inactive_in_eval_active_in_train():
    model = text_model(SequenceClassifier, 3, dropout=0.3, attention_dropout=0.3)
    ids, types, real = text_batch()
    assert torch.equal(model(ids, real, types), model(ids, real, types))
    model.train()
    assert not torch.allclose(model(ids, real, types), model(ids, real, types))


# Gradients


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_gradients_reach_every_parameter_and_stay_finite(pooling):
    model = text_model(SequenceClassifier, 3, pooling, pooler=True, dropout=0.1).train()
    ids, types, real = text_batch(lengths=(7, 3, 0))  # an all-padding row included
    F.cross_entropy(model(ids, real, types), torch.tensor([0, 1, 2])).backward()
    for name, p in model.named_parameters():
        if pooling == "mean" and name.startswith("encoder.pooler."):
            assert p.grad is None  # mean pooling does not use BERT's pooler
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    pad = model.encoder.config.pad_token_id
    assert torch.equal(model.encoder.embeddings.tokens.weight.grad[pad], torch.zeros(32))
