"""``encoderkit train``, ``eval``, ``predict`` and ``plot``: a training run's life from the command
line. Every ``train`` flag is a ``TrainConfig`` field; a TOML file, or a run's config.json,
gives defaults that flags override."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)


EXAMPLES = """\
examples:
  encoderkit train --task digits --out runs/digits      # from scratch
  encoderkit train --resume runs/digits                 # continue a stopped run exactly
  encoderkit train --task text --regression --data examples/data/ratings.csv \\
      --init all-MiniLM-L6-v2 --max-steps 300 --out runs/ratings   # fine-tune MiniLM
  encoderkit train --task tokens --data examples/data/ner.conll --max-steps 300 --out runs/ner
  encoderkit train --config examples/run.toml --lr 1e-3 # a TOML file; flags override it
  encoderkit train --config runs/digits/config.json --seed 1   # a run's settings, a new run

your own texts: --task text --data reviews.csv --text-column review --label-column stars
"""
RUN_HELP = "a run directory (encoderkit train --out)"
CHECKPOINT_HELP = "the checkpoint with the best validation figure, or the latest; default: best"


def add_parsers(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train or fine-tune (digits, listops, text, tokens, pairs, mlm); --resume RUN "
        "continues",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "--config",
        type=Path,
        help="TrainConfig fields from a .toml file, or a .json one: flat, or a run's config.json",
    )
    train.add_argument("--resume", type=Path, metavar="RUN", help="continue this run exactly")
    train.add_argument(
        "--json",
        action="store_true",
        help="print only the results, as one JSON object (progress and notes go to stderr)",
    )
    add_config_flags(train)
    train.set_defaults(run=run_training)

    evaluate = commands.add_parser(
        "eval", help="a run's best checkpoint on its test split or on a new labelled file"
    )
    evaluate.add_argument("run_dir", metavar="run", type=Path, help=RUN_HELP)
    evaluate.add_argument(
        "--checkpoint", choices=["best", "latest"], default="best", help=CHECKPOINT_HELP
    )
    evaluate.add_argument(
        "--data", type=Path, help="a labelled file in the training format (default: test split)"
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(run=run_eval)

    predict = commands.add_parser(
        "predict", help="use a run: labels, values, tags, embeddings or [MASK] fills"
    )
    predict.add_argument("run_dir", metavar="run", type=Path, help=RUN_HELP)
    predict.add_argument("inputs", nargs="*", help="texts, ListOps expressions or image files")
    predict.add_argument(
        "--file",
        type=Path,
        help="inputs from a file: one per line (.txt), or the run's text column (.csv, .jsonl)",
    )
    predict.add_argument(
        "--json",
        type=Path,
        metavar="OUT",
        help="write the records as JSON Lines to OUT ('-': standard output)",
    )
    predict.add_argument(
        "--checkpoint", choices=["best", "latest"], default="best", help=CHECKPOINT_HELP
    )
    predict.set_defaults(run=run_predict)

    plot = commands.add_parser("plot", help="draw a run's loss and accuracy curves as PNG")
    plot.add_argument("run_dir", metavar="run", type=Path, help=RUN_HELP)
    plot.add_argument("--out", type=Path, help="the PNG to write (default RUN/curves.png)")
    plot.set_defaults(run=run_plot)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; unset flags stay out of the namespace (SUPPRESS), so the
    TOML file and the saved run config give their values."""
    from encoderkit.training.config import FIELD_HELP, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training configuration (TrainConfig fields)")
    for f in dataclasses.fields(TrainConfig):
        flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
        text = FIELD_HELP[f.name]  # a field without help fails here, and in the tests
        if "default:" not in text:
            text += f"; default: {'none' if f.default is None else f.default}"
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": text.replace("%", "%%"),  # argparse %-formats help
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


def train_config(args: argparse.Namespace) -> Any:
    """TrainConfig from defaults < TOML file < flags, or the saved run's config for --resume."""
    from encoderkit.training.config import TrainConfig, check_config_field, job_defaults
    from encoderkit.training.runs import resume_config

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    values: dict[str, Any] = {}
    if args.config is not None:
        values = read_config_file(args.config)
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
    if args.resume is not None:  # the saved config already holds what was chosen at the start
        return resume_config(args.resume, values)
    chosen = job_defaults(values)
    if "lr" in chosen:
        log.info(
            "--init %s without --lr: fine-tuning learning rate %g (give --lr to choose another)",
            values["init"],
            chosen["lr"],
        )
    return TrainConfig(**values, **chosen)


def read_config_file(path: Path) -> dict[str, Any]:
    """TrainConfig fields from ``path``: a TOML file (.toml), or JSON (.json) holding them as
    one object or, as a run's config.json does, under ``"config"``. A run's own directory
    (``out``) is left out of the latter, so the new run gets a directory of its own."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ValueError(
            f"{path}: expected a .toml or .json file of TrainConfig fields, got "
            f"{suffix or 'a name without an extension'}"
        )
    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if suffix == ".json" and isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = dict(values["config"])  # a run's record: the config beside classes and sizes
        if "out" in values:
            log.info("%s: a run's config; its run directory %s is not reused", path, values["out"])
            del values["out"]
    if not isinstance(values, dict):
        raise ValueError(
            f"{path}: expected a JSON object of TrainConfig fields, got {type(values).__name__}"
        )
    return values


def run_training(args: argparse.Namespace) -> int:
    from encoderkit.models.pretrained import PretrainedError
    from encoderkit.training.checkpoint import CheckpointError
    from encoderkit.training.loop import NonFiniteError, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = train_config(args)
        results = train(cfg, resume=args.resume is not None)
    except (ValueError, TypeError, OSError, CheckpointError, PretrainedError) as e:
        raise SystemExit(f"encoderkit train: {e}") from e
    except NonFiniteError as e:
        raise SystemExit(f"encoderkit train: {e}") from e
    if not args.json:
        print(f"{cfg.task}: {summary(results)}; run directory {cfg.out}")
    print(json.dumps(results))  # the last line, with or without --json
    exit_codes = {"interrupted": 130, "terminated": 143}  # 128 + SIGINT, 128 + SIGTERM
    if results["stopped"] in exit_codes:
        print(
            f"{results['stopped']}; continue with: encoderkit train --resume {cfg.out}",
            file=sys.stderr if args.json else sys.stdout,
        )
        return exit_codes[results["stopped"]]
    return 0


def summary(results: dict[str, Any]) -> str:
    """One line: the best validation figure, the test figure of that checkpoint, steps, time."""
    metric = results["metric"]
    if results["best_valid"] is None:  # stopped before its first evaluation
        measured = f"validation {metric} n/a (not evaluated yet)"
    else:
        test = results["test"]
        measured = (
            f"best validation {metric} {results['best_valid']:.4f} at step "
            f"{results['best_step']}; test {metric} of that checkpoint "
        ) + ("n/a (not finished)" if test is None else f"{test[metric]:.4f}")
    return f"{measured} after {results['steps']} steps in {results['seconds']:.0f} s"


def run_eval(args: argparse.Namespace) -> int:
    from encoderkit.training.api import load_run
    from encoderkit.training.checkpoint import CheckpointError

    try:
        run = load_run(args.run_dir, args.checkpoint)
        figures = run.evaluate(args.data)
    except (CheckpointError, ValueError, OSError, NotImplementedError) as e:
        raise SystemExit(f"encoderkit eval: {e}") from e
    split = "test" if args.data is None else str(args.data)
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    record: dict[str, Any] = {"run": str(args.run_dir), "task": run.config.task, "split": split}
    record |= {"checkpoint": args.checkpoint, **rounded}
    if args.json:
        print(json.dumps(record))
        return 0
    width = max(map(len, record))
    for name, value in record.items():
        print(f"{name:<{width}}  {f'{value:.4f}' if isinstance(value, float) else value}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from encoderkit.training.api import load_run
    from encoderkit.training.checkpoint import CheckpointError

    try:
        if not args.inputs and args.file is None:
            raise ValueError("give inputs to predict, or --file FILE")
        run = load_run(args.run_dir, args.checkpoint)
        items = list(args.inputs)
        if args.file is not None:  # a table's texts are in the column the run trained on
            items += read_items(args.file, run.config.text_column)
        if not items:
            raise ValueError(f"no inputs to predict: {args.file} holds none")
        records = run.predict(items)
    except (CheckpointError, ValueError, OSError) as e:
        raise SystemExit(f"encoderkit predict: {e}") from e
    if args.json is not None:
        lines = "".join(
            json.dumps({"input": item, **record}) + "\n"
            for item, record in zip(items, records, strict=True)
        )
        if str(args.json) == "-":
            sys.stdout.write(lines)
        else:
            from encoderkit.utils.files import atomic_write_text

            atomic_write_text(args.json, lines)
            print(f"wrote {len(records)} predictions to {args.json}")
        return 0
    for item, record in zip(items, records, strict=True):
        print(f"{describe(record)}\t{item}")
    return 0


def describe(record: dict[str, Any]) -> str:
    """A prediction record in a few words for the terminal (--json keeps everything)."""
    if "label" in record:
        return f"{record['label']}\t{record['probability']:.3f}"
    if "value" in record:
        return f"{record['value']:.4f}"
    if "tags" in record:
        return " ".join(f"{e['text']}/{e['type']}" for e in record["entities"]) or "(no entities)"
    if "masks" in record:  # the most likely token for each [MASK]
        return " ".join(f"{m[0]['token']} ({m[0]['probability']:.2f})" for m in record["masks"])
    if "embedding" in record:
        head = ", ".join(f"{v:.3f}" for v in record["embedding"][:4])
        return f"[{head}, ...] ({len(record['embedding'])} dims)"
    return json.dumps(record)[:120]


def read_items(path: Path, column: str = "text") -> list[str]:
    """Inputs from a file: one per non-empty line, or the ``column`` of a .csv / .jsonl."""
    if path.suffix.lower() in (".csv", ".jsonl"):
        from encoderkit.training.data.text import read_texts

        return read_texts(path, column)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    return [line.strip() for line in lines if line.strip()]


def run_plot(args: argparse.Namespace) -> int:
    from encoderkit.views.plots import plot_run

    try:
        print(plot_run(args.run_dir, args.out))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"encoderkit plot: {e}") from e
    return 0
