"""A learned schedule in your own `accelerate` training loop, without the Trainer: meta-train one, then transfer it.

    python examples/plain_loop.py --output_dir plain_loop_output        # one process (a GPU if there is one)
    accelerate launch --config_file examples/accelerate/cpu.yaml examples/plain_loop.py --output_dir out --cpu

1. Meta-train an MLR-SNet schedule online while training a small CNN on scikit-learn's bundled 8x8 digits:
   ``MLRSNetDriver.for_loop(schedule, optimizer, model, steps, meta_train=True, meta_dataset=meta)`` sets the LR of every
   ``optimizer.step()`` from that step's training loss, and every few steps updates the schedule so that a step
   lowers the loss on the held-out meta set.
2. Save it (``driver.save_schedule``: its trajectory, as ``MLRSNetTrainer.save_schedule`` writes it) and transfer
   it, fixed, to an MLP on the same data: no LR to tune.
3. Print both runs' test accuracy (``evaluate``) and LR range; write ``results.json`` and the schedule folder.

The loop is accelerate's own pattern (``prepare``, ``accelerator.backward``, ``clip_grad_norm_``); the driver
hooks the optimizer's step, so nothing else in the loop changes. Under several processes the LRs, the schedule's
weights and its meta-gradient are the same on every rank.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import default_data_collator

from mlrsnet_hf import MLRSNetDriver, MLRSNetSchedule
from mlrsnet_hf.experiments.data import digits_splits
from mlrsnet_hf.experiments.metrics import load_metric
from mlrsnet_hf.experiments.vision_models import DigitsCNN, DigitsMLP


def train(accelerator, model, schedule, data, args, **options) -> tuple[dict, MLRSNetDriver]:
    """SGD on ``data["train"]`` for ``args.steps`` steps, every LR set by ``schedule``: the test accuracy and LRs,
    and the driver (after meta-training it saves the schedule)."""
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(data["train"], batch_size=args.batch_size, shuffle=True, generator=generator,
                        collate_fn=default_data_collator, drop_last=True)  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, weight_decay=5e-4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    driver = MLRSNetDriver.for_loop(
        schedule, optimizer, model, args.steps, train_dataloader=loader, max_grad_norm=1.0, seed=args.seed, **options
    )
    step = 0
    model.train()
    while step < args.steps:
        for batch in loader:
            loss = model(**batch).loss  # the driver reads each training forward's loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()  # the LR of this step was set from its loss, just before the update
            optimizer.zero_grad()
            step += 1
            if step == args.steps:
                break
    driver.finish()
    model.eval()
    metric = load_metric("accuracy")
    test = DataLoader(data["test"], batch_size=200, collate_fn=default_data_collator)
    with torch.no_grad():
        for batch in accelerator.prepare(test):
            predictions = model(**batch).logits.argmax(-1)
            metric.add_batch(**dict(zip(("predictions", "references"),
                                        accelerator.gather_for_metrics((predictions, batch["labels"])), strict=True)))  # fmt: skip
    lrs = driver.lr_history
    results = {"test_accuracy": metric.compute()["accuracy"], "lr_min": min(lrs), "lr_max": max(lrs), "lrs": lrs}
    return results, driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("plain_loop_output"))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=0.1, help="the reference LR (gamma's unit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (with accelerate launch: gloo)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    accelerator = Accelerator(cpu=args.cpu)
    data = digits_splits(seed=args.seed)
    torch.manual_seed(args.seed)
    schedule = MLRSNetSchedule(gamma=1.0)
    meta_trained, driver = train(
        accelerator, DigitsCNN(), schedule, data, args,
        meta_train=True, meta_dataset=data["meta"], meta_update_interval=10, num_classes=10,
    )  # fmt: skip
    folder = args.output_dir / "schedule"
    if accelerator.is_main_process:  # the trajectory: the networks recorded at 0.5 %, 50 % and 100 % of the run
        driver.save_schedule(folder, meta_training={"dataset": "sklearn digits"})
    accelerator.wait_for_everyone()
    torch.manual_seed(args.seed)
    transferred, _ = train(
        accelerator, DigitsMLP(), MLRSNetSchedule.from_pretrained(folder), data, args, num_classes=10
    )
    results = {"meta-trained (CNN)": meta_trained, "transferred (MLP)": transferred}
    if accelerator.is_main_process:
        (args.output_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        for name, r in results.items():
            print(f"{name}: test accuracy {r['test_accuracy']:.4f}, LR {r['lr_min']:.3g} to {r['lr_max']:.3g}")
        print(f"Wrote {folder} and {args.output_dir / 'results.json'}")


if __name__ == "__main__":
    main()
