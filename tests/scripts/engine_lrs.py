"""The LR each optimizer step really used, under whatever engine `accelerate launch` chose; run by tests/test_engines.py.

    accelerate launch [--config_file examples/accelerate/<engine>.yaml] tests/scripts/engine_lrs.py OUT [--meta] [--online]
        [--use_cpu]

Trains a 2-layer GPT-2 (32 wide) with MLRSNetTrainer for 8 optimizer steps of 2 accumulated micro-batches, logging
every step. A global optimizer step pre-hook records the LR of every torch optimizer step, including the one an
engine runs inside its own wrapper (DeepSpeed steps inside ``accelerator.backward``). Each rank writes
``OUT/rank<r>.pt``: the engine, whether the parameters are shards, the LRs used, the LRs logged, the schedule's
LRs, (``--meta``) the learned weights, and (``--online``, ``online_scale="mechanic"``) the model's weights and the
online scale's state.
"""

import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import GPT2Config, GPT2LMHeadModel

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer

STEPS = 8


def main() -> None:
    out = Path(sys.argv[1])
    meta = "--meta" in sys.argv
    online = {"online_scale": "mechanic"} if "--online" in sys.argv else {}
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (512, 32), generator=g)
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = MLRSNetConfig(
        output_dir=str(out / "run"), max_steps=STEPS, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=1e-3, optim="adamw_torch", gamma="relative", relative_max_scale=10.0, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, seed=0, use_cpu="--use_cpu" in sys.argv,
        meta_train=meta, meta_update_interval=2, meta_batch_size=4, meta_learning_rate=1e-2, **online,
    )  # fmt: skip
    schedule = MLRSNetSchedule(hidden_size=8, num_stages=2, gamma="relative")
    trainer = MLRSNetTrainer(
        model=model, args=args, train_dataset=data[:384], meta_dataset=data[384:] if meta else None, schedule=schedule
    )
    used: list[float] = []
    schedule_params = {id(p) for p in schedule.parameters()}

    def record(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if id(optimizer.param_groups[0]["params"][0]) not in schedule_params:  # not the meta optimizer's steps
            used.append(float(optimizer.param_groups[0]["lr"]))

    hook = register_optimizer_step_post_hook(record)
    trainer.train()
    hook.remove()
    accelerator = trainer.accelerator
    torch.save(
        {
            "engine": str(accelerator.distributed_type),
            "world_size": accelerator.num_processes,
            "sharded": any(isinstance(p, DTensor) for p in trainer.model.parameters()),
            "used": used,
            "logged": [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h],
            "schedule": list(trainer.lr_scheduler.lr_history),
            "theta": {k: v.float().cpu() for k, v in trainer.schedule.weights().items()},
            "model": {k: v.cpu() for k, v in trainer.model.state_dict().items()} if online else {},
            "online_scale": trainer.lr_scheduler.online_scale.state_dict() if online else None,
        },
        out / f"rank{accelerator.process_index}.pt",
    )
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
