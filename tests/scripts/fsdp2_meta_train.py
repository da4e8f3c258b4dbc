"""Run by tests/test_fsdp2.py under `accelerate launch --num_processes 2` (gloo): the driver under FSDP2 and DDP.

accelerate turns FSDP on only for accelerator devices (on CPUs a Trainer gets DDP whatever the config says), so
this script drives the schedule exactly as the Trainer does (``start``, then per optimizer step
``prepare_step`` -> ``optimizer.step()`` -> ``step()``) on a float64 model that is either sharded with
``torch.distributed.fsdp.fully_shard`` or wrapped in DDP, over the same global batches. Each rank dumps both runs,
the hypergradient of one meta batch computed from shards and from the whole model in one process, and the
size of the ``w_t`` buffer it held.
"""

import io
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import digits  # noqa: E402

from mlrsnet_hf import MLRSNetSchedule  # noqa: E402
from mlrsnet_hf.meta_gradient import local, lr_derivatives, meta_loss, step_delta  # noqa: E402
from mlrsnet_hf.mlrsnet.driver import MLRSNetDriver  # noqa: E402
from mlrsnet_hf.options import ScheduleOptions  # noqa: E402

STEPS, BATCH, INTERVAL, HORIZON = 12, 8, 3, 2


class Net(nn.Module):
    """A float64 MLP returning ``{"loss"}``; 5 and 3 rows do not split evenly over 2 processes (uneven shards)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 5), nn.Tanh())
        self.head = nn.Linear(5, 10)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": nn.functional.cross_entropy(self.head(self.body(x)), labels)}


def batch(data: list[dict], start: int, size: int) -> dict[str, torch.Tensor]:
    rows = data[start : start + size]
    return {"x": torch.stack([r["x"] for r in rows]), "labels": torch.stack([r["labels"] for r in rows])}


def full(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if hasattr(p, "full_tensor") else p.detach()


def run(
    engine: str, meta_train: bool, data: list[dict], meta_data: list[dict], rank: int, world: int, out: Path
) -> dict:
    torch.manual_seed(0)
    model = Net().double()
    if engine == "fsdp2":
        fully_shard(model.body)
        fully_shard(model)
        forward = model
    else:
        forward = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedule = MLRSNetSchedule(hidden_size=8, num_stages=2, gamma=0.3)  # seeded above
    options = ScheduleOptions(
        meta_train=meta_train, meta_update_interval=INTERVAL, meta_horizon=HORIZON, meta_batch_size=BATCH,
        meta_learning_rate=1e-2, num_classes=10, snapshot_fractions=[],
    )  # fmt: skip
    driver = MLRSNetDriver(schedule, options, held_out=meta_data if meta_train else None)
    args = TrainingArguments(
        output_dir=str(out / f"{engine}-{meta_train}"), use_cpu=True, learning_rate=0.1, per_device_train_batch_size=BATCH,
        report_to="none", seed=0,
    )  # fmt: skip
    driver.start(model, optimizer, args, num_training_steps=STEPS)
    theta0 = {k: v.clone() for k, v in schedule.weights().items()}
    buffer_numel = checkpoint = None
    for step in range(STEPS):
        global_start = step * BATCH * world
        forward(**batch(data, global_start + rank * BATCH, BATCH))["loss"].backward()
        driver.prepare_step(step)
        if meta_train and driver.meta._before is not None and buffer_numel is None:
            buffer_numel = sum(local(b).numel() for b in driver.meta._before)
        optimizer.step()
        driver.step()
        optimizer.zero_grad(set_to_none=True)
        if meta_train and step == 1:  # inside a horizon: what scheduler.pt would hold (reloaded as the Trainer does)
            saved = io.BytesIO()
            torch.save(driver.state_dict(), saved)
            meta = torch.load(io.BytesIO(saved.getvalue()), weights_only=True)["meta"]
            checkpoint = {"horizon": len(meta["horizon"]), "horizon_steps": meta["horizon_steps"]}
    driver.finish()
    return {
        "lrs": list(driver.lr_history),
        "theta0": theta0,
        "theta": schedule.weights(),
        "checkpoint": checkpoint,
        "num_updates": driver.meta.num_updates if meta_train else 0,
        "model": {n: full(p) for n, p in model.named_parameters()},
        "buffer_numel": buffer_numel,
        "model_numel": sum(p.numel() for p in model.parameters()),
        "model_ref": model,
    }


def hypergradient_from_shards(fsdp_model: nn.Module, meta_data: list[dict], rank: int, world: int) -> dict:
    """One SGD step of the sharded model, then dL_meta/dlr from shards and, on one process, from the whole model."""
    params = list(fsdp_model.parameters())
    whole = Net().double()
    whole.load_state_dict({n: full(p) for n, p in fsdp_model.named_parameters()})
    whole_params = list(whole.parameters())
    lr = 0.05
    rows = meta_data[64 : 64 + BATCH * world]  # any batch: its gradient only sets the step's direction
    fsdp_model(**batch(rows, rank * BATCH, BATCH))["loss"].backward()
    before = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
    delta = step_delta(before, params)
    for p in params:
        p.grad = None
    sharded = lr_derivatives(meta_loss(fsdp_model, batch(meta_data, rank * BATCH, BATCH)), params, [delta], [lr])
    # one process, the whole model: the same step (the mean gradient over both ranks' batches), then both ranks'
    # meta batches at once (equal sizes, so their mean loss is the loss of the concatenation)
    whole(**batch(rows, 0, BATCH * world))["loss"].backward()
    whole_before = [p.detach().clone() for p in whole_params]
    with torch.no_grad():
        for p in whole_params:
            p -= lr * p.grad
    whole_delta = step_delta(whole_before, whole_params)
    reference = lr_derivatives(meta_loss(whole, batch(meta_data, 0, BATCH * world)), whole_params, [whole_delta], [lr])
    return {"sharded": sharded, "single_process": reference}


def main() -> None:
    out = Path(sys.argv[1])
    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    data = digits(dtype=torch.float64)
    train, meta = data[:1200], data[1200:]
    runs = {
        f"{engine}-{mode}": run(engine, mode == "meta", train, meta, rank, world, out)
        for engine in ("fsdp2", "ddp")
        for mode in ("meta", "transfer")
    }
    hyper = hypergradient_from_shards(runs["fsdp2-meta"]["model_ref"], meta, rank, world)
    for value in runs.values():
        value.pop("model_ref")
    sharded = Net().double()
    fully_shard(sharded)
    args = TrainingArguments(output_dir=str(out / "range"), use_cpu=True, report_to="none")
    driver = MLRSNetDriver(MLRSNetSchedule(hidden_size=4, gamma="range_test"), ScheduleOptions())
    try:
        driver.start(sharded, torch.optim.SGD(sharded.parameters(), lr=0.1), args, num_training_steps=4)
        refused = None
    except ValueError as e:
        refused = str(e)
    torch.save({"world_size": world, **runs, "hyper": hyper, "range_test": refused}, out / f"rank{rank}.pt")
    state.wait_for_everyone()
    state.destroy_process_group()


if __name__ == "__main__":
    main()
