"""Scaffolding the family-format tests share: perturbed reference models saved by transformers,
the padded batches and pixels they run on, their outputs side by side with ours, and the
config.json and safetensors files they write and edit. The comparisons and tolerances stay in
the tests."""

from __future__ import annotations

import json

import torch
from reference import padding_mask
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import perturb

from encoderkit import TextEncoder, VisionEncoder

# A tiny BERT-sized text encoder, in transformers' names (BertConfig, RobertaConfig, ...)
TEXT_SIZE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=24)  # fmt: skip
# A tiny ViT-sized image encoder, 16 x 16 pixels in 4 x 4 patches (ViTConfig, DeiTConfig)
VISION_SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=37, image_size=16, patch_size=4)  # fmt: skip


# ---- models ------------------------------------------------------------------------------------


def perturbed(model, seed=1, scale=0.3):
    """:func:`tiny.perturb` from seed 1, as these tests were measured: every parameter off its
    init (LayerNorms 1 / 0, zero biases, DeiT's tokens at 0), so a swapped tensor shows."""
    return perturb(model, seed, scale)


def saved_reference(cls, config, directory, *, scale=0.3, **kwargs):
    """A transformers ``cls(config, **kwargs)`` built from seed 0, perturbed by ``scale`` and saved
    by transformers to ``directory``; that model, in eval mode."""
    torch.manual_seed(0)
    theirs = perturbed(cls(config, **kwargs), scale=scale)
    theirs.save_pretrained(directory)
    return theirs


def loads_cleanly(cls, directory):
    """``cls.from_pretrained(directory)`` in eval mode, after asserting that transformers found
    nothing missing, unexpected or mismatched (and no error) in the file."""
    theirs, info = cls.from_pretrained(directory, output_loading_info=True)
    assert not any(info.values()), info
    return theirs.eval()


def encoder_of(model):
    """The encoder of a task model, or the model when it is one."""
    return model if isinstance(model, (TextEncoder, VisionEncoder)) else model.encoder


def assert_same_weights(model, other):
    """The same tensors under the same names, bit for bit."""
    a, b = model.state_dict(), other.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- inputs ------------------------------------------------------------------------------------


def padded_ids(lengths, T, *, low=1, vocab=99, pad=0, seed=2, left=False):
    """Random ids in [low, vocab) of the given lengths, padded with ``pad`` to T tokens on the
    right (on the left with ``left``); the ids and the mask, True at real tokens."""
    mask = padding_mask(lengths, T)
    if left:
        mask = mask.flip(1)
    ids = torch.randint(
        low, vocab, (len(lengths), T), generator=torch.Generator().manual_seed(seed)
    )
    return ids.masked_fill(~mask, pad), mask


def two_segments(mask, start=4):
    """Token types: 1 from token ``start`` on, 0 before it and at padding."""
    return ((torch.arange(mask.shape[1]) >= start)[None] & mask).long()


def padded_batch():
    """The right-padded batch of the BERT-sized tests: lengths 11, 7 and 2 of ids in [1, 99),
    padded with the pad id 0, and two segments; (ids, mask, segments)."""
    ids, mask = padded_ids([11, 7, 2], 11)
    return ids, mask, two_segments(mask)


def pixels(height=16, width=16, seed=2):
    """Two random images."""
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---- outputs -----------------------------------------------------------------------------------


def hf_output(theirs, ids, mask, segments=None):
    """A transformers text model's logits, or its last hidden state when it has none; no grad.
    ``segments`` is passed only when given: DistilBERT and ModernBERT take none."""
    kwargs = {} if segments is None else {"token_type_ids": segments}
    with torch.no_grad():
        out = theirs(input_ids=ids, attention_mask=None if mask is None else mask.long(), **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def max_difference(got, ref, mask):
    """The largest difference of two outputs of the same shape, over real tokens (``mask``) for
    per-token outputs (transformers leaves padded positions unspecified)."""
    assert got.shape == ref.shape
    if ref.dim() == 3 and mask is not None:
        got, ref = got[mask], ref[mask]
    return (got - ref).abs().max().item()


def max_difference_to(theirs, ours, ids, mask, segments=None):
    """:func:`max_difference` of a transformers text model's output and ours on one batch."""
    ref = hf_output(theirs, ids, mask, segments)
    with torch.no_grad():
        got = ours(ids, mask) if segments is None else ours(ids, mask, segments)
    return max_difference(got, ref, mask)


def vision_outputs(model, x, resized=False):
    """(hidden states, pooled) of our VisionEncoder or of transformers' ViTModel / DeiTModel,
    which interpolates its position table only when told it is ``resized``; no grad."""
    with torch.no_grad():
        if isinstance(model, VisionEncoder):
            out = model(x)
            return out, model.pool(out)
        out = model(x, interpolate_pos_encoding=resized)
    return out.last_hidden_state, out.pooler_output


# ---- files -------------------------------------------------------------------------------------


def read_config(directory):
    return json.loads((directory / "config.json").read_text())


def edit_config(directory, **changes):
    """config.json in ``directory`` with ``changes`` written over its fields."""
    (directory / "config.json").write_text(json.dumps(read_config(directory) | changes))


def tensor_names(directory):
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def edited_copy(source, target, config=None, weights=None):
    """``source``'s checkpoint in ``target``, config.json updated by ``config`` and the tensors
    passed through ``weights``."""
    (target / "config.json").write_text(json.dumps(read_config(source) | (config or {})))
    tensors = load_file(source / "model.safetensors")
    save_file(weights(tensors) if weights else tensors, target / "model.safetensors")
    return target
