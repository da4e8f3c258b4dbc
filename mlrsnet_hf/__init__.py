"""mlrsnet_hf: learned, transferable learning-rate schedules (MLR-SNet) for the Hugging Face ecosystem.

The public names are imported on first use (PEP 562 ``__getattr__``, as transformers does): ``import mlrsnet_hf``
and the ``mlrsnet`` command's ``--help`` load neither torch nor transformers, and ``from mlrsnet_hf import
MLRSNetTrainer`` loads the Trainer only then. The built-in schedule families register themselves on first use of
the registry (:mod:`mlrsnet_hf.builtin_families`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import moved_modules
from .version import __version__

moved_modules.install()

# public name -> the module that defines it
_LAZY = {
    "LRController": ".lr_controller",
    "MLRSNet": ".mlrsnet",
    "MLRSNetCallback": ".callback",
    "MLRSNetConfig": ".config",
    "MLRSNetDriver": ".mlrsnet",
    "MLRSNetSchedule": ".mlrsnet",
    "MLRSNetState": ".mlrsnet",
    "MLRSNetTrainer": ".trainer",
    "HubUnreachableError": ".repo_files",
    "ScheduleFamily": ".families",
    "ScheduleFileError": ".repo_files",
    "ScheduleOptions": ".options",
    "auto_gamma": ".gamma",
    "convert_official": ".mlrsnet.official",
    "register_family": ".families",
    "zoo_names": ".zoo",
}

__all__ = [
    "HubUnreachableError",
    "LRController",
    "MLRSNet",
    "MLRSNetCallback",
    "MLRSNetConfig",
    "MLRSNetDriver",
    "MLRSNetSchedule",
    "MLRSNetState",
    "MLRSNetTrainer",
    "ScheduleFamily",
    "ScheduleFileError",
    "ScheduleOptions",
    "__version__",
    "auto_gamma",
    "convert_official",
    "register_family",
    "zoo_names",
]

if TYPE_CHECKING:  # what static tools see
    from .callback import MLRSNetCallback
    from .config import MLRSNetConfig
    from .families import ScheduleFamily, register_family
    from .gamma import auto_gamma
    from .lr_controller import LRController
    from .mlrsnet import MLRSNet, MLRSNetDriver, MLRSNetSchedule, MLRSNetState
    from .mlrsnet.official import convert_official
    from .options import ScheduleOptions
    from .repo_files import HubUnreachableError, ScheduleFileError
    from .trainer import MLRSNetTrainer
    from .zoo import zoo_names


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mlrsnet_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
