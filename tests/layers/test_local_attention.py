"""Local (sliding-window) attention: the blocked kernels equal the math path with an explicit band
mask and a float64 reference, padded and packed, forward and backward, for windows from 1 (a
token sees itself) to past the sequence (full attention); the band is transformers' ModernBERT
rule; layers are local as the config says; compiled and exported models keep working."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference import padding_mask, perturb_norms_and_biases, reference_attention
from tiny import needs_compiler, text_batch

from encoderkit import EncoderConfig, TextConfig, TextEncoder
from encoderkit.layers import self_attention
from encoderkit.layers.alibi import alibi_slopes
from encoderkit.layers.encoder import Encoder
from encoderkit.layers.local import band_mask, block_layout, local_attention
from encoderkit.layers.packing import Packing
from encoderkit.layers.self_attention import MultiHeadSelfAttention
from encoderkit.layers.varlen import varlen_attention
from encoderkit.layers.varlen_kernels import varlen_attention_op

ATOL = 1e-5
KERNELS = ["loop", "repad"]
WINDOWS = [1, 2, 3, 5, 8, 13, 40]  # 13 reaches past the longest sequence (12): full attention


def holes_mask(T=12):
    """Right padding, left padding, holes, an empty row and a full row, T tokens."""
    rows = [
        [1] * 9 + [0] * (T - 9),
        [0] * 4 + [1] * (T - 4),
        [1, 1, 0, 0, 1, 0, 1] + [1, 0] * ((T - 7) // 2) + [1] * ((T - 7) % 2),
        [0] * T,
        [1] * T,
    ]
    return torch.tensor(rows, dtype=torch.bool)


def test_band_is_transformers_sliding_window_rule():
    """ModernBERT's local_attention = window: |i - j| <= local_attention // 2."""
    masking_utils = pytest.importorskip("transformers.masking_utils")
    positions = torch.arange(20)
    for window in (1, 2, 4, 7, 128):
        overlay = masking_utils.sliding_window_bidirectional_overlay(window // 2)
        theirs = torch.tensor([[overlay(0, 0, i, j) for j in range(20)] for i in range(20)])
        assert torch.equal(band_mask(positions, positions, window // 2), theirs)


def test_block_layout_grows_linearly_in_the_sequence():
    """Blocks of Q = max(w, 16) queries over spans of Q + 2w keys: each query scores at most
    3 w + 16 keys, so scores take T (3 w + 16) numbers per head, not T^2."""
    for T, w in ((8192, 64), (8192, 128), (100, 3), (100, 200), (5, 0)):
        layout = block_layout(T, w, torch.device("cpu"))
        assert layout.span <= min(T, 3 * max(w, 16))
        assert layout.blocks * layout.size < T + layout.size
        index = layout.key_index
        query = torch.arange(layout.blocks * layout.size).view(layout.blocks, layout.size)
        # every key within w of a query, and in the row, is in its block's span
        for b in range(layout.blocks):
            for i in query[b].tolist()[:T]:
                needed = set(range(max(0, i - w), min(T, i + w + 1)))
                assert needed <= set(index[b].tolist())


def layer(window, position_encoding="none", backend="auto", dropout=0.0):
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(
        16, 2, dropout, backend=backend, window=window, position_encoding=position_encoding
    )
    perturb_norms_and_biases(attn)
    return attn


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("position_encoding", ["none", "alibi", "rotary"])
def test_blocked_local_attention_equals_the_explicit_band_mask(window, position_encoding):
    """The blocked path (padded and packed) against the math path, which writes the band out as
    a mask: outputs and gradients of the input and every parameter."""
    real = holes_mask()
    torch.manual_seed(1)
    x = torch.randn(*real.shape, 16)
    weight = torch.randn(*real.shape, 16)
    runs = []
    for backend, packed in (("math", False), ("auto", False), ("auto", True), ("math", True)):
        attn = layer(window, position_encoding, backend)
        xi = x.clone().requires_grad_()
        if packed:
            packing = Packing.from_mask(real)
            out = packing.unpack(attn(packing.pack(xi), packing=packing))
        else:
            out = attn(xi, real).masked_fill(~real[..., None], 0.0)
        (out * weight).sum().backward()
        runs.append((out, xi.grad, [p.grad for p in attn.parameters()]))
    (out, dx, dp), others = runs[0], runs[1:]
    for out_b, dx_b, dp_b in others:
        torch.testing.assert_close(out_b, out, atol=ATOL, rtol=0)
        torch.testing.assert_close(dx_b, dx, atol=ATOL, rtol=0)
        for a, b in zip(dp_b, dp, strict=True):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("window", [1, 4, 13])
def test_local_attention_equals_the_float64_reference(window):
    """Rows of one sequence (segment 0) and padding (-1) against softmax with a band mask in
    float64; window 1 returns each token's own value."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 12, 4) for _ in range(3))
    segments = torch.where(padding_mask([12, 7], 12), 0, -1)  # (2, 12): 12 and 7 real tokens
    out = local_attention(q, k, v, segments, window // 2)
    positions = torch.arange(12)
    allowed = band_mask(positions, positions, window // 2) & (segments[:, None, :] >= 0)
    expected, _ = reference_attention(q, k, v, allowed[:, None])
    real = segments >= 0
    torch.testing.assert_close(out.double()[:, :, :7], expected[:, :, :7], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.double()[0], expected[0], atol=ATOL, rtol=0)
    assert torch.equal(out.transpose(1, 2)[~real], torch.zeros_like(out.transpose(1, 2)[~real]))
    if window == 1:
        torch.testing.assert_close(out[0], v[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("alibi", [False, True])
def test_opcheck_local_varlen_attention(kernel, alibi):
    real = padding_mask([5, 0, 3, 7], 7)
    packing = Packing.from_mask(real)
    torch.manual_seed(0)
    q, k, v = (torch.randn(packing.num_tokens, 2, 4, requires_grad=True) for _ in range(3))
    slopes = torch.tensor(alibi_slopes(2)) if alibi else None
    torch.library.opcheck(
        varlen_attention_op,
        (q, k, v, packing.cu_seqlens, packing.seq_len, 0.0, kernel, 1, slopes),
    )


@pytest.mark.parametrize("window", [None, 3])
def test_gradcheck_local_and_alibi_kernels_with_dropout_float64(window):
    """With the seed fixed, dropout is a fixed function: the backward draws the same mask."""
    real = padding_mask([4, 0, 6], 6)
    packing = Packing.from_mask(real)
    torch.manual_seed(0)
    qkv = [torch.randn(packing.num_tokens, 2, 3, dtype=torch.float64) for _ in range(3)]
    slopes = torch.tensor(alibi_slopes(2), dtype=torch.float64)

    def attention(q, k, v):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            return varlen_attention(q, k, v, packing, 0.4, window=window, alibi_slopes=slopes)

    inputs = tuple(t.requires_grad_() for t in qkv)
    clean = varlen_attention(*inputs, packing, window=window, alibi_slopes=slopes)
    assert not torch.equal(attention(*inputs), clean)
    assert torch.autograd.gradcheck(attention, inputs)


def test_padded_local_dropout_is_seeded_and_drops_in_train_mode_only():
    attn = layer(3, dropout=0.5)
    real = holes_mask()
    x = torch.randn(*real.shape, 16)
    attn.eval()
    clean = attn(x, real)
    attn.train()
    torch.manual_seed(3)
    first = attn(x, real)
    torch.manual_seed(3)
    assert torch.equal(attn(x, real), first)
    assert not torch.allclose(first[real], clean[real])


def test_the_fused_path_never_writes_the_band_out(monkeypatch):
    """Only the math path, pattern masks and recorded maps build the (T, T) band."""

    def refuse(*args, **kwargs):
        raise AssertionError("the band was written out as a T x T mask")

    monkeypatch.setattr(self_attention, "add_position_pattern", refuse)
    real = holes_mask()
    x = torch.randn(*real.shape, 16)
    attn = layer(3, "alibi")
    attn(x, real).sum().backward()
    attn(x).sum().backward()
    packing = Packing.from_mask(real)
    attn(packing.pack(x), packing=packing).sum().backward()


def test_layers_are_local_and_take_their_rope_base_as_the_config_says():
    """ModernBERT's layout: every third layer global, layer 0 included; local layers use
    local_rope_base."""
    config = dataclasses.replace(
        EncoderConfig.tiny(), n_layers=6, window=8, global_every=3, position_encoding="rotary",
        rope_base=160000.0, local_rope_base=10000.0,
    )  # fmt: skip
    model = Encoder(config)
    assert [b.attn.window for b in model.blocks] == [None, 8, 8, None, 8, 8]
    assert [b.attn.rope_base for b in model.blocks] == [160000.0, 1e4, 1e4, 160000.0, 1e4, 1e4]
    every = Encoder(dataclasses.replace(config, global_every=0, local_rope_base=None))
    assert [b.attn.window for b in every.blocks] == [8] * 6
    assert {b.attn.rope_base for b in every.blocks} == {160000.0}


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_encoder_equals_transformers_modernbert_layers(left):
    """ModernBERT's stack (rotary with global and local theta, every third layer global with a
    window of 4, no attention norm in layer 0, GeGLU) with its weights copied, padding-free
    against transformers' eager attention under its sliding-window masks."""
    pytest.importorskip("transformers.models.modernbert")
    from transformers import ModernBertConfig, ModernBertModel

    theirs_config = ModernBertConfig(
        hidden_size=32, num_attention_heads=4, intermediate_size=48, num_hidden_layers=4,
        global_attn_every_n_layers=3, local_attention=4, global_rope_theta=160000.0,
        local_rope_theta=10000.0, vocab_size=50, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        cls_token_id=1, sep_token_id=2, attn_implementation="eager", embedding_dropout=0.0,
        attention_dropout=0.0, mlp_dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = ModernBertModel(theirs_config).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    config = EncoderConfig(
        d_model=32, n_heads=4, d_ff=48, n_layers=4, activation="geglu", norm_first=True,
        bias=False, layer_norm_eps=theirs_config.norm_eps, first_attention_norm=False,
        position_encoding="rotary", rope_base=160000.0, local_rope_base=10000.0, window=4,
        global_every=3, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    ours = Encoder(config).eval()
    state = {"norm.weight": theirs.final_norm.weight}
    for i, layer in enumerate(theirs.layers):
        names = {
            "attn.qkv": layer.attn.Wqkv,
            "attn.proj": layer.attn.Wo,
            "norm2": layer.mlp_norm,
            "ff.fc1": layer.mlp.Wi,
            "ff.fc2": layer.mlp.Wo,
        }
        if i > 0:
            names["norm1"] = layer.attn_norm
        state.update({f"blocks.{i}.{ours_name}.weight": m.weight for ours_name, m in names.items()})
    ours.load_state_dict(state)
    assert [b.attn.window for b in ours.blocks] == [None, 4, 4, None]
    ids = torch.randint(3, 50, (3, 12))
    real = padding_mask([12, 7, 3], 12)
    real = real.flip(-1) if left else real
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=real.long()).last_hidden_state
        out = ours(theirs.embeddings(input_ids=ids), real)
    torch.testing.assert_close(out[real], expected[real], atol=ATOL, rtol=0)


def test_a_pattern_mask_combines_with_the_band():
    """With an attn_mask pattern the band is written out and both apply."""
    real = holes_mask()
    x = torch.randn(*real.shape, 16)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    local = layer(5)
    dense = layer(None)
    positions = real.cumsum(1) - 1
    band = band_mask(positions, positions, 2)[:, None]  # (B, 1, T, T)
    expected = dense(x, real, causal & band)
    torch.testing.assert_close(local(x, real, causal)[real], expected[real], atol=ATOL, rtol=0)


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="window must be a positive int, got 0"):
        MultiHeadSelfAttention(16, 2, window=0)
    with pytest.raises(ValueError, match="window must be a positive int, got 2.5"):
        MultiHeadSelfAttention(16, 2, window=2.5)  # type: ignore[arg-type]
    packing = Packing.from_mask(holes_mask())
    q = torch.randn(packing.num_tokens, 2, 4)
    with pytest.raises(ValueError, match="window must be a positive int, got -1"):
        varlen_attention(q, q, q, packing, window=-1)


# ---- traced models ------------------------------------------------------------------------------

LOCAL_TEXT = TextConfig(
    vocab_size=60, d_model=32, n_heads=4, d_ff=64, n_layers=3, max_positions=16,
    dropout=0.0, attention_dropout=0.0, norm_first=True, position_encoding="rotary", window=4,
    global_every=3, first_attention_norm=False,
)  # fmt: skip


@pytest.mark.slow
@needs_compiler
def test_compiled_rotary_local_text_encoder_fullgraph_equals_eager():
    torch.manual_seed(0)
    model = TextEncoder(LOCAL_TEXT).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for batch, length, seed in ((3, 7, 0), (2, 40, 1)):  # 40 > max_positions
            ids, mask = text_batch(batch, length, seed)
            torch.testing.assert_close(compiled(ids, mask), model(ids, mask), atol=ATOL, rtol=0)
            torch.testing.assert_close(compiled(ids), model(ids), atol=ATOL, rtol=0)


def test_exported_rotary_local_text_encoder_takes_any_batch_and_length():
    torch.manual_seed(0)
    model = TextEncoder(LOCAL_TEXT).eval()
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=64)
    program = torch.export.export(
        model, text_batch(3, 7, 0), dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length})
    )
    for size, seed in (((4, 11), 1), ((2, 50), 2)):
        ids, mask = text_batch(*size, seed)
        with torch.no_grad():
            torch.testing.assert_close(
                program.module()(ids, mask), model(ids, mask), atol=ATOL, rtol=0
            )
