"""Argument and input checks shared by every layer.

Each check raises before any work is done, with a message that says what was expected and what
came (never an ``assert``, which ``python -O`` removes).
"""

from __future__ import annotations

from collections.abc import Collection

import torch


def tracing() -> bool:
    """True while ``torch.compile``, ``torch.export`` or the ONNX exporter traces the model.

    Checks of tensor *values* (token ids in range, a mask of 0 and 1) read the tensor on the
    host, which a traced graph cannot do; they run in eager calls and are skipped while tracing.
    Shape and dtype checks run always: they cost nothing and are part of the trace.
    """
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def check_heads(d_model: int, n_heads: int) -> None:
    check_positive_int("d_model", d_model)
    check_positive_int("n_heads", n_heads)
    if d_model % n_heads != 0:
        raise ValueError(
            f"d_model must be divisible by n_heads, got d_model={d_model} and n_heads={n_heads} "
            f"(d_model / n_heads = {d_model / n_heads:g})"
        )


def check_probability(name: str, value: object) -> None:
    """A dropout rate: a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")


def check_choice(name: str, value: object, choices: Collection[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def check_features(x: object, d_model: int, name: str = "x") -> torch.Tensor:
    """A floating tensor whose last dimension is d_model, any leading dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != d_model:
        raise ValueError(
            f"{name} must have last dimension d_model={d_model}, got shape {tuple(x.shape)}"
        )
    return x


def check_hidden_states(x: object, d_model: int, name: str = "x") -> torch.Tensor:
    """Hidden states must be a floating (B, T, d_model) tensor."""
    if isinstance(x, torch.Tensor) and x.dim() != 3:
        raise ValueError(
            f"{name} must be 3-D (B, T, D), got {x.dim()}-D with shape {tuple(x.shape)}"
        )
    return check_features(x, d_model, name)


def check_packed_tokens(x: object, d_model: int, num_tokens: int, name: str = "x") -> torch.Tensor:
    """Packed tokens must be a floating (N, d_model) tensor with N = ``num_tokens``."""
    if isinstance(x, torch.Tensor) and (x.dim() != 2 or x.shape[0] != num_tokens):
        raise ValueError(
            f"{name} must be packed tokens (N, D) = ({num_tokens}, {d_model}), "
            f"got shape {tuple(x.shape)}"
        )
    return check_features(x, d_model, name)


def check_input_dtype(x: torch.Tensor, expected: torch.dtype, name: str = "x") -> torch.Tensor:
    """``x`` must have the dtype of the module's parameters, ``expected``.

    Otherwise torch fails deep inside with a dtype mismatch, or quietly computes in another
    precision. Under ``torch.autocast`` for x's device, mixed dtypes are the point, so anything
    goes.
    """
    if x.dtype != expected and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{name} must have the module's parameter dtype {expected}, got {x.dtype}; convert "
            f"the input with {name}.to({expected}) or the module with module.to({x.dtype})"
        )
    return x
