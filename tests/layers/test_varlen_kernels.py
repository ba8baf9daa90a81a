"""The variable-length attention operator: opcheck, gradients with dropout, dropout statistics,
and the traced models it makes possible (torch.compile fullgraph, torch.export)."""

from __future__ import annotations

import pytest
import torch
from reference import padding_mask, reference_attention
from tiny import needs_compiler, text_batch

from encoderkit import TextConfig, TextEncoder, VisionConfig, VisionEncoder
from encoderkit.layers.packing import Packing, real_token_index
from encoderkit.layers.varlen import varlen_attention
from encoderkit.layers.varlen_kernels import varlen_attention_op

CPU_KERNELS = ["loop", "repad"]
needs_flash = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def packed_qkv(lengths, heads=2, width=8, dtype=torch.float32, device="cpu", seed=0):
    """Random packed q, k, v (N, H, K) for sequences of ``lengths`` and their Packing."""
    g = torch.Generator().manual_seed(seed)
    real = padding_mask(lengths, max(lengths)).to(device)
    packing = Packing.from_mask(real)
    n = sum(lengths)
    qkv = [torch.randn(n, heads, width, generator=g, dtype=dtype).to(device) for _ in range(3)]
    return qkv, packing


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_varlen_attention(kernel, dtype):
    (q, k, v), packing = packed_qkv([5, 0, 3, 7], dtype=dtype)
    for t in (q, k, v):
        t.requires_grad_()
    torch.library.opcheck(
        varlen_attention_op, (q, k, v, packing.cu_seqlens, packing.seq_len, 0.0, kernel)
    )


def test_opcheck_real_token_index():
    real = padding_mask([3, 0, 5], 5)
    torch.library.opcheck(real_token_index, (real,))
    assert torch.equal(real_token_index(real), real.flatten().nonzero().squeeze(1))


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_gradcheck_with_dropout_float64(kernel):
    """With the seed fixed, dropout is a fixed function; its gradient must match finite
    differences, so the backward draws the same mask as the forward."""
    (q, k, v), packing = packed_qkv([3, 0, 4], width=3, dtype=torch.float64)

    def attention(q, k, v):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            return varlen_attention(q, k, v, packing, dropout_p=0.4, kernel=kernel)

    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert not torch.equal(attention(q, k, v), varlen_attention(q, k, v, packing))
    assert torch.autograd.gradcheck(attention, inputs)


def test_loop_and_repad_agree_without_dropout_and_with_the_reference():
    (q, k, v), packing = packed_qkv([6, 1, 4])
    loop = varlen_attention(q, k, v, packing, kernel="loop")
    repad = varlen_attention(q, k, v, packing, kernel="repad")
    torch.testing.assert_close(loop, repad, atol=1e-6, rtol=0)
    padded = [packing.unpack(t).transpose(1, 2) for t in (q, k, v)]  # -> (B, H, T, K)
    expected, _ = reference_attention(*padded, padding_mask([6, 1, 4], 6)[:, None, None, :])
    torch.testing.assert_close(
        loop.double(), packing.pack(expected.transpose(1, 2)), atol=1e-5, rtol=0
    )


def dropout_statistics(kernel, device="cpu", dtype=torch.float32, p=0.25):
    """Each query attends uniformly to 64 keys (q = 0) whose values are one-hot, so output
    entry (n, h, j) is P_nj * Z_nj: 0 where the probability was dropped, 1 / (64 (1 - p))
    otherwise. Returns the dropped share and the largest deviation from the kept value."""
    s, heads = 64, 4
    lengths = [s] * 8
    packing = Packing.from_mask(padding_mask(lengths, s).to(device))
    n = sum(lengths)
    q = k = torch.zeros(n, heads, s, dtype=dtype, device=device)
    v = (
        torch.eye(s, dtype=dtype, device=device)
        .repeat(len(lengths), 1)[:, None]
        .expand(n, heads, s)
    )
    torch.manual_seed(0)
    out = varlen_attention(q, k, v.contiguous(), packing, dropout_p=p, kernel=kernel)
    kept = out != 0
    expected = 1 / (s * (1 - p))
    return (~kept).float().mean().item(), (out[kept].double() - expected).abs().max().item()


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_dropout_drops_a_share_p_of_the_probabilities_and_rescales_the_rest(kernel):
    # 8 x 4 x 64 x 64 = 131,072 draws: the dropped share's standard error is 0.0012
    dropped, error = dropout_statistics(kernel)
    assert abs(dropped - 0.25) < 0.006
    assert error < 1e-6


@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_dropout_is_unbiased_and_seeded(kernel):
    (q, k, v), packing = packed_qkv([5, 2, 6], heads=2, width=4)
    clean = varlen_attention(q, k, v, packing, kernel=kernel)
    torch.manual_seed(3)
    draws = torch.stack(
        [varlen_attention(q, k, v, packing, 0.3, kernel=kernel) for _ in range(2000)]
    )
    torch.manual_seed(3)
    assert torch.equal(varlen_attention(q, k, v, packing, 0.3, kernel=kernel), draws[0])
    # the mean of 2000 draws is within 5 standard errors of the dropout-free output
    assert ((draws.mean(0) - clean).abs() <= 5 * draws.std(0) / 2000**0.5 + 1e-6).all()


@needs_flash
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flash_varlen_kernel_equals_loop_and_drops_a_share_p(dtype):
    (q, k, v), packing = packed_qkv([37, 0, 64, 5], heads=4, width=64, dtype=dtype, device="cuda")
    flash = varlen_attention(q, k, v, packing, kernel="varlen")
    loop = varlen_attention(q.float(), k.float(), v.float(), packing, kernel="repad")
    torch.testing.assert_close(flash.float(), loop, atol=2e-2, rtol=2e-2)
    dropped, error = dropout_statistics("varlen", "cuda", dtype)
    assert abs(dropped - 0.25) < 0.006
    assert error < 1e-3 * (1 / 48)  # half precision of 1 / (64 * 0.75)


@needs_flash
def test_flash_varlen_gradients_with_dropout_are_those_of_its_mask():
    """Dropout 0 gradients equal the fp32 kernel's; with dropout the backward replays the
    forward's Philox state, so two backward passes of one forward agree exactly."""
    (q, k, v), packing = packed_qkv([17, 33, 8], heads=2, width=32, dtype=torch.bfloat16,
                                    device="cuda")  # fmt: skip
    inputs = [t.requires_grad_() for t in (q, k, v)]
    out = varlen_attention(*inputs, packing, 0.2, kernel="varlen")
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, inputs, grad, retain_graph=True)
    second = torch.autograd.grad(out, inputs, grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


# ---- traced models -------------------------------------------------------------------------------

TEXT = TextConfig(
    vocab_size=60, d_model=32, n_heads=4, d_ff=64, n_layers=2, max_positions=32,
    dropout=0.0, attention_dropout=0.0,
)  # fmt: skip


def varlen_nodes(graph: torch.fx.Graph) -> int:
    return sum(node.target is torch.ops.encoderkit.varlen_attention.default for node in graph.nodes)


@pytest.mark.slow
@needs_compiler
def test_compiled_text_encoder_fullgraph_equals_eager_padded_and_unpadded():
    torch.manual_seed(0)
    model = TextEncoder(TEXT).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for batch, length, seed in ((3, 7, 0), (5, 12, 1)):
            ids, mask = text_batch(batch, length, seed)
            torch.testing.assert_close(compiled(ids, mask), model(ids, mask), atol=1e-5, rtol=0)
            full = torch.ones_like(mask)
            torch.testing.assert_close(compiled(ids, full), model(ids, full), atol=1e-5, rtol=0)
            torch.testing.assert_close(compiled(ids), model(ids), atol=1e-5, rtol=0)


@pytest.mark.slow
@needs_compiler
def test_compiled_training_step_with_dropout_equals_eager_gradients():
    """Same seed, same masks: the compiled forward and backward give eager's gradients."""
    torch.manual_seed(0)
    model = TextEncoder(TextConfig(**{**TEXT.__dict__, "attention_dropout": 0.2})).train()
    compiled = torch.compile(model, fullgraph=True)
    ids, mask = text_batch(4, 9, 2)
    grads = []
    for forward in (compiled, model):
        model.zero_grad()
        torch.manual_seed(1)
        out = forward(ids, mask)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for ours, eager in zip(*grads, strict=True):
        torch.testing.assert_close(ours, eager, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_exported_text_encoder_has_one_attention_node_per_layer_and_dynamic_shapes():
    torch.manual_seed(0)
    model = TextEncoder(TEXT).eval()
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=TEXT.max_positions)
    program = torch.export.export(
        model, text_batch(3, 7, 0), dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length})
    )
    assert varlen_nodes(program.graph) == TEXT.n_layers
    for size, seed in (((4, 11), 1), ((2, 32), 2)):
        ids, mask = text_batch(*size, seed)
        with torch.no_grad():
            torch.testing.assert_close(
                program.module()(ids, mask), model(ids, mask), atol=1e-5, rtol=0
            )
            full = torch.ones_like(mask)
            torch.testing.assert_close(
                program.module()(ids, full), model(ids, full), atol=1e-5, rtol=0
            )


def test_exported_vision_encoder_takes_any_batch():
    torch.manual_seed(0)
    config = VisionConfig(image_size=8, patch_size=4, d_model=16, n_heads=2, d_ff=32, n_layers=1)
    model = VisionEncoder(config).eval()
    program = torch.export.export(
        model, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    pixels = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(pixels), model(pixels), atol=1e-5, rtol=0)


def test_tracing_skips_value_checks_but_eager_calls_keep_them():
    model = TextEncoder(TEXT).eval()
    ids, mask = text_batch(2, 5, 0)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 60\), got values from"):
        model(ids + 100, mask)
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        model(ids, mask * 2)
    # the trace keeps the mask even when nothing is padded, so the graph serves padded batches
    full = torch.ones_like(mask)
    program = torch.export.export(model, (ids, full))
    assert varlen_nodes(program.graph) == TEXT.n_layers
    torch.testing.assert_close(program.module()(ids, mask), model(ids, mask), atol=1e-5, rtol=0)
