"""What a distributed engine changes for a learned schedule: DeepSpeed's checks.

Under DeepSpeed, accelerate runs ``engine.step()`` (clipping, optimizer step, zero-grad, scheduler step) inside
``accelerator.backward`` of the last micro-batch of each optimizer step; the optimizer wrapper's ``step()`` that
the Trainer calls afterwards does nothing. An LR written in ``on_pre_optimizer_step`` would therefore reach the
optimizer one step late. :class:`~mlrsnet_hf.MLRSNetTrainer` sets the LR of step t between the last micro-batch's
forward (which gives the step's loss) and its backward; a plain ``Trainer`` has no event there (and its DeepSpeed
setup replaces the scheduler it was given), so :class:`~mlrsnet_hf.MLRSNetCallback` refuses DeepSpeed.
"""

from __future__ import annotations

from typing import Any


def deepspeed_config(args: Any) -> dict[str, Any] | None:
    """The DeepSpeed config of a run (``args.hf_deepspeed_config``, which the Trainer sets), or None without DeepSpeed."""
    hf_config = getattr(args, "hf_deepspeed_config", None)
    if hf_config is not None:
        return hf_config.config
    plugin = getattr(args, "deepspeed_plugin", None)  # accelerate launch --use_deepspeed, before the Trainer's setup
    return None if plugin is None else plugin.deepspeed_config


def check_deepspeed_config(config: dict[str, Any]) -> None:
    """Refuse a DeepSpeed config with a ``"scheduler"`` or an ``"optimizer"`` block.

    A ``"scheduler"`` block replaces the learned schedule. With an ``"optimizer"`` block, transformers lets DeepSpeed
    build the optimizer and hands the Trainer's scheduler to the engine, which steps and checkpoints it itself.
    """
    for block, consequence in (
        ("scheduler", "DeepSpeed would step its own scheduler and transformers would not use the learned schedule"),
        (
            "optimizer",
            "transformers would let DeepSpeed build the optimizer and hand the learned schedule to the engine, which "
            "steps and checkpoints it itself; the learned schedule supports the Trainer's optimizer only "
            "(TrainingArguments optim=..., learning_rate=...)",
        ),
    ):
        if block in config:
            kind = config[block].get("type", "?") if isinstance(config[block], dict) else "?"
            raise ValueError(
                f'The "{block}" block of the DeepSpeed config (type {kind}) is not supported: {consequence}. Remove '
                f'the "{block}" block: the learned schedule sets the LR of the Trainer\'s optimizer.'
            )


def check_deepspeed_meta_training(meta_train: bool) -> None:
    """Refuse meta-training under DeepSpeed, naming what it would need."""
    if meta_train:
        raise ValueError(
            "Meta-training under DeepSpeed is not supported: the meta update needs the weights w_t and the "
            "gradient of step t before the optimizer step, but accelerate runs DeepSpeed's step inside the backward "
            "pass (no Trainer event between the gradient and the step), and under ZeRO the weights and gradients are partitioned "
            "across processes (the meta-gradient would have to be computed per partition and all-reduced). Meta-train "
            "without DeepSpeed (DDP), then transfer the schedule (meta_train=False), which is exact under DeepSpeed."
        )
