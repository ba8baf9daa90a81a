"""benchmarks/compare.py and the modules it shares with gpu.py: the correctness gate passes peers
with our weights and stops a perturbed one, FLOPs follow the perf-anchors formula, and a tiny
comparison runs end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from encoderkit import EncoderConfig

# `python -m pytest` puts the repository root on sys.path but the `pytest` script does not, and
# `benchmarks/` lives there, outside the installed package.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import compare, gates, measure, peers, steps, workloads  # noqa: E402

TINY = workloads.Shape(
    "tiny", n_layers=2, d_model=32, n_heads=4, d_ff=64, vocab_size=100, max_positions=32
)
BATCHES = workloads.make_batches(batch_size=4, seq_len=16, min_len=4)


def test_bert_base_flops_are_the_perf_anchors_figure():
    flops = measure.forward_flops(12, 768, 3072, [128])
    assert flops == 12 * (24 * 128 * 768**2 + 4 * 768 * 128**2)  # f = 4d: 24 T d^2 + 4 d S^2
    assert round(flops / 1e9, 2) == 22.35  # GFLOP per sequence, perf-anchors section 1
    assert round(flops / 12 / 1e9, 3) == 1.862  # per layer
    assert flops == 128 * EncoderConfig.bert_base().flops_per_token(128)


def test_flops_count_real_tokens_and_the_general_ffn_width():
    lengths = [3, 5, 8]
    d, f, layers = 8, 20, 3  # f != 4 d: 8 d^2 + 4 d f per token
    expected = layers * ((8 * d * d + 4 * d * f) * 16 + 4 * d * (9 + 25 + 64))
    assert measure.forward_flops(layers, d, f, lengths) == expected
    config = EncoderConfig(d_model=d, n_heads=2, d_ff=f, n_layers=layers)
    assert expected == sum(s * config.flops_per_token(s) for s in lengths)


def test_batches_are_fixed_by_the_seed():
    varlen, dense = workloads.make_batches()
    assert varlen == workloads.make_batches()[0]
    assert len(varlen.lengths) == 16 and all(32 <= s <= 128 for s in varlen.lengths)
    assert varlen.mask is not None and varlen.mask.sum() == varlen.tokens
    assert torch.equal(varlen.real[0], torch.arange(128) < varlen.lengths[0])  # right padding
    assert dense.mask is None and dense.tokens == 16 * 128


@pytest.fixture(params=["encoder", "text model"])
def group(request, tmp_path):
    if request.param == "encoder":
        return peers.encoder_group(TINY)
    return peers.text_group(TINY, tmp_path)


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: b.kind)
def test_gate_passes_same_weights_and_stops_a_perturbed_peer(group, batch):
    inputs = group.make_inputs(batch)
    target = steps.make_target(batch, TINY.d_model)
    diffs = steps.check_inference(group, batch, inputs)
    out_diffs, grad_diffs = steps.check_training(group, batch, inputs, target)
    assert len(diffs) == len(group.contenders) - 1
    assert max(diffs.values()) < 1e-5
    assert max(out_diffs.values()) < 1e-5 and max(grad_diffs.values()) < 1e-5

    peer = group.contenders[-1]
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        peer.probe.add_(1e-2 * torch.randn(peer.probe.shape, generator=g))
    with pytest.raises(gates.MismatchError, match=f"{peer.name} differs by"):
        steps.check_inference(group, batch, inputs)
    with pytest.raises(gates.MismatchError, match="training output"):
        steps.check_training(group, batch, inputs, target)


def test_gate_stops_nan():
    with pytest.raises(gates.MismatchError, match="peer differs by nan"):
        gates.gate({"peer": math.nan}, "output")


def test_tiny_comparison_end_to_end():
    plan = [(TINY, {"infer": 1, "train": 1})]
    report = compare.run(plan, batches=BATCHES, ceiling_n=128)
    rows = report.rows
    assert len(rows) == 2 * 2 * (2 + 3)  # modes x batches x (encoder + text-model contenders)
    assert report.ceiling_flops_per_s > 0
    for r in rows:
        batch = BATCHES[0] if r.batch == "varlen" else BATCHES[1]
        forward = measure.forward_flops(2, 32, 64, batch.lengths)
        assert r.flops == (3 * forward if r.mode == "train" else forward)
        assert r.real_tokens == batch.tokens and len(r.times_ms) == 1
        assert r.tokens_per_s > 0 and r.mfu > 0 and math.isfinite(r.speedup)
        if r.ours:
            assert r.out_diff is None and r.grad_diff is None
        else:
            assert r.out_diff < 1e-4
            assert (r.grad_diff < 1e-4) if r.mode == "train" else r.grad_diff is None
    ours, *peers = [
        r for r in rows if (r.mode, r.batch, r.level) == ("infer", "varlen", "text model")
    ]
    assert [p.contender for p in peers] == ["HF BertModel sdpa", "HF BertModel eager"]
    assert ours.speedup == pytest.approx(min(p.median_ms for p in peers) / ours.median_ms)
    assert peers[0].speedup == pytest.approx(peers[0].median_ms / ours.median_ms)
    table = compare.markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and "vs best peer" in table[2]
    assert "matmul ceiling (128^3" in compare.header(report)
    assert json.loads(json.dumps(report.as_dict()))["rows"][0]["contender"] == "encoderkit"
    assert all(r.compile_s is None for r in rows) and "Compiled rows" not in compare.header(report)


@pytest.mark.slow
def test_compiled_rows_race_beside_the_eager_ones():
    # the eager backend: dynamo traces each model as inductor would, without generating code
    report = compare.run(
        [(TINY, {"infer": 1})], batches=BATCHES[:1], ceiling_n=128, compile="eager"
    )
    names = [r.contender for r in report.rows]
    assert names == [
        "encoderkit",
        "encoderkit compiled",
        "nn.TransformerEncoder",
        "nn.TransformerEncoder compiled",
        "encoderkit",
        "encoderkit compiled",
        "HF BertModel sdpa",
        "HF BertModel sdpa compiled",
        "HF BertModel eager",
    ]
    for r in report.rows:
        assert (r.compile_s is not None and r.compile_s > 0) == r.contender.endswith("compiled")
        assert r.contender == "encoderkit" or r.out_diff < 1e-5  # compiled ours is gated too
    text = compare.markdown_table(report.rows)
    assert "| encoderkit compiled | " in text and "**" in text.splitlines()[3]  # ours: vs best
    assert "whole-model `torch.compile` (eager)" in compare.header(report)


def _timed(name: str, median_ms: float) -> compare.Row:
    return compare.Row("s", "varlen", "infer", "encoder", name, [median_ms], 1, 1, 1.0)


def test_speedups_compare_every_encoderkit_row_with_the_best_peer():
    rows = measure.with_speedups(
        [
            _timed("encoderkit", 10.0),
            _timed("encoderkit compiled", 5.0),
            _timed("nn.TransformerEncoder", 20.0),
            _timed("nn.TransformerEncoder compiled", 8.0),
        ]
    )
    assert [r.speedup for r in rows] == [0.8, 1.6, 2.0, 0.8]  # peers: their median / eager ours
    alone = measure.with_speedups([_timed("nn.TransformerEncoder", 20.0)])
    assert math.isnan(alone[0].speedup)  # nothing of ours ran to compare with


DEFAULT, REPEATS, QUICK = compare.DEFAULT_PLAN, compare.REPEATS, compare.QUICK_REPEATS


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # the default leaves out BERT-base training, the one part that cannot fit in 2 minutes
        (
            [],
            [
                ("MiniLM-L6", DEFAULT["minilm"]),
                ("BERT-base", {"infer": DEFAULT["bert-base"]["infer"]}),
            ],
        ),
        (["--quick"], [("MiniLM-L6", QUICK)]),
        (["--all"], [("MiniLM-L6", REPEATS["minilm"]), ("BERT-base", REPEATS["bert-base"])]),
        (
            ["--all", "--repeats", "1"],
            [("MiniLM-L6", {"infer": 1, "train": 1}), ("BERT-base", {"infer": 1, "train": 1})],
        ),
        (
            ["--shapes", "bert-base", "--modes", "train"],
            [("BERT-base", {"train": REPEATS["bert-base"]["train"]})],
        ),
        (["--modes", "train"], [("MiniLM-L6", {"train": DEFAULT["minilm"]["train"]})]),
    ],
)
def test_plan_follows_the_flags(argv, expected):
    plan = compare.make_plan(compare.parse_args(argv))
    assert [(shape.name, counts) for shape, counts in plan] == expected


@pytest.mark.parametrize(
    "argv", [["--shapes", "bert-large"], ["--modes", ""], ["--repeats", "0"], ["--dropout", "1"]]
)
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(argv)
    assert "expected" in capsys.readouterr().err
