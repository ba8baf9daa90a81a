"""ONNX Runtime as a peer on the CPU, at its best: Hugging Face's ``BertModel`` exported to ONNX as
optimum exports it (the TorchScript exporter, dynamic batch and sequence axes), then

* run as exported ("fp32"),
* after ONNX Runtime's transformers optimizer (``optimize_model(model_type="bert")``), which fuses
  the embeddings and LayerNorm, attention, SkipLayerNormalization and BiasGelu ("fused"),
* that fused graph with ``quantize_dynamic`` int8 weights (QInt8) ("int8"),

each in an ``InferenceSession`` with every graph optimization on (ORT_ENABLE_ALL) and one intra-op
thread per core.

The export starts from the eager-attention ``BertModel``: the optimizer's attention fusion
recognises that graph (6 Attention nodes at MiniLM), not the one sdpa exports (none). Both compute
the same function.

Shape legend: B batch, T tokens, D model width.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

VARIANTS = ("fp32", "fused", "int8")
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "last_hidden_state"


def cores() -> int:
    """CPU cores this process may run on: ONNX Runtime's intra-op threads."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _LastHidden(nn.Module):
    """``BertModel`` as (input_ids, attention_mask) -> last hidden state (B, T, D): the graph's
    inputs and output, by name."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_bert(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, path: Path) -> None:
    """``model`` (a transformers BertModel) to ONNX at ``path``, batch and sequence axes dynamic."""
    wrapper = _LastHidden(model).eval()  # a fresh module is in train mode; export keeps its mode
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, OUTPUT)}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's, and its tracer warns
        # about transformers' Python branches on shapes; optimum exports the same way.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (ids, mask.long()),
            str(path),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    model.eval()


@dataclass
class OnnxModels:
    paths: dict[str, Path]  # by variant
    seconds: dict[str, float]  # to make each variant from the torch model, cumulative
    fused_ops: dict[str, int] = field(default_factory=dict)  # the optimizer's fused nodes


def build(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    directory: Path,
    n_heads: int,
    d_model: int,
) -> OnnxModels:
    """Export ``model``, fuse the graph, quantise the fused graph: the three variants' files."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    paths = {v: directory / f"{v}.onnx" for v in VARIANTS}
    start = time.perf_counter()
    export_bert(model, ids, mask, paths["fp32"])
    seconds = {"fp32": time.perf_counter() - start}
    fused = optimize_model(
        str(paths["fp32"]), model_type="bert", num_heads=n_heads, hidden_size=d_model
    )
    fused.save_model_to_file(str(paths["fused"]))
    seconds["fused"] = time.perf_counter() - start
    quantize_dynamic(
        paths["fused"],
        paths["int8"],
        weight_type=QuantType.QInt8,
        # The fused graph's contrib ops (com.microsoft) defeat ONNX shape inference; their
        # outputs are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    seconds["int8"] = time.perf_counter() - start
    counts = fused.get_fused_operator_statistics()
    return OnnxModels(paths, seconds, {op: n for op, n in counts.items() if n})


def session(path: Path, threads: int | None = None) -> Any:
    """An ``InferenceSession`` on the CPU with every graph optimization, one thread per core."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cores()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def forward(sess: Any, ids: torch.Tensor, mask: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The session's last hidden state (B, T, D) on these inputs, as a torch tensor."""
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.long().numpy()}

    def run() -> torch.Tensor:
        return torch.from_numpy(sess.run([OUTPUT], feed)[0])

    return run
