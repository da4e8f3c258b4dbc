"""The MLR-SNet family: the network, the schedule (artifact), its fast step, meta-training and driver.

Importing it registers the family (:mod:`mlrsnet_hf.families`).
"""

from .driver import MLRSNetDriver
from .family import MLRSNET
from .network import MLRSNet, MLRSNetState
from .schedule import MLRSNetSchedule

__all__ = ["MLRSNET", "MLRSNet", "MLRSNetDriver", "MLRSNetSchedule", "MLRSNetState"]
