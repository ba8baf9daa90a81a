"""Models out of Python: ONNX files (ONNX Runtime and every runtime that reads ONNX) and
``torch.export`` programs (.pt2), with dynamic batch and sequence axes, checked against eager."""

from encoderkit.export.onnx import check_onnx, export_onnx, run_onnx
from encoderkit.export.program import (
    GraphInterface,
    check_program,
    example_inputs,
    export_program,
    graph_interface,
)

__all__ = [
    "GraphInterface",
    "check_onnx",
    "check_program",
    "example_inputs",
    "export_onnx",
    "export_program",
    "graph_interface",
    "run_onnx",
]
