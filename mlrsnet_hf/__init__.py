"""mlrsnet_hf: learned, transferable learning-rate schedules (MLR-SNet) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from .hub import ScheduleFileError  # noqa: E402
from .network import MLRSNet, MLRSNetState  # noqa: E402
from .official import convert_official  # noqa: E402
from .schedule import MLRSNetSchedule, auto_gamma  # noqa: E402

__all__ = [
    "MLRSNet",
    "MLRSNetSchedule",
    "MLRSNetState",
    "ScheduleFileError",
    "__version__",
    "auto_gamma",
    "convert_official",
]
