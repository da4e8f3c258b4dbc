"""Training throughput: the real Trainer loop with a built-in schedule vs MLRSNetTrainer (transfer, meta-train)."""

from __future__ import annotations

import time

import torch

from .speed_models import SmallCNN, peak_memory_mb, synthetic


# --------------------------------------------------------------------------- workers
def worker_train(mode: str, steps: int, warmup: int, device: str, bf16: bool, batch: int) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    torch.manual_seed(0)
    model = SmallCNN()
    total = warmup + steps
    data = synthetic(batch * total)
    common = dict(
        output_dir="/tmp/mlrsnet_speed", max_steps=total, per_device_train_batch_size=batch, report_to="none",
        save_strategy="no", disable_tqdm=True, logging_steps=10**9, use_cpu=device == "cpu", bf16=bf16,
        optim="sgd", weight_decay=5e-4, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    clock = Clock()
    if mode == "builtin":
        trainer = Trainer(
            model=model, args=TrainingArguments(lr_scheduler_type="cosine", learning_rate=0.1, **common),
            train_dataset=data, callbacks=[clock],
        )  # fmt: skip
    else:
        schedule = MLRSNetSchedule(num_stages=3, gamma="range_test" if mode == "range-test" else 1.0)
        # "meta-10": a meta update every 10 steps; "meta-10-h10": the same with a 10-step meta horizon.
        parts = mode.split("-")
        interval = int(parts[1]) if mode.startswith("meta") else 1
        horizon = int(parts[2][1:]) if len(parts) > 2 and mode.startswith("meta") else 1
        args = MLRSNetConfig(
            meta_train=mode.startswith("meta"), meta_update_interval=interval, meta_horizon=horizon, **common
        )
        trainer = MLRSNetTrainer(
            model=model, args=args, train_dataset=data, meta_dataset=synthetic(1000, seed=1), schedule=schedule,
            callbacks=[clock],
        )  # fmt: skip
    trainer.train()
    timed = clock.times[warmup - 1 :]
    result = {"steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]), "peak_mb": peak_memory_mb(device)}
    range_test = getattr(trainer.lr_scheduler, "range_test", None)
    if range_test is not None:  # a one-off cost before the first step (inside the warm-up, not in steps/s)
        result["range_test_seconds"] = range_test.seconds
    return result
