"""mlrsnet_hf: learned, transferable learning-rate schedules (MLR-SNet) for the Hugging Face ecosystem."""

from .callback import MLRSNetCallback  # noqa: E402
from .config import MLRSNetConfig  # noqa: E402
from .driver import MLRSNetDriver  # noqa: E402
from .gamma import auto_gamma  # noqa: E402
from .hub import ScheduleFileError  # noqa: E402
from .lr_controller import LRController  # noqa: E402
from .network import MLRSNet, MLRSNetState  # noqa: E402
from .official import convert_official  # noqa: E402
from .options import ScheduleOptions  # noqa: E402
from .schedule import MLRSNetSchedule  # noqa: E402
from .trainer import MLRSNetTrainer  # noqa: E402
from .version import __version__

__all__ = [
    "LRController",
    "MLRSNet",
    "MLRSNetCallback",
    "MLRSNetConfig",
    "MLRSNetDriver",
    "MLRSNetSchedule",
    "MLRSNetState",
    "MLRSNetTrainer",
    "ScheduleFileError",
    "ScheduleOptions",
    "__version__",
    "auto_gamma",
    "convert_official",
]
