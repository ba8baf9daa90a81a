"""Module paths from before the layered layout (0.1), still importable.

``import encoderkit.attention`` (and the other old paths below) gives the package that holds those
names now, with a ``DeprecationWarning`` naming it; CHANGELOG.md lists where each module went.
Patching an attribute through an old path patches the package, not the module that uses it:
patch the new module instead.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# old module -> where its public names are importable now
MOVED = {
    "encoderkit.attention": "encoderkit.layers",
    "encoderkit.block": "encoderkit.layers",
    "encoderkit.embeddings": "encoderkit.layers",
    "encoderkit.encoder": "encoderkit.layers",
    "encoderkit.feedforward": "encoderkit.layers",
    "encoderkit.masks": "encoderkit.layers",
    "encoderkit.packing": "encoderkit.layers",
    "encoderkit.checks": "encoderkit.utils.checks",
    "encoderkit.files": "encoderkit.utils.files",
    "encoderkit.config": "encoderkit",
    "encoderkit.pretrained": "encoderkit.models",
    "encoderkit.sentence": "encoderkit.models",
    "encoderkit.train": "encoderkit.training",
    "encoderkit.checkpoint": "encoderkit.training",
    "encoderkit.tasks": "encoderkit.training",
    "encoderkit.data": "encoderkit.training.data",
    "encoderkit.viz": "encoderkit.views",
    "encoderkit.viewer": "encoderkit.views",
    "encoderkit.heads": "encoderkit.views",
    "encoderkit.tour": "encoderkit.cli.tour",
}


def new_home(name: str) -> str | None:
    """Where the old module ``name`` lives now (``encoderkit.data.digits`` included), or None."""
    for old, new in MOVED.items():
        if name == old:
            return new
        if old == "encoderkit.data" and name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of the old paths with the modules that replaced them."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if new_home(fullname) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = new_home(spec.name)
        warnings.warn(
            f"{spec.name} has moved: import from {new} (see CHANGELOG.md)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(str(new))

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module is already imported


def install() -> None:
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())  # before the path finder, which would load a copy
