"""Run by tests/test_distributed.py under `accelerate launch --num_processes 2`: meta-train, dump each rank's state."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import DigitsNet, digits  # noqa: E402

from mlrsnet_hf import MLRSNetConfig, MLRSNetTrainer  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    # "horizon": a 3-step meta horizon and gamma="range_test" (each rank runs the range test; rank 0's LR is used)
    variant = sys.argv[2] if len(sys.argv) > 2 else "default"
    torch.manual_seed(0)
    data = digits()
    args = MLRSNetConfig(optim="sgd",
        output_dir=str(out / "run"), max_steps=12, per_device_train_batch_size=16, gradient_accumulation_steps=2,
        meta_train=True, meta_update_interval=3, meta_batch_size=16, meta_learning_rate=1e-2, num_classes=10,
        gamma="range_test" if variant == "horizon" else "auto", meta_horizon=3 if variant == "horizon" else 1,
        schedule_num_stages=2, auto_gamma_batches=2, logging_steps=1, report_to="none", range_test_steps=20,
        snapshot_fractions=[0.25, 0.5, 1.0],
        save_strategy="no", disable_tqdm=True, seed=0, use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    trainer = MLRSNetTrainer(
        model=DigitsNet(dropout=0.1), args=args, train_dataset=data[:1200], meta_dataset=data[1200:]
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    torch.save(
        {
            "world_size": trainer.accelerator.num_processes,
            "theta": trainer.schedule.weights(),
            "model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
            "lstm_h": trainer.lr_scheduler.run.state.h,
            "gammas": trainer.lr_scheduler.run.gammas,
            "lrs": trainer.lr_scheduler.lr_history,
            "meta_position": trainer.lr_scheduler.meta.batches.state_dict(),
            "snapshots": trainer.snapshots,
        },
        out / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main()
