"""Test-wide settings: the reference libraries must never reach for a model hub, and each test's
``torch.compile`` calls start from empty caches, as in a fresh process."""

import os

import pytest
import torch
from torch._dynamo.utils import counters

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def fresh_compile_caches():
    """Dynamo counts recompilations per code object (``TextEncoder.forward``, ...) across the
    process and, past its limit, fails a ``fullgraph=True`` compile: models compiled by earlier
    tests must not count against a later one."""
    yield
    if counters["stats"]["calls_captured"]:  # something was compiled (resetting costs ~7 ms)
        torch._dynamo.reset()
        counters.clear()
