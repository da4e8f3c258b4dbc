"""The meta-step micro-benchmark: a plain step, the library's meta step, the released implementation's."""

from __future__ import annotations

import copy
import itertools
import statistics

import torch
from torch.func import functional_call

from .speed_models import SmallCNN, WideMLP, peak_memory_mb, synthetic, timed


def worker_meta_step(mode: str, repeats: int, device: str, batch: int, wide: bool) -> dict:
    from mlrsnet_hf import MLRSNetSchedule
    from mlrsnet_hf.loss_meter import LossMeter
    from mlrsnet_hf.meta_gradient import meta_loss
    from mlrsnet_hf.mlrsnet.meta_training import MetaLearner
    from mlrsnet_hf.options import ScheduleOptions

    torch.manual_seed(0)
    model = (WideMLP() if wide else SmallCNN()).to(device)
    # Where MLRSNetDriver puts it: with meta-training the schedule steps on the host, whatever the model's device.
    schedule = MLRSNetSchedule(gamma=0.1)
    run = schedule.start()
    run.enter_stage(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    params = list(model.parameters())

    def examples(seed: int) -> list[dict[str, torch.Tensor]]:
        data = synthetic(batch, seed)
        return [{**d, "x": d["x"].flatten()} for d in data] if wide else data

    def batch_of(seed: int) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in torch.utils.data.default_collate(examples(seed)).items()}

    train, meta = batch_of(0), batch_of(1)  # (the library's meta step draws its own from examples(1))
    learner = MetaLearner(
        run, ScheduleOptions(meta_train=True, meta_update_interval=1), examples(1),
        torch.utils.data.default_collate, batch,
    )  # fmt: skip
    learner.start(optimizer, num_training_steps=10**6)
    meter = LossMeter()
    steps = itertools.count()

    def plain_step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = model(**train)["loss"]
        loss.backward()
        return loss

    def once(mode: str = mode) -> None:
        loss = plain_step()
        if mode == "plain":
            run.step(loss.item())
            optimizer.step()
        elif mode == "ours":  # the library's meta step (MetaLearner, as MLRSNetDriver calls it), every step
            step, value, state = next(steps), loss.item(), run.state
            lr = run.step(value)
            learner.before_step(step, model, {"stage": run.stage, "state": state, "loss": value})
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            learner.after_step(step, model, lr, torch.device(device), meter)
        else:  # released style
            copy_ = copy.deepcopy(model)
            names = [n for n, _ in copy_.named_parameters()]
            w = dict(copy_.named_parameters())
            grads = torch.autograd.grad(copy_(**train)["loss"], list(w.values()), create_graph=True)
            lr = run.step(loss.item(), differentiable=True)
            virtual = {n: w[n] - lr * (g + 5e-4 * w[n]) for n, g in zip(names, grads, strict=True)}
            virtual.update({n: b.clone() for n, b in copy_.named_buffers()})
            functional_call(copy_, virtual, args=(), kwargs=meta)["loss"].backward(inputs=list(schedule.parameters()))
            for group in optimizer.param_groups:
                group["lr"] = lr.item()
            optimizer.step()
        schedule.zero_grad(set_to_none=True)

    for _ in range(3):
        once()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = {
        "ms": timed(once, repeats, device, warmup=0),
        "peak_mb": peak_memory_mb(device),
        "param_mb": sum(p.numel() * p.element_size() for p in params) / 2**20,
    }
    if mode == "ours":  # plain and meta steps alternated in one process: machine drift hits both alike
        times: dict[str, list[float]] = {"plain": [], "ours": []}
        for _ in range(repeats):
            for kind in times:
                times[kind].append(timed(lambda kind=kind: once(kind), 1, device, warmup=0))
        result["interleaved_ms"] = {kind: statistics.median(t) for kind, t in times.items()}
    if mode == "plain":  # the pieces a meta step adds, timed directly

        def lstm_meta() -> None:
            run.step(1.0, differentiable=True).backward(torch.tensor(0.1))
            learner.optimizer.step()
            learner.optimizer.zero_grad(set_to_none=True)

        def snapshot() -> None:  # w_t into the buffer kept from the last meta update
            learner._release(learner._snapshot(params))

        def meta_forward_backward() -> None:
            torch.autograd.grad(meta_loss(model, meta), params)

        result["components_ms"] = {
            "lstm_step": timed(lambda: run.step(1.0), repeats * 10, device),
            "lstm_meta_step_with_adam": timed(lstm_meta, repeats * 10, device),
            "snapshot_w_t": timed(snapshot, repeats, device),
            "meta_forward_backward": timed(meta_forward_backward, repeats, device),
        }
    return result
