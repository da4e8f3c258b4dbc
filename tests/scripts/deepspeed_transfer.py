"""Run by tests/test_deepspeed.py under `accelerate launch` (2 CPU processes): transfer mode under DeepSpeed ZeRO
``argv[2]`` (0: DDP), recording the LR every optimizer step actually used, the LRs the driver set and those logged.

Usage: DS_ACCELERATOR=cpu accelerate launch --multi_gpu --num_processes 2 tests/scripts/deepspeed_transfer.py OUT STAGE
"""

import json
import os
import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import DigitsNet, digits  # noqa: E402

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer  # noqa: E402


def main() -> None:
    out, stage = Path(sys.argv[1]), int(sys.argv[2])
    deepspeed = {
        "zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
    }  # fmt: skip
    args = MLRSNetConfig(
        output_dir=str(out / "run"), max_steps=6, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        learning_rate=0.1, optim="sgd", gamma=0.1, logging_steps=1, report_to="none", save_strategy="no",
        disable_tqdm=True, seed=0, use_cpu=True, deepspeed=deepspeed if stage else None,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer = MLRSNetTrainer(
        model=DigitsNet(batchnorm=False), args=args, train_dataset=digits(256), schedule=MLRSNetSchedule(hidden_size=4)
    )
    used: dict[int, list[float]] = {}
    # ZeRO steps the inner optimizer once per parameter group: every call of step t must see the LR of step t.
    register_optimizer_step_pre_hook(
        lambda opt, a, k: used.setdefault(trainer.state.global_step, []).extend(g["lr"] for g in opt.param_groups)
    )
    trainer.train()
    assert all(len(set(lrs)) == 1 for lrs in used.values()), used
    record = {
        "used": [lrs[0] for _, lrs in sorted(used.items())],
        "history": list(trainer.lr_scheduler.lr_history),
        "logged": [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e],
        "deepspeed": trainer.is_deepspeed_enabled,
    }
    (out / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
