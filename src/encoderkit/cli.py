"""The ``encoderkit`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import typing
from pathlib import Path
from typing import Any

import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from encoderkit.tour import PRESETS, run_tour


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="encoderkit", description="The Transformer encoder: train, embed, look inside."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    tour = commands.add_parser(
        "tour", help="build an encoder, run a padded batch, check it against the math path"
    )
    tour.add_argument("--preset", choices=sorted(PRESETS), default="minilm_l6")
    tour.add_argument("--batch", type=int, default=4)
    tour.add_argument("--seq-len", type=int, default=64)
    tour.add_argument("--seed", type=int, default=0)

    embed = commands.add_parser(
        "embed", help="sentence embeddings of texts, or their cosine similarities"
    )
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--file", type=Path, help="also embed each non-empty line of this file")
    embed.add_argument(
        "--model",
        default="all-MiniLM-L6-v2",
        help="all-MiniLM-L6-v2 (shipped on PyPI) or a sentence-transformers directory",
    )
    embed.add_argument("--similarity", action="store_true", help="print cosine similarities")
    embed.add_argument("--json", action="store_true", help="print JSON with full vectors")
    embed.add_argument("--batch-size", type=int, default=32)

    train = commands.add_parser(
        "train", help="train or fine-tune (digits, listops, text); --resume RUN continues"
    )
    train.add_argument("--config", type=Path, help="a TOML file of TrainConfig fields")
    train.add_argument("--resume", type=Path, metavar="RUN", help="continue this run exactly")
    add_config_flags(train)

    evaluate = commands.add_parser("eval", help="accuracy of a run's best checkpoint")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--checkpoint", choices=["best", "latest"], default="best")

    predict = commands.add_parser("predict", help="classify texts or image files with a run")
    predict.add_argument("run", type=Path)
    predict.add_argument("inputs", nargs="+", help="texts, ListOps expressions or image files")
    predict.add_argument("--checkpoint", choices=["best", "latest"], default="best")

    attention = commands.add_parser(
        "attention", help="draw what each attention head looks at, as PNG or interactive HTML"
    )
    attention.add_argument("text", nargs="?", help="the sentence (or ListOps expression)")
    attention.add_argument(
        "--model",
        default="all-MiniLM-L6-v2",
        help="all-MiniLM-L6-v2 or a sentence-transformers directory",
    )
    attention.add_argument(
        "--checkpoint",
        type=Path,
        metavar="RUN",
        help="a training run instead of --model (text, listops or digits)",
    )
    attention.add_argument("--image", type=Path, help="an image file, with a digits --checkpoint")
    attention.add_argument(
        "--example", type=int, metavar="N", help="test image number N of a digits --checkpoint run"
    )
    attention.add_argument("--layer", default="all", help="a layer index, or 'all' (default)")
    attention.add_argument("--head", type=int, help="only this head of --layer")
    attention.add_argument("--out", type=Path, default=Path("attention.png"))
    attention.add_argument("--html", type=Path, help="also write an interactive HTML viewer")

    heads = commands.add_parser(
        "heads", help="what every head attends to over built-in sentences (Clark et al. 2019)"
    )
    heads.add_argument("--model", default="all-MiniLM-L6-v2")
    heads.add_argument("--checkpoint", type=Path, metavar="RUN")
    heads.add_argument("--out", type=Path, default=Path("heads.png"))

    plot = commands.add_parser("plot", help="draw a run's loss and accuracy curves as PNG")
    plot.add_argument("run", type=Path)
    plot.add_argument("--out", type=Path, help="the PNG to write (default RUN/curves.png)")

    commands.add_parser(
        "bench",
        help="race the peers (python -m benchmarks.compare; flags: encoderkit bench --help)",
        add_help=False,
    )
    return parser


def run_bench(argv: list[str]) -> int:
    """``encoderkit bench ARGS`` is ``python -m benchmarks.compare ARGS`` in the source checkout
    this package was installed from (``pip install -e .``, as ``make`` does)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "compare.py").is_file():
        raise SystemExit(
            f"encoderkit bench: expected the benchmark suite at {root / 'benchmarks'}, found "
            f"none; it lives in the source repository, so install from a clone with "
            f"`pip install -e .` (or `make test`) and run it there"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    compare = importlib.import_module("benchmarks.compare")  # outside the package: no type check
    return int(compare.main(argv))


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; unset flags stay out of the namespace (SUPPRESS), so the
    TOML file and the saved run config give their values."""
    from encoderkit.train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training configuration (TrainConfig fields)")
    for f in dataclasses.fields(TrainConfig):
        flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"default: {f.default!r}",
        }
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(hint) is typing.Literal:
            group.add_argument(flag, choices=typing.get_args(hint), **kwargs)
        elif type(None) in typing.get_args(hint):  # X | None: "none" on the command line
            base = next(a for a in typing.get_args(hint) if a is not type(None))
            group.add_argument(flag, type=_optional(base), **kwargs)
        else:
            group.add_argument(flag, type=hint, **kwargs)


def _optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its flags belong to benchmarks.compare
        return run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "tour":
        if args.batch < 1 or args.seq_len < 1:
            raise SystemExit("encoderkit tour: --batch and --seq-len must be at least 1")
        run_tour(args.preset, args.batch, args.seq_len, args.seed)
    elif args.command == "embed":
        embed(args)
    elif args.command == "train":
        return run_training(args)
    elif args.command == "eval":
        run_eval(args)
    elif args.command == "predict":
        run_predict(args)
    elif args.command == "attention":
        run_attention(args)
    elif args.command == "heads":
        run_heads(args)
    elif args.command == "plot":
        from encoderkit.viz import plot_run

        try:
            print(plot_run(args.run, args.out))
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"encoderkit plot: {e}") from e
    return 0


def train_config(args: argparse.Namespace) -> Any:
    """TrainConfig from defaults < TOML file < flags, or the saved run's config for --resume."""
    from encoderkit.train import TrainConfig, resume_config

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            values = tomllib.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"cannot read {args.config}: {e}") from e
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"{args.config}: {', '.join(unknown)} not TrainConfig fields; "
                f"valid fields: {', '.join(sorted(names))}"
            )
    values |= flags
    if args.resume is not None:
        return resume_config(args.resume, values)
    return TrainConfig(**values)


def run_training(args: argparse.Namespace) -> int:
    import logging

    from encoderkit.checkpoint import CheckpointError
    from encoderkit.pretrained import PretrainedError
    from encoderkit.train import NonFiniteError, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = train_config(args)
        results = train(cfg, resume=args.resume is not None)
    except (ValueError, TypeError, FileNotFoundError, CheckpointError, PretrainedError) as e:
        raise SystemExit(f"encoderkit train: {e}") from e
    except NonFiniteError as e:
        raise SystemExit(f"encoderkit train: {e}") from e
    print(
        f"{cfg.task}: test accuracy {results['test_accuracy']:.4f} after {results['steps']} steps "
        f"(best {results['best_accuracy']:.4f} at step {results['best_step']}) in "
        f"{results['seconds']:.0f} s; run directory {cfg.out}"
    )
    print(json.dumps(results))
    if results["stopped"] == "interrupted":
        print(f"interrupted; continue with: encoderkit train --resume {cfg.out}")
        return 130
    return 0


def run_eval(args: argparse.Namespace) -> None:
    from encoderkit.checkpoint import CheckpointError
    from encoderkit.train import evaluate, load_run_model

    try:
        cfg, task = load_run_model(args.run, args.checkpoint)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"encoderkit eval: {e}") from e
    loss, accuracy = evaluate(task.model, task.test, cfg, torch.device("cpu"))
    print(
        json.dumps(
            {
                "run": str(args.run),
                "task": cfg.task,
                "test_examples": len(task.test[-1]),
                "loss": round(loss, 4),
                "accuracy": round(accuracy, 4),
            }
        )
    )


def run_predict(args: argparse.Namespace) -> None:
    from encoderkit.checkpoint import CheckpointError
    from encoderkit.tasks import prepare_inputs
    from encoderkit.train import load_run_model

    try:
        cfg, task = load_run_model(args.run, args.checkpoint)
        inputs = prepare_inputs(cfg, args.inputs)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"encoderkit predict: {e}") from e
    with torch.no_grad():
        probs = task.model(*inputs).softmax(-1)
    for text, p in zip(args.inputs, probs, strict=True):
        k = int(p.argmax())
        print(f"{task.classes[k]}\t{float(p[k]):.3f}\t{text}")


def embed(args: argparse.Namespace) -> None:
    from encoderkit.pretrained import PretrainedError
    from encoderkit.sentence import SentenceEncoder

    texts = list(args.texts)
    if args.file is not None:
        try:
            lines = args.file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise SystemExit(f"encoderkit embed: cannot read {args.file}: {e.strerror}") from e
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise SystemExit("encoderkit embed: give texts as arguments or with --file")
    if args.batch_size < 1:
        raise SystemExit("encoderkit embed: --batch-size must be at least 1")
    try:
        encoder = SentenceEncoder.from_pretrained(args.model)
    except (PretrainedError, ImportError) as e:
        raise SystemExit(f"encoderkit embed: {e}") from e
    vectors = encoder.encode(texts, batch_size=args.batch_size)
    similarity = vectors @ vectors.T  # unit vectors: dot product = cosine
    if args.json:
        key, rows = ("similarity", similarity) if args.similarity else ("embeddings", vectors)
        payload = {"model": str(args.model), "texts": texts, key: rows.tolist()}
        json.dump(payload, sys.stdout, ensure_ascii=False)
        print()
    elif args.similarity:
        print(format_similarity(texts, similarity.tolist()))
    else:
        print(f"{len(texts)} embeddings of dimension {vectors.shape[1]} ({args.model})")
        for text, vector in zip(texts, vectors.tolist(), strict=True):
            head = ", ".join(f"{v:+.4f}" for v in vector[:4])
            print(f"{_label(text, 40):<40}  [{head}, ..., {vector[-1]:+.4f}]")


def format_similarity(texts: list[str], matrix: list[list[float]]) -> str:
    """A table of cosine similarities, rows labelled by text, columns by number."""
    width = min(max(len(_label(t, 40)) for t in texts), 40)
    header = " " * (width + 6) + "".join(f"{f'[{j + 1}]':>8}" for j in range(len(texts)))
    lines = [header]
    for i, (text, row) in enumerate(zip(texts, matrix, strict=True)):
        cells = "".join(f"{v:8.3f}" for v in row)
        lines.append(f"[{i + 1}] {_label(text, width):<{width}}  {cells}")
    return "\n".join(lines)


def _label(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def run_attention(args: argparse.Namespace) -> None:
    from encoderkit import views, viz
    from encoderkit.checkpoint import CheckpointError
    from encoderkit.pretrained import PretrainedError
    from encoderkit.viewer import write_attention_html

    try:
        if args.image is not None or args.example is not None:
            if args.checkpoint is None:
                raise ValueError("--image and --example need --checkpoint RUN, a digits run")
            pixels, maps, patch = views.image_attention(args.checkpoint, args.image, args.example)
            layer = views.pick_layer(args.layer, len(maps))
            out = viz.plot_image_attention(
                pixels, maps, patch, args.out, layer=-1 if layer is None else layer
            )
            print(f"wrote {out}: class-token attention of each head, and the rollout")
            return
        if args.text is None:
            raise ValueError("give a text to look at (or --image FILE --checkpoint RUN)")
        model = views.load_text_model(args.model, args.checkpoint)
        seen = views.text_attention(model, args.text)
        layer = views.pick_layer(args.layer, len(seen.maps))
        heads = views.pick_heads(args.head, seen.maps[0].shape[0], layer)
    except (ValueError, FileNotFoundError, CheckpointError, PretrainedError, ImportError) as e:
        raise SystemExit(f"encoderkit attention: {e}") from e
    if seen.truncated:
        print(
            f"note: the text is longer than {model.name} takes; only its first "
            f"{len(seen.tokens)} tokens are shown"
        )
    if layer is None:
        out = viz.plot_overview(seen.maps, seen.tokens, args.out)
    else:
        title = f"{model.name}, layer {layer}" + (
            "" if args.head is None else f", head {args.head}"
        )
        out = viz.plot_heads(seen.maps[layer][heads], seen.tokens, args.out, title=title)
    print(
        f"wrote {out} ({len(seen.maps)} layers x {seen.maps[0].shape[0]} heads, "
        f"{len(seen.tokens)} tokens)"
    )
    if args.html is not None:
        page = write_attention_html(args.html, seen.tokens, seen.maps, title=model.name)
        print(f"wrote {page}: pick a layer and a head, hover a token")


def run_heads(args: argparse.Namespace) -> None:
    from encoderkit import views
    from encoderkit.checkpoint import CheckpointError
    from encoderkit.heads import SENTENCES, format_table, pattern_report, plot_head_map
    from encoderkit.pretrained import PretrainedError

    try:
        model = views.load_text_model(args.model, args.checkpoint)
        report = pattern_report([views.text_attention(model, sentence) for sentence in SENTENCES])
    except (ValueError, FileNotFoundError, CheckpointError, PretrainedError, ImportError) as e:
        raise SystemExit(f"encoderkit heads: {e}") from e
    print(format_table(report))
    print(f"wrote {plot_head_map(report, args.out)}")
