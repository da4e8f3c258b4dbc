"""What a distributed engine changes for a learned schedule, and what each supports.

DDP: everything (the hypergradient's parts are all-reduced, :mod:`mlrsnet_hf.meta_gradient`). FSDP2: transfer and
meta-training (the hypergradient is reduced over the shards), not ``gamma="range_test"`` or the online scale, which
need whole parameters on one process. DeepSpeed (ZeRO 1-3): transfer with :class:`~mlrsnet_hf.MLRSNetTrainer` only.

Everywhere else the LR of a step is set in the torch optimizer's step pre-hook (:mod:`mlrsnet_hf.loop`). Under
DeepSpeed, accelerate runs ``engine.step()`` (clipping, optimizer step, zero-grad, scheduler step) inside
``accelerator.backward`` of the last micro-batch, the optimizer wrapper's ``step()`` that the Trainer calls
afterwards does nothing, and ZeRO steps the torch optimizer inside its own once per parameter group (stages 1-2
showing it one group at a time): no hook marks the step once. An LR written in ``on_pre_optimizer_step`` reached the
optimizer one step late. :class:`~mlrsnet_hf.MLRSNetTrainer` sets the LR of step t between the last micro-batch's
forward (which gives the step's loss) and its backward; a plain ``Trainer`` has no event there (and its DeepSpeed
setup replaces the scheduler it was given), so :class:`~mlrsnet_hf.MLRSNetCallback` refuses DeepSpeed.
"""

from __future__ import annotations

import os
from typing import Any

from accelerate.state import PartialState


def check_one_job() -> None:
    """Refuse processes launched together that do not form one job (each would train the same model alone)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > PartialState().num_processes:
        raise RuntimeError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but this one trains alone: on a machine "
            "without GPUs pass --use_cpu (TrainingArguments(use_cpu=True)) so that they form one gloo job; "
            "otherwise each process would train the same model alone and write the same output_dir."
        )


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


def check_range_test_engine(sharded: bool) -> None:
    """Refuse ``gamma="range_test"`` on a sharded (FSDP2) model: the test runs on a whole copy of the model."""
    if sharded:
        raise ValueError(
            "gamma='range_test' runs its range test on a copy of the model, and a sharded (FSDP2) model has no "
            "whole copy on one process: run the range test without sharding (`mlrsnet_hf.lr_range_test`) and pass "
            "the LR it finds as learning_rate with gamma='relative', or use gamma='auto'."
        )


def check_online_scale_engine(deepspeed: bool, sharded: bool) -> None:
    """Refuse the online scale where the parameters are sharded: its inner products run over whole parameters."""
    if deepspeed or sharded:
        raise ValueError(
            "online_scale needs the whole parameters in one torch optimizer (its inner products run over them); "
            "DeepSpeed and FSDP2 shard them: train without online_scale there, or under DDP."
        )
