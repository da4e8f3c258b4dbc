"""The paper's experiments on top of the core: its tasks, data, networks, metrics, and the PPO controller's training.

    presets               :mod:`.presets` (the tasks and the runs' arguments: dataclasses only)
    runs                  :mod:`.tasks` (``mlrsnet meta-train / transfer / train-controller``, the examples)
    data                  :mod:`.data` (image sets and the meta split, PTB; the demo's digits and PTB text)
    networks              :mod:`.vision_models` (ResNet-18, WRN, MobileNetV2, ShuffleNetV2; the digits CNN/MLP),
                          :mod:`.language_models` (the PTB LSTM)
    metrics               :mod:`.metrics` (``evaluate`` accuracy, perplexity)
    PPO controller        :mod:`.controller_env` (gymnasium environment, stable-baselines3 PPO)

The core (``import mlrsnet_hf``: the trainer, callback, schedule, controller and Hub I/O) never imports
this subpackage; the CLI imports it only in the commands that run a preset.
"""
