"""benchmarks/sentence_cpu.py, sentence_peers.py and ort_peers.py on a tiny random BERT: every
row is there with its speed and accuracy, the fp32 rows agree with encoderkit's before they are
timed (and a peer that does not stops the run), the batch is the documented one, and the targets
are judged on the right rows."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = str(Path(__file__).resolve().parents[1])  # benchmarks/ sits beside the package
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import gates, sentence_cpu, sentence_peers, workloads  # noqa: E402

EAGER_ROWS = [
    "encoderkit fp32",
    "encoderkit bf16",
    "HF BertModel sdpa fp32",
    "HF BertModel sdpa bf16",
    "ORT fp32",
    "ORT fused fp32",
    "ORT fused int8",
]
COMPILED_ROWS = [
    "encoderkit fp32 compiled",
    "encoderkit bf16 compiled",
    "HF BertModel sdpa fp32 compiled",
]


@pytest.fixture
def tiny(tmp_path: Path) -> sentence_peers.Models:
    return sentence_peers.tiny_models(tmp_path)


def test_the_full_batch_is_32_x_128_with_47_percent_real_tokens():
    w = sentence_peers.FULL
    batch = workloads.make_batches(w.batch_size, w.seq_len, w.min_len, w.seed)[0]
    assert len(batch.lengths) == 32 and batch.seq_len == 128 and max(batch.lengths) == 128
    assert batch.tokens == 1943  # 47.4% of 4,096
    assert min(batch.lengths) >= 3  # [CLS], a word, [SEP]


def test_token_ids_are_cls_words_sep_then_padding(tiny):
    batch, ids = sentence_peers.sentence_batch(sentence_peers.SMOKE, tiny)
    assert ids.shape == (4, 16)
    for row, n in zip(ids, batch.lengths, strict=True):
        assert row[0] == tiny.cls_id and row[n - 1] == tiny.sep_id
        assert ((row[1 : n - 1] >= tiny.first_word) & (row[1 : n - 1] < 100)).all()
        assert (row[n:] == 0).all()  # pad_token_id


def test_every_row_with_its_speed_and_accuracy(tiny):
    report = sentence_cpu.run(tiny, sentence_peers.SMOKE, repeats=1, compile_backend=None)
    rows = {r.contender: r for r in report.rows}
    assert list(rows) == EAGER_ROWS
    for r in report.rows:
        assert len(r.times_ms) == 1 and r.tokens_per_s > 0 and r.real_tokens == 28
        assert math.isfinite(r.speedup) and math.isfinite(r.vs_ort)
    # fp32 rows compute encoderkit's function (measured 1 - cos <= 1.1e-14); the run checked
    # their embeddings within 1e-4 before timing
    for name in ("HF BertModel sdpa fp32", "ORT fp32", "ORT fused fp32"):
        assert 1 - rows[name].cos_ours < 1e-12 and 1 - rows[name].cos_hf < 1e-12
    # bf16 and int8 lose a little, not everything (measured 1 - cos: bf16 2.2e-9, int8 2.5e-5)
    for name in ("encoderkit bf16", "HF BertModel sdpa bf16", "ORT fused int8"):
        assert 1e-10 < 1 - rows[name].cos_ours < 1e-3
    assert rows["encoderkit fp32"].setup_s is None and rows["ORT fused int8"].setup_s > 0
    assert rows["ORT fp32"].vs_ort == 1.0
    assert max(r.speedup for r in report.rows if not r.contender.startswith("encoderkit")) == 1.0
    assert report.fused_ops["Attention"] == 2  # one per layer: the optimizer fused attention
    assert [t["rows"].split(" vs ")[1] for t in report.targets] == [
        min(
            (r for r in report.rows if not r.contender.startswith("encoderkit")),
            key=lambda r: r.median_ms,
        ).contender,
        min((rows["ORT fp32"], rows["ORT fused fp32"]), key=lambda r: r.median_ms).contender,
    ]
    text = sentence_cpu.markdown(report)
    assert "AVX512-BF16" in text and "4 x 16, 28 real tokens (43.8%)" in text
    assert "| **encoderkit bf16** |" in text and "| ORT fused int8 |" in text
    assert text.count("\n|") == 2 + len(EAGER_ROWS) + 2 + 2  # two tables with their rules


def test_a_peer_computing_something_else_stops_the_run(tiny):
    weight = tiny.hf.embeddings.word_embeddings.weight
    with torch.no_grad():  # not a constant shift, which the LayerNorm after it would remove
        weight.add_(1e-2 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(gates.MismatchError, match="HF BertModel sdpa fp32 differs by"):
        sentence_cpu.run(tiny, sentence_peers.SMOKE, repeats=1, compile_backend=None)


def _row(name: str, precision: str, median_ms: float, cos: float = 1.0) -> sentence_cpu.Row:
    return sentence_cpu.Row(name, precision, [median_ms], 100, 1.0, None, cos, cos)


def test_targets_take_the_fastest_rows_and_the_cosine_bound():
    rows = [
        _row("encoderkit fp32", "fp32", 100.0),
        _row("encoderkit fp32 compiled", "fp32", 80.0),
        _row("encoderkit bf16", "bf16", 40.0, cos=0.9999 - 1e-6),  # fastest, but not accurate
        _row("encoderkit bf16 compiled", "bf16", 50.0, cos=0.99995),
        _row("ORT fp32", "fp32", 120.0),
        _row("ORT fused fp32", "fp32", 99.0),
        _row("ORT fused int8", "int8", 70.0, cos=0.89),
    ]
    bf16, fp32 = sentence_cpu.targets(rows)
    assert bf16["rows"] == "encoderkit bf16 compiled vs ORT fused int8"
    assert bf16["value"] == pytest.approx(70 / 50) and bf16["verdict"] == "met"
    assert fp32["rows"] == "encoderkit fp32 compiled vs ORT fused fp32"
    assert fp32["value"] == pytest.approx(99 / 80) and fp32["verdict"] == "met"
    rows[3] = _row("encoderkit bf16 compiled", "bf16", 50.0, cos=0.999)
    bf16, _ = sentence_cpu.targets(rows)
    assert math.isnan(bf16["value"]) and bf16["verdict"] == "missed"
    assert bf16["rows"].startswith("no encoderkit bf16 row within cosine 0.9999")


@pytest.mark.slow
def test_smoke_command_with_compiled_rows_writes_its_files(tmp_path, capsys):
    out_json, out_md = tmp_path / "rows.json", tmp_path / "table.md"
    argv = ["--smoke", "--json", str(out_json), "--markdown", str(out_md)]
    assert sentence_cpu.main(argv) == 0  # compiled rows traced with the eager backend
    report = json.loads(out_json.read_text())
    rows = {r["contender"]: r for r in report["rows"]}
    assert set(rows) == set(EAGER_ROWS + COMPILED_ROWS)
    for name in COMPILED_ROWS:
        assert rows[name]["setup_s"] > 0
        assert 1 - rows[name]["cos_ours"] < (1e-12 if "fp32" in name else 1e-3)
    assert report["real_share"] == pytest.approx(28 / 64)
    assert out_md.read_text() in capsys.readouterr().out


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        sentence_cpu.parse_args(["--repeats", "0"])
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
