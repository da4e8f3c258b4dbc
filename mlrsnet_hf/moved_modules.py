"""Module paths from before the family folders, kept importable (with a ``DeprecationWarning``) until 0.3.

``import mlrsnet_hf.schedule`` gives the module :mod:`mlrsnet_hf.mlrsnet.schedule` itself (the same object, so
patching one patches the other) and warns once, naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    **{f"mlrsnet_hf.{name}": f"mlrsnet_hf.mlrsnet.{name}" for name in (
        "network", "device_step", "schedule", "schedule_card", "meta_training", "official",
    )},
    "mlrsnet_hf.lr_controller_driver": "mlrsnet_hf.lr_controller.driver",
}  # fmt: skip


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path of :data:`MOVED` and loads it as the module at its new path."""

    def find_spec(
        self, name: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}  # the moved modules' own specs, by old path

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {MOVED[spec.name]}; the old path will be removed in mlrsnet_hf 0.3.",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(MOVED[spec.name])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module ran at its new path already: give it back its own spec (importlib set the old path's)."""
        own = self._specs.pop(module.__spec__.name, None)
        if own is not None:
            module.__spec__, module.__name__, module.__loader__ = own, own.name, own.loader
            module.__package__ = own.parent


def install() -> None:
    """Add the finder to ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
