"""Run by tests/test_plain_loop.py under `accelerate launch --num_processes 2`: meta-train a schedule in an accelerate
loop of one's own (gradient accumulation 2, clipping), dump each rank's LRs and weights."""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import default_data_collator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import DigitsNet, digits  # noqa: E402

from mlrsnet_hf import MLRSNetDriver, MLRSNetSchedule  # noqa: E402

STEPS = 12


def main() -> None:
    out = Path(sys.argv[1])
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=2)
    torch.manual_seed(0)
    data = digits()
    model = DigitsNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(data[:1200], batch_size=16, shuffle=True, collate_fn=default_data_collator)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        schedule = MLRSNetSchedule(hidden_size=8, num_stages=2, gamma=1.0)
    driver = MLRSNetDriver.for_loop(
        schedule, optimizer, model, STEPS, train_dataloader=loader, meta_dataset=data[1200:], meta_train=True,
        meta_update_interval=3, meta_batch_size=16, meta_learning_rate=1e-2, gamma="auto", num_classes=10,
        auto_gamma_batches=2,
    )  # fmt: skip
    for micro_batch, batch in enumerate(loader, start=1):
        with accelerator.accumulate(model):
            accelerator.backward(model(**batch)["loss"])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()  # accelerate steps the torch optimizer (and so the driver) every second micro-batch
            optimizer.zero_grad()
        if micro_batch == 2 * STEPS:
            break
    driver.finish()
    torch.save(
        {
            "world_size": accelerator.num_processes,
            "lrs": driver.lr_history,
            "steps": driver.last_epoch,
            "theta": schedule.weights(),
            "model": {k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()},
        },
        out / f"rank{accelerator.process_index}.pt",
    )


if __name__ == "__main__":
    main()
