"""The ``encoderkit`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import json
import os
import sys
import typing
from collections.abc import Iterator
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
    try:
        return dispatch(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # The reader (``head``, say) closed the pipe: stop quietly, as ``cat`` does, and point
        # stdout at /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # the status of a process killed by SIGPIPE


def dispatch(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; a file that cannot be read or written ends it with one
    line naming the file."""
    if argv[:1] == ["bench"]:  # its flags belong to benchmarks.compare
        return run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    for flag in ("out", "html"):
        path = getattr(args, flag, None)
        if args.command != "train" and path is not None and Path(path).is_dir():
            raise SystemExit(
                f"encoderkit {args.command}: --{flag} must name a file to write, got the "
                f"directory {path}"
            )
    try:
        return run_command(args)
    except BrokenPipeError:
        raise  # not an error: see main
    except OSError as e:  # a read-only folder, a full disk, a path through a file
        where = f": {e.filename}" if e.filename else ""
        raise SystemExit(f"encoderkit {args.command}: {e.strerror or e}{where}") from e


def run_command(args: argparse.Namespace) -> int:
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
    from encoderkit.train import TrainConfig, check_config_field, resume_config

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
        for name, value in values.items():  # here, so that the error names the file
            try:
                check_config_field(name, value)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{args.config}: {e}") from e
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
    except (ValueError, TypeError, OSError, CheckpointError, PretrainedError) as e:
        raise SystemExit(f"encoderkit train: {e}") from e
    except NonFiniteError as e:
        raise SystemExit(f"encoderkit train: {e}") from e
    if results["best_accuracy"] is None:  # stopped before its first evaluation
        measured = "test accuracy n/a (not evaluated yet)"
    else:
        measured = (
            f"test accuracy {results['test_accuracy']:.4f} (best {results['best_accuracy']:.4f} "
            f"at step {results['best_step']})"
        )
    print(
        f"{cfg.task}: {measured} after {results['steps']} steps in {results['seconds']:.0f} s; "
        f"run directory {cfg.out}"
    )
    print(json.dumps(results))
    exit_codes = {"interrupted": 130, "terminated": 143}  # 128 + SIGINT, 128 + SIGTERM
    if results["stopped"] in exit_codes:
        print(f"{results['stopped']}; continue with: encoderkit train --resume {cfg.out}")
        return exit_codes[results["stopped"]]
    return 0


def run_eval(args: argparse.Namespace) -> None:
    from encoderkit.checkpoint import CheckpointError
    from encoderkit.train import evaluate, load_run_model

    try:
        cfg, task = load_run_model(args.run, args.checkpoint, test_split=True)
    except (CheckpointError, ValueError, OSError) as e:
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
    except (CheckpointError, ValueError, OSError) as e:
        raise SystemExit(f"encoderkit predict: {e}") from e
    with torch.no_grad():
        probs = task.model(*inputs).softmax(-1)
    for text, p in zip(args.inputs, probs, strict=True):
        k = int(p.argmax())
        print(f"{task.classes[k]}\t{float(p[k]):.3f}\t{text}")


# Texts are embedded and printed this many at a time, so any --file runs in bounded memory.
EMBED_CHUNK = 4096
# The N x N similarity table is built only with --similarity, and refused above this size.
MAX_SIMILARITY_BYTES = 1 << 30


def embed(args: argparse.Namespace) -> None:
    from encoderkit.pretrained import PretrainedError
    from encoderkit.sentence import SentenceEncoder

    if args.batch_size < 1:
        raise SystemExit("encoderkit embed: --batch-size must be at least 1")
    count = len(args.texts) + (0 if args.file is None else _count_lines(args.file))
    if count == 0:
        raise SystemExit("encoderkit embed: give texts as arguments or with --file")
    if args.similarity and 4 * count * count > MAX_SIMILARITY_BYTES:
        raise SystemExit(
            f"encoderkit embed: --similarity over {count:,} texts needs a {count:,} x {count:,} "
            f"matrix ({4 * count * count / 2**30:.1f} GiB); the limit is "
            f"{MAX_SIMILARITY_BYTES / 2**30:.0f} GiB: give fewer texts, or drop --similarity "
            f"and compare the --json embeddings in chunks"
        )
    try:
        encoder = SentenceEncoder.from_pretrained(args.model)
    except (PretrainedError, ImportError) as e:
        raise SystemExit(f"encoderkit embed: {e}") from e

    def chunks() -> Iterator[tuple[list[str], torch.Tensor]]:
        texts = _texts(args)
        while chunk := list(itertools.islice(texts, EMBED_CHUNK)):
            yield chunk, encoder.encode(chunk, batch_size=args.batch_size)  # (n, D)

    if args.similarity:
        texts, parts = [], []
        for chunk, vectors in chunks():
            texts += chunk
            parts.append(vectors)
        vectors = torch.cat(parts)  # (N, D)
        similarity = vectors @ vectors.T  # unit vectors: dot product = cosine; (N, N)
        if args.json:
            payload = {"model": str(args.model), "texts": texts, "similarity": similarity.tolist()}
            print(json.dumps(payload, ensure_ascii=False))
        else:
            print(format_similarity(texts, similarity.tolist()))
    elif args.json:
        # The same JSON object as one json.dumps would write, streamed chunk by chunk.
        out = sys.stdout
        out.write(f'{{"model": {json.dumps(str(args.model))}, "texts": [')
        for i, text in enumerate(_texts(args)):
            out.write((", " if i else "") + json.dumps(text, ensure_ascii=False))
        out.write('], "embeddings": [')
        for i, (_, vectors) in enumerate(chunks()):
            out.write((", " if i else "") + ", ".join(json.dumps(v) for v in vectors.tolist()))
        out.write("]}\n")
    else:
        dim = encoder.model.config.d_model
        print(f"{count} embeddings of dimension {dim} ({args.model})")
        for chunk, vectors in chunks():
            for text, vector in zip(chunk, vectors.tolist(), strict=True):
                head = ", ".join(f"{v:+.4f}" for v in vector[:4])
                print(f"{_label(text, 40):<40}  [{head}, ..., {vector[-1]:+.4f}]")


def _texts(args: argparse.Namespace) -> Iterator[str]:
    """The texts given as arguments, then the non-empty lines of --file, read as needed."""
    yield from args.texts
    if args.file is not None:
        for _, line in _file_lines(args.file):
            if line.strip():
                yield line


def _count_lines(path: Path) -> int:
    """The non-empty lines of ``path``; reads it once, so a bad file fails before any output."""
    return sum(1 for _, line in _file_lines(path) if line.strip())


def _file_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, without line ends or a leading byte-order mark."""
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise SystemExit(
                        f"encoderkit embed: {path}, line {number}: not UTF-8 text (byte "
                        f"{raw[e.start]:#04x}, byte {e.start + 1} of the line); convert the "
                        f"file, e.g. iconv -f latin1 -t utf-8"
                    ) from None
                if number == 1:
                    line = line.removeprefix("\ufeff")  # the UTF-8 BOM some editors write
                yield number, line.rstrip("\r\n")
    except OSError as e:
        raise SystemExit(f"encoderkit embed: cannot read {path}: {e.strerror}") from e


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
