"""mlrsnet_hf: learned, transferable learning-rate schedules (MLR-SNet) for the Hugging Face ecosystem."""

from . import moved_modules
from .callback import MLRSNetCallback
from .config import MLRSNetConfig
from .families import ScheduleFamily, register_family
from .gamma import auto_gamma
from .hub import ScheduleFileError
from .lr_controller import LRController  # registers the LR controller family
from .mlrsnet import MLRSNet, MLRSNetDriver, MLRSNetSchedule, MLRSNetState  # registers MLR-SNet, the default
from .mlrsnet.official import convert_official
from .options import ScheduleOptions
from .trainer import MLRSNetTrainer
from .version import __version__

moved_modules.install()

__all__ = [
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
]
