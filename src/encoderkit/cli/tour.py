"""A short tour of the encoder: build one, run a padded batch, and check it against the math path
and a float64 copy. ``make demo`` runs it through ``encoderkit tour``.

Shape legend: B batch, T tokens, D model width, H heads.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from collections.abc import Callable

import torch

from encoderkit.layers.config import EncoderConfig
from encoderkit.layers.encoder import Encoder
from encoderkit.layers.self_attention import record_attention

PRESETS: dict[str, Callable[[], EncoderConfig]] = {
    "minilm_l6": EncoderConfig.minilm_l6,
    "bert_base": EncoderConfig.bert_base,
    "vit_base": EncoderConfig.vit_base,
    "tiny": EncoderConfig.tiny,
}


def add_parsers(commands: argparse._SubParsersAction) -> None:
    tour = commands.add_parser(
        "tour", help="build an encoder, run a padded batch, check it against the math path"
    )
    tour.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="minilm_l6",
        help="the encoder's sizes; default: minilm_l6",
    )
    tour.add_argument(
        "--batch", type=int, default=4, help="sequences in the batch, padded; default: 4"
    )
    tour.add_argument("--seq-len", type=int, default=64, help="tokens per row; default: 64")
    tour.add_argument("--seed", type=int, default=0, help="seeds weights and inputs; default: 0")
    tour.add_argument(
        "--json", action="store_true", help="print the measured figures as one JSON object"
    )
    tour.set_defaults(run=tour_command)


def tour_command(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.seq_len < 1:
        raise SystemExit("encoderkit tour: --batch and --seq-len must be at least 1")
    if not args.json:
        run_tour(args.preset, args.batch, args.seq_len, args.seed)
        return 0
    figures = run_tour(args.preset, args.batch, args.seq_len, args.seed, log=lambda line: None)
    setup = {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len, "seed": args.seed}
    print(json.dumps(setup | figures))
    return 0


def padded_lengths(batch: int, seq_len: int) -> list[int]:
    """Lengths from full down to 0, so the batch has padding and one all-padding sequence."""
    if batch == 1:
        return [seq_len]
    return [round(seq_len * (batch - 1 - i) / (batch - 1)) for i in range(batch)]


def run_tour(
    preset: str = "minilm_l6",
    batch: int = 4,
    seq_len: int = 64,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run the tour, print what it finds with ``log``, and return the measured figures."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    torch.manual_seed(seed)
    config = PRESETS[preset]()
    model = Encoder(config).eval()
    D, H = config.d_model, config.n_heads
    log(f"encoder {preset}: {config.n_layers} layers, d_model {D}, {H} heads of {config.head_dim},")
    log(f"  d_ff {config.d_ff}, {config.activation}, {'pre' if config.norm_first else 'post'}-norm")
    log(f"parameters: {model.num_parameters():,}")
    flops = config.flops_per_token(seq_len)
    log(f"forward FLOPs per token at T={seq_len}: {flops / 1e6:.1f} M")

    lengths = padded_lengths(batch, seq_len)
    x = torch.randn(batch, seq_len, D)
    attention_mask = torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
    with torch.inference_mode():
        with record_attention(model) as maps:
            out = model(x, attention_mask)
        fused_again = model(x, attention_mask)
        math_model = Encoder(dataclasses.replace(config, attention_backend="math")).eval()
        math_model.load_state_dict(model.state_dict())
        out_math = math_model(x, attention_mask)
        out_f64 = copy.deepcopy(math_model).double()(x.double(), attention_mask)
        padded_model = Encoder(dataclasses.replace(config, padding_free=False)).eval()
        padded_model.load_state_dict(model.state_dict())
        out_padded = padded_model(x, attention_mask)
        alone = model(x[:1, : lengths[0]])
    log(f"input  x {tuple(x.shape)}, attention_mask {tuple(attention_mask.shape)}")
    log(f"       real lengths {lengths}")
    log(f"output   {tuple(out.shape)}")

    real = attention_mask[..., None]  # (B, T) -> (B, T, 1)
    figures = {
        "max_abs_fused_vs_math": (out - out_math).abs().max().item(),
        "max_abs_fused_vs_float64": (out.double() - out_f64).abs().max().item(),
        "max_abs_math_vs_float64": (out_math.double() - out_f64).abs().max().item(),
        "max_abs_packed_vs_padded": (out - out_padded).abs().max().item(),
        "max_abs_alone_vs_batched": (alone - out[:1, : lengths[0]]).abs().max().item(),
        "max_abs_padded_outputs": out.masked_select(~real).abs().max().item()
        if (~real).any()
        else 0.0,
        "nan_count": float(out.isnan().sum().item()),
        "recording_changed_output": float(not torch.equal(out, fused_again)),
        "attention_maps": float(len(maps)),
        "max_row_sum_error": max(_row_sum_error(p, attention_mask) for p in maps),
    }
    log(f"fused vs math path:     max |diff| = {figures['max_abs_fused_vs_math']:.2e}")
    log(f"fused vs float64:       max |diff| = {figures['max_abs_fused_vs_float64']:.2e}")
    log(f"math  vs float64:       max |diff| = {figures['max_abs_math_vs_float64']:.2e}")
    log(f"padding-free vs padded: max |diff| = {figures['max_abs_packed_vs_padded']:.2e}")
    log(f"alone vs in the batch:  max |diff| = {figures['max_abs_alone_vs_batched']:.2e}")
    log(
        f"padded outputs: max |value| = {figures['max_abs_padded_outputs']:.1f}, "
        f"NaN: {int(figures['nan_count'])} (the length-0 sequence is all zeros)"
    )
    log(
        f"attention maps recorded: {len(maps)} x {tuple(maps[0].shape)} (B, H, T, T), "
        f"rows over real keys sum to 1 within {figures['max_row_sum_error']:.1e}"
    )
    same = "DIFFERENT" if figures["recording_changed_output"] else "bit-identical"
    log(f"outputs with and without recording: {same}")
    return figures


def _row_sum_error(probs: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Largest |row sum - 1| over real queries of sequences that have real tokens."""
    sums = probs.sum(dim=-1)  # (B, H, T, T) -> (B, H, T)
    real = attention_mask[:, None, :].expand_as(sums)  # (B, T) -> (B, H, T)
    return (sums[real] - 1).abs().max().item() if real.any() else 0.0
