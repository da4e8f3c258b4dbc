"""The schedule families that ship with the library, registered on first use.

``import mlrsnet_hf`` imports no family (nor torch, nor transformers: the command line's ``--help`` starts at
once). A family registers itself when its module is imported; the registry (:mod:`mlrsnet_hf.families`) and the
Hub loader (:mod:`mlrsnet_hf.hub`) call :func:`load_builtin_families` before they answer, so a query finds both
built-in families whatever was imported before it. The modules are named here, not imported, so that the core
keeps knowing no family (transformers' auto classes map names to modules the same way).
"""

from __future__ import annotations

import importlib

BUILTIN_FAMILY_MODULES = ("mlrsnet_hf.mlrsnet", "mlrsnet_hf.lr_controller")  # MLR-SNet first: the default


def load_builtin_families() -> None:
    """Import the built-in families' packages (once; each registers its family on import)."""
    for name in BUILTIN_FAMILY_MODULES:
        importlib.import_module(name)
