"""ONNX export with torch's dynamo exporter (``torch.onnx.export(dynamo=True)``, which lowers a
``torch.export`` program with onnxscript), checked with ``onnx.checker`` and, when ONNX Runtime is
installed, against the eager model.

Padded batches take the encoder's masked path in the graph (ONNX has no packed-attention
operator), so one graph serves every batch size, length and padding pattern.

Shape legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoderkit.export.program import (
    Exportable,
    check_exportable,
    eager_outputs,
    example_inputs,
    graph_interface,
    inference_copy,
    max_abs_diff,
    quiet_export,
)
from encoderkit.utils.files import fsync_path

# The dynamo exporter writes opset 18 and up; asked for less, it silently keeps 18 when its
# version converter fails, as it does on these graphs (measured with torch 2.13).
MIN_OPSET = 18


def export_onnx(
    model: Exportable, path: str | os.PathLike[str], *, opset: int | None = None
) -> Path:
    """Write ``model``'s graph (see :func:`encoderkit.export.program.graph_interface` for the
    inputs and outputs) to the ONNX file ``path`` and return its path.

    The batch axis is named ``batch`` and the text axis ``sequence``, both dynamic. The file is
    checked with ``onnx.checker`` and written atomically; a model over 2 GB keeps its weights in
    ``<path>.data`` beside it (ONNX's protobuf limit), moved into place before the graph.
    ``opset`` defaults to the exporter's.
    """
    onnx = _import_onnx()
    check_exportable(model)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    highest = onnx.defs.onnx_opset_version()
    if opset is not None and (
        isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= highest
    ):
        raise ValueError(
            f"opset must be an int in [{MIN_OPSET}, {highest}] (the exporter's lowest, the "
            f"installed onnx's highest), got {opset!r}"
        )
    target = Path(path)
    interface, example = graph_interface(model), example_inputs(model)
    with inference_copy(interface.module) as module, quiet_export():
        program = torch.onnx.export(
            module,
            tuple(example[name] for name in interface.inputs),
            dynamo=True,
            input_names=list(interface.inputs),
            output_names=list(interface.outputs),
            dynamic_shapes=interface.dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )
    if program is None:  # only the TorchScript exporter, given a file, returns None
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    _save_atomically(program, target)
    return target


def _import_onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter)
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs onnx and onnxscript ({e}): pip install 'encoderkit[export]'"
        ) from e
    return onnx


def _save_atomically(program: torch.onnx.ONNXProgram, target: Path) -> None:
    """Save into a fresh folder beside ``target``, under the final name, so the graph refers to
    its external data file (if any) by the name it ends up with; check what was written with
    ``onnx.checker``; then move the data file(s) and last the graph into place."""
    onnx = _import_onnx()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        program.save(staging / target.name)
        # from the file, which also reads external data past protobuf's 2 GB
        onnx.checker.check_model(str(staging / target.name), full_check=True)
        files = sorted(p for p in staging.iterdir() if p.name != target.name)
        for file in [*files, staging / target.name]:
            fsync_path(file)
            os.replace(file, target.parent / file.name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    fsync_path(target.parent)


def run_onnx(
    path: str | os.PathLike[str], batch: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Run the ONNX file ``path`` on ``batch`` (input name -> tensor) with ONNX Runtime on the
    CPU; the outputs by name. Integer and bool inputs are passed as int64, floats as float32."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            "running an ONNX file needs onnxruntime: pip install 'encoderkit[export]'"
        ) from e
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = [i.name for i in session.get_inputs()]
    if sorted(batch) != sorted(expected):
        raise ValueError(f"batch must hold the inputs {expected} of {path}, got {sorted(batch)}")
    feed = {name: _onnx_input(name, batch[name]) for name in expected}
    names = [o.name for o in session.get_outputs()]
    return {n: torch.from_numpy(v) for n, v in zip(names, session.run(names, feed), strict=True)}


def check_onnx(
    model: Exportable, path: str | os.PathLike[str], batch: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """The largest absolute difference between ONNX Runtime running ``path`` and ``model`` run
    eagerly (eval mode, float32, CPU) on ``batch``, for each output; ``path`` is first checked
    with ``onnx.checker``."""
    onnx = _import_onnx()
    eager = eager_outputs(model, batch)
    onnx.checker.check_model(str(path), full_check=True)
    exported = run_onnx(path, batch)
    if sorted(exported) != sorted(eager):
        raise ValueError(
            f"{path} returns {sorted(exported)}, not the outputs {list(eager)} of a "
            f"{type(model).__name__}: was it exported from another kind of model?"
        )
    return {name: max_abs_diff(exported[name], out) for name, out in eager.items()}


def _onnx_input(name: str, tensor: torch.Tensor) -> np.ndarray:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"batch[{name!r}] must be a torch.Tensor, got {type(tensor).__name__}")
    dtype = torch.float32 if tensor.is_floating_point() else torch.int64
    return tensor.detach().to("cpu", dtype).numpy()
