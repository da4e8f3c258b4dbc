"""The PPO LR controller family: the controller (artifact), its driver and pictures.

Importing it registers the family (:mod:`mlrsnet_hf.families`).
"""

from .controller import ACTION_SPACES, FEATURES, LRController, next_lr, observe, output_layer, render_controller_card
from .driver import LRControllerDriver, probe_batch
from .family import LR_CONTROLLER

__all__ = [
    "ACTION_SPACES",
    "FEATURES",
    "LR_CONTROLLER",
    "LRController",
    "LRControllerDriver",
    "next_lr",
    "observe",
    "output_layer",
    "probe_batch",
    "render_controller_card",
]
