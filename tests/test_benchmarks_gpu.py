"""benchmarks/gpu.py and its gpu_* modules on the CPU: the smoke run goes through every section,
its correctness checks pass, and it writes its results; a failing section does not stop the
others; timm's key names map onto every weight of ours; bad flags are refused."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from encoderkit import ImageClassifier

# `python -m pytest` puts the repository root on sys.path but the `pytest` script does not, and
# `benchmarks/` lives there, outside the installed package.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import gpu, gpu_bench, gpu_compare, gpu_report, gpu_vit, peers, workloads  # noqa: E402

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, dict[str, Any]]:
    """One smoke run of every section (about 10 s on 2 cores), shared by the tests below."""
    out = tmp_path_factory.mktemp("gpu")
    code = gpu.main(["--smoke", "--out", str(out)])
    return code, out, json.loads((out / "gpu.json").read_text())


def _section(report: dict[str, Any], name: str) -> dict[str, Any]:
    (section,) = [s for s in report["sections"] if s["name"] == name]
    return section


def test_smoke_run_runs_every_section(smoke):
    code, _, report = smoke
    errors = {s["name"]: s["errors"] for s in report["sections"] if s["errors"]}
    assert code == 0, errors
    assert [s["name"] for s in report["sections"]] == list(gpu.SECTIONS)
    assert all(s["status"] == "ok" for s in report["sections"])
    assert report["ceiling_flops_per_s"] > 0


def test_smoke_correctness_checks_pass_within_tolerance(smoke):
    checks = _section(smoke[2], "correctness")["checks"]
    ran = [c for c in checks if c["passed"] is not None]
    names = {c["name"] for c in ran}
    # fp32 padding-free and padded execution, bf16 both ways and under autocast, each kernel
    assert any(n.startswith("fp32 padding-free") and n.endswith("output") for n in names)
    assert any(n.startswith("fp32 padded") and n.endswith("grad") for n in names)
    assert any(n.startswith("bf16 padding-free, kernel repad") for n in names)
    assert any(n.startswith("autocast bf16") for n in names)
    kernels = {f"varlen_attention kernel {k}, float32: dq" for k in ("loop", "repad")}
    assert kernels <= names
    for c in ran:
        assert c["passed"] and c["value"] <= c["tolerance"], c
        assert c["tolerance"] <= (
            gpu_bench.FP32_TOL if c["name"].startswith("fp32") else gpu_bench.BF16_TOL
        )
    skipped = {c["name"] for c in checks if c["passed"] is None}
    if not CUDA:  # the varlen kernel is CUDA's
        assert skipped == {
            "varlen_attention kernel varlen, float32",
            "varlen_attention kernel varlen, bfloat16",
        }
        assert all("needs CUDA" in c["note"] for c in checks if c["passed"] is None)


def test_smoke_gates_and_rows(smoke):
    _, _, report = smoke
    compare = _section(report, "compare")
    gates = compare["checks"]
    assert gates and all(c["passed"] for c in gates)
    rows = compare["rows"]
    # batches x (inference: encoder 2 + text model 3 contenders; training: the encoder group's
    # two with their compiled copies, 4, and the text model's 3): "--compile train", the default
    assert len(rows) == 2 * (2 + 3) + 2 * (4 + 3)
    for r in rows:
        assert r["median_ms"] > 0 and r["per_s"] > 0 and r["mfu"] > 0
        assert math.isfinite(r["speedup"])
        assert (r["out_diff"] is None) == (r["contender"] == "encoderkit")
        compiled = r["contender"].endswith(" compiled")
        assert (r["compile_s"] is not None and r["compile_s"] > 0) == compiled
        assert not compiled or r["case"] in (
            "tiny varlen train, encoder",
            "tiny dense train, encoder",
        )
    assert len(compare["info"]["graph breaks"]) == 2 * 2  # per compiled contender and case
    targets = {t["what"].split(":")[0]: t for t in compare["info"]["targets"]}
    assert set(targets) == {
        "tiny dense train, encoder (dropout 0.1)",
        "tiny varlen train, encoder (dropout 0.1)",
        "tiny varlen infer, text model",
        "tiny varlen infer, encoder",
    }
    whats = [t["what"] for t in compare["info"]["targets"]]
    assert any(w.endswith("vs nn.TransformerEncoder compiled") for w in whats)
    assert {t["unit"] for t in targets.values()} == {"x", "%"}
    vit = _section(report, "vit")
    assert {r["case"].split()[-1] for r in vit["rows"]} == {"infer", "train"}
    attention = _section(report, "attention")
    cases = {(r["case"], r["contender"]) for r in attention["rows"]}
    assert ("attention T=64 fwd+bwd", "math, 1 x T") in cases
    assert ("attention T=128 fwd", "math, 1 x T") not in cases  # the math path at the first T only
    assert all(c["passed"] is not False for c in attention["checks"])


def test_smoke_writes_json_and_markdown(smoke):
    _, out, report = smoke
    text = (out / "gpu.md").read_text()
    for name in gpu.SECTIONS:
        assert f"## {name} (ok" in text
    assert "| check | metric | value | tolerance | result |" in text
    assert "FAILED" not in text
    assert report["sizes"]["name"] == "smoke" and report["device"] == ("cuda" if CUDA else "cpu")


def test_a_failing_section_is_reported_and_the_rest_run(tmp_path, monkeypatch, capsys):
    def broken(b: gpu_bench.Bench, section: gpu_bench.Section) -> None:
        raise RuntimeError("no such kernel")

    monkeypatch.setitem(gpu.RUNNERS, "env", broken)
    code = gpu.main(["--smoke", "--sections", "attention,env", "--out", str(tmp_path)])
    assert code == 1
    report = json.loads((tmp_path / "gpu.json").read_text())
    env, attention = report["sections"]  # in the documented order, whatever the flag's
    assert env["status"] == "error" and env["errors"] == ["RuntimeError: no such kernel"]
    assert attention["status"] == "ok" and attention["rows"]
    assert "RuntimeError: no such kernel" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_a_failing_contender_is_reported_and_its_peers_timed(mode):
    b = gpu_bench.Bench(gpu_bench.SMOKE, torch.device("cpu"), dropout=0.1)
    section = gpu_bench.Section("compare")
    group = peers.encoder_group(gpu_bench.SMOKE.shape)
    fresh = {c.name: peers.state_copy(c.model) for c in group.contenders}
    batch = workloads.make_batches(4, 32, 8)[0]

    def broken(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise RuntimeError("varlen_attn: no kernel image")

    group.contenders[0].forward = broken
    rows = gpu_compare.time_group(b, section, "case", group, fresh, batch, mode)
    assert [r.contender for r in rows] == ["nn.TransformerEncoder"]
    assert math.isnan(rows[0].speedup) and rows[0].out_diff is None
    (failed,) = section.checks
    assert failed.name == "case: encoderkit" and failed.passed is False
    assert "no kernel image" in failed.note and section.errors


def test_timm_names_cover_every_weight_of_ours():
    # vit_base_patch16_224's state-dict keys as timm 1.0 names them, at depth 2
    timm_keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(2):
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            timm_keys += [f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"]
    timm_keys += ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    state = {k: torch.zeros(1) for k in timm_keys}
    mapped = gpu_vit.timm_to_ours(state, n_layers=2)
    ours = ImageClassifier(gpu_bench.SMOKE.vision, num_classes=gpu_bench.SMOKE.num_classes)
    assert set(mapped) == set(ours.state_dict())
    assert len(set(map(id, mapped.values()))) == len(timm_keys)  # each used once

    with pytest.raises(ValueError, match=r"unused \['blocks.0.ls1.gamma'\]"):
        gpu_vit.timm_to_ours(state | {"blocks.0.ls1.gamma": torch.zeros(1)}, n_layers=2)
    with pytest.raises(ValueError, match=r"missing \['blocks.2.attn.proj.bias'"):
        gpu_vit.timm_to_ours(state, n_layers=3)


def test_vit_base_flops_are_the_perf_anchors_figure():
    flops = gpu_vit.vit_forward_flops(gpu_bench.FULL.vision, 1000)
    assert round(flops / 1e9, 1) == 35.1  # perf-anchors: 34.9 encoder; timm lists 35.2 in all


def test_sections_run_in_the_documented_order_and_out_defaults_to_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    args = gpu.parse_args(["--sections", "attention, env"])
    assert args.sections == ["env", "attention"] and args.out == tmp_path
    assert args.compile == "train" and gpu.parse_args(["--compile", "all"]).compile == "all"


def _row(case: str, name: str, median_ms: float, mfu_peak: float | None = None) -> gpu_bench.Row:
    peak = None if mfu_peak is None else 1.0
    flops = (mfu_peak if mfu_peak is not None else 0.5) * median_ms / 1e3  # for that MFU
    return gpu_bench.Row(case, name, [median_ms], 1, "tok", flops, 2.0, peak)


def test_gpu_targets_judge_encoderkit_fastest_row_against_the_named_peer():
    dense, varlen = "S dense train, encoder", "S varlen train, encoder"
    infer = "S varlen infer, text model"
    rows = [
        _row(dense, "encoderkit", 10.0, mfu_peak=0.30),
        _row(dense, "encoderkit compiled", 8.0, mfu_peak=0.46),
        _row(dense, "nn.TransformerEncoder", 12.0),
        _row(dense, "nn.TransformerEncoder compiled", 9.0),
        _row(varlen, "encoderkit compiled", 8.0, mfu_peak=0.34),
        _row(infer, "encoderkit", 5.0),
        _row(infer, "HF BertModel sdpa", 11.0),
        _row(infer, "HF BertModel eager", 12.0),
    ]
    found = {t["what"]: t for t in gpu_compare.targets(rows, "S", dropout=0.1)}
    mfu = found[f"{dense} (dropout 0.1): encoderkit compiled MFU of 989 TFLOP/s"]
    assert mfu["value"] == pytest.approx(0.46) and mfu["verdict"] == "met" and mfu["unit"] == "%"
    vs_torch = found[
        f"{dense} (dropout 0.1): encoderkit compiled vs nn.TransformerEncoder compiled"
    ]
    assert vs_torch["value"] == pytest.approx(9 / 8) and vs_torch["verdict"] == "missed"
    real = found[f"{varlen} (dropout 0.1): encoderkit compiled MFU of 989 TFLOP/s"]
    assert real["value"] == pytest.approx(0.34) and real["verdict"] == "missed"
    best = found[f"{infer}: encoderkit vs the best peer (HF BertModel sdpa)"]
    assert best["value"] == pytest.approx(11 / 5) and best["verdict"] == "met"
    assert len(found) == 4  # no varlen inference rows at the encoder level here
    assert gpu_report.format_target(mfu) == ("46.0%", ">= 45%")
    assert gpu_report.format_target(vs_torch) == ("1.12x", ">= 1.25x")


@pytest.mark.parametrize(
    "argv", [["--sections", "gpu"], ["--sections", ","], ["--repeats", "0"], ["--dropout", "1"]]
)
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        gpu.parse_args(argv)
    assert "expected" in capsys.readouterr().err


@pytest.mark.skipif(CUDA, reason="the full run starts where there is a GPU")
def test_the_full_run_needs_a_gpu(capsys, tmp_path):
    assert gpu.main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()
